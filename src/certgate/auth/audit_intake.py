"""Checking the audit events services send (POST /v1/events) before auth stores them.

A service sends its events as they happened, each with an id of its own:

    {"events": [{"id": "9f0c…", "event": "session.start", "time": "2030-…+00:00",
                 "fields": {"session_id": …, "user": "alice", …}}, …]}

and auth makes each a stored event:

- the type must be one the sender's kind writes (api/events.py): a node cannot store
  `user.delete`; a type auth does not know at all is stored as `unknown`, its type kept
  in `unknown_event`, rather than refused (a newer node must not lose its batch);
- the sender is stamped from its certificate, never from what it says: `server_name`
  (its name), `server_kind` (node, proxy, kube, admin), `server` (a node's name, or
  "proxy"); a node's events always name it as `node`;
- `uid` is derived from the sender's name and its id, so a retry of an event already
  stored is recognised (the store keeps the first), and no sender can pick ids that
  would shadow another's events;
- `time` is when the event happened on the sender (events spooled while auth was away
  keep their time), unless it lies in the future beyond clock skew; then auth's.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from certgate.api import events as catalogue
from certgate.api.identity import SYSTEM_ADMIN, SYSTEM_KUBE, SYSTEM_NODE, SYSTEM_PROXY, Identity
from certgate.errors import AccessDenied, BadParameter

# The clock skew tolerated between a service and auth.
MAX_CLOCK_SKEW = timedelta(minutes=5)
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_UID_NAMESPACE = uuid.UUID("5d2b1f0a-6c3e-4f7e-9a41-0c8d3b6e2f17")
_KINDS = (
    (SYSTEM_ADMIN, catalogue.ADMIN),
    (SYSTEM_NODE, catalogue.NODE),
    (SYSTEM_PROXY, catalogue.PROXY),
    (SYSTEM_KUBE, catalogue.KUBE),
)


def writer_kind(caller: Identity) -> str:
    """The catalogue's writer kind of a service identity."""
    if caller.kind == "service":
        for role, kind in _KINDS:
            if role in caller.roles:
                return kind
    raise AccessDenied("access denied: only services send audit events")


def checked_event(caller: Identity, item: Any, now: datetime) -> dict[str, Any]:
    """The event to store for one item a service sent; raises if it must be refused."""
    if not isinstance(item, dict):
        raise BadParameter("each audit event must be a mapping with event and fields")
    kind = writer_kind(caller)
    event = item.get("event")
    if not isinstance(event, str) or not event:
        raise BadParameter('each audit event needs a non-empty string "event"')
    fields = item.get("fields", {})
    if not isinstance(fields, dict) or any(
        key in catalogue.RESERVED_FIELDS or not isinstance(key, str) for key in fields
    ):
        raise BadParameter("audit fields must be a mapping without reserved keys")
    fields = dict(fields)
    if event not in catalogue.CATALOGUE:
        fields["unknown_event"], event = event, catalogue.UNKNOWN
    if not catalogue.may_write(kind, event):
        raise AccessDenied(
            f'access denied: {caller.username} is a {kind} and may not write "{event}" events'
        )
    claimed = fields.pop("server", None)
    if claimed is not None and claimed not in {role.lower() for role in caller.roles}:
        # A service may name its own role as the server that decided ("proxy").
        raise BadParameter(f'audit field "server" must be your role, not "{claimed}"')
    if kind == catalogue.NODE:
        node = fields.get("node", caller.username)
        if node != caller.username:
            raise AccessDenied(
                f'access denied: node {caller.username} may not write events of node "{node}"'
            )
        fields["node"] = caller.username
    return {
        **fields,
        "event": event,
        "code": catalogue.code_of(event),
        "time": _event_time(item.get("time"), now).isoformat(),
        "uid": _uid(caller, item.get("id")),
        "server": "proxy" if kind == catalogue.PROXY else caller.username,
        "server_name": caller.username,
        "server_kind": kind,
    }


def _uid(caller: Identity, sent: Any) -> str:
    if sent is None:
        return str(uuid.uuid4())
    if not isinstance(sent, str) or not _ID.fullmatch(sent):
        raise BadParameter('audit event "id" must be 1-128 letters, digits or ._:-')
    return str(uuid.uuid5(_UID_NAMESPACE, f"{caller.username}\n{sent}"))


def _event_time(sent: Any, now: datetime) -> datetime:
    if sent is None:
        return now
    if not isinstance(sent, str):
        raise BadParameter('audit event "time" must be an RFC 3339 string')
    try:
        moment = datetime.fromisoformat(sent)
    except ValueError as exc:
        raise BadParameter(f"audit event time {sent[:40]!r} is not RFC 3339") from exc
    if moment.tzinfo is None:
        raise BadParameter("audit event time must carry a timezone")
    return now if moment > now + MAX_CLOCK_SKEW else moment
