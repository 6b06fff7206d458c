"""Who has access to what (the access matrix) and recent activity, from auth's store.

    users, roles, nodes, locks, access requests ──> access/matrix.py ──> rows, filtered
    audit store (indexed by type and time)       ──> counts per day per activity kind

Callers are already authorized (resource `access`, verb `list`); this layer reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from certgate.access.matrix import AccessRow, MatrixInput, access_matrix
from certgate.errors import BadParameter

if TYPE_CHECKING:
    from certgate.auth.server import AuthServer

# Activity kinds and the audit event types each counts.
ACTIVITY_KINDS: dict[str, tuple[str, ...]] = {
    "sessions": ("session.start",),
    "logins": ("user.login",),
    "login_refusals": ("user.login.failure", "user.login.locked"),
    "session_refusals": ("session.rejected",),
}
MAX_ACTIVITY_DAYS = 90
_PAGE = 10_000


@dataclass(frozen=True)
class AccessFilter:
    """Which rows to answer: every given filter must match (empty: no filter)."""

    user: str = ""
    node: str = ""  # node id or hostname
    role: str = ""  # a role the user holds, standing or by an active request
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse_labels(cls, texts: Sequence[str]) -> dict[str, str]:
        labels: dict[str, str] = {}
        for text in texts:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise BadParameter(f"label filter {text!r} must be KEY=VALUE")
            labels[key] = value
        return labels


class AccessMap:
    def __init__(self, server: AuthServer) -> None:
        self._server = server

    async def rows(self, wanted: AccessFilter) -> list[AccessRow]:
        server = self._server
        users = await server.users.users.list_readable()
        roles = {r.name: r for r in await server.roles.list_readable()}
        nodes = await server.nodes.list_readable()
        locks = await server.locks.list_readable()
        requests = await server.access_requests.list_readable()
        now = server.clock.now()
        if wanted.user:
            users = [u for u in users if u.name == wanted.user]
        if wanted.role:
            holders = {
                r.spec.user for r in requests if wanted.role in r.spec.roles and r.active_at(now)
            }
            users = [u for u in users if wanted.role in u.spec.roles or u.name in holders]
        if wanted.node:
            nodes = [n for n in nodes if wanted.node in (n.name, n.spec.hostname)]
        if wanted.labels:
            nodes = [
                n
                for n in nodes
                if all(n.metadata.labels.get(k) == v for k, v in wanted.labels.items())
            ]
        data = MatrixInput(users, roles, nodes, locks, requests, now)
        # Pure and CPU-bound (about 0.6 s for 200 users by 500 nodes here): off the event
        # loop, so auth keeps answering logins and heartbeats meanwhile.
        return await asyncio.to_thread(access_matrix, data)

    async def activity(self, days: int) -> dict[str, Any]:
        """Counts per UTC day (oldest first, today last) of each kind in ACTIVITY_KINDS."""
        if not 1 <= days <= MAX_ACTIVITY_DAYS:
            raise BadParameter(f"days must be between 1 and {MAX_ACTIVITY_DAYS}")
        now = self._server.clock.now()
        first = now.date() - timedelta(days=days - 1)
        since = datetime(first.year, first.month, first.day, tzinfo=now.tzinfo)
        day_list = [first + timedelta(days=i) for i in range(days)]
        counts = {kind: dict.fromkeys(day_list, 0) for kind in ACTIVITY_KINDS}
        for kind, types in ACTIVITY_KINDS.items():
            async for moment in self._times(types, since):
                day = moment.astimezone(now.tzinfo).date()
                if day in counts[kind]:
                    counts[kind][day] += 1
        return {
            "days": [d.isoformat() for d in day_list],
            "series": {kind: [per_day[d] for d in day_list] for kind, per_day in counts.items()},
        }

    async def _times(self, types: Sequence[str], since: datetime) -> AsyncIterator[datetime]:
        # The store answers by its (event, time) index; only times are kept from each page.
        cursor: str | None = None
        while True:
            events, cursor = await self._server.audit.search(
                since=since, until=None, event_types=list(types), limit=_PAGE, cursor=cursor
            )
            for event in events:
                yield datetime.fromisoformat(event["time"])
            if cursor is None:
                return
