"""Live sessions from the user's side: list them, join one.

    list_sessions(api, node=)        GET /v1/sessions         (through the proxy)
    join_target(api, id, mode)       GET /v1/sessions/{id}    -> JoinTarget for OpenSSH

Joining runs the system OpenSSH client with the login `join:<mode>:<id>` to the
session's node, or for a Kubernetes exec session (which has no node) to the proxy's SSH
port itself; what a user may see and join is auth's answer first and the node's (or
kube service's) decision in the end. This module only asks and refuses early with the
reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from certgate.api.recording import is_recording_id
from certgate.api.session_tracker import JOIN_MODES, KUBE_PEER_REFUSAL, join_login
from certgate.client.cluster import ClusterAPI
from certgate.client.names import is_id_prefix, resolve_prefix
from certgate.errors import AccessDenied, BadParameter, NotFound


def list_sessions(api: ClusterAPI, node: str | None = None) -> list[dict[str, Any]]:
    params = {"node": node} if node else None
    answer: list[dict[str, Any]] = api.call("GET", "/sessions", params=params) or []
    return answer


@dataclass(frozen=True)
class JoinTarget:
    node: str  # the session's node; for a Kubernetes session, its cluster
    login: str  # join:<mode>:<id>
    at_proxy: bool  # a Kubernetes session: ssh to the proxy itself, not to a node


def join_target(api: ClusterAPI, session_id: str, mode: str) -> JoinTarget:
    """Where and how to join `session_id` as `mode`; AccessDenied says why not."""
    if mode not in JOIN_MODES:
        raise BadParameter(f'unknown join mode "{mode}": use {" or ".join(JOIN_MODES)}')
    if not is_recording_id(session_id):
        # Checked here too, so nothing but an id ever becomes part of a URL path.
        if not is_id_prefix(session_id):
            raise NotFound(f'session "{session_id}" not found: session ids are UUIDs')
        live = [str(s["id"]) for s in list_sessions(api)]
        try:
            session_id = resolve_prefix(live, session_id, "session")
        except NotFound:
            # As auth words it for a whole id: the list holds only live sessions.
            raise NotFound(
                f'session "{session_id}" not found: it has ended, or you cannot see it'
            ) from None
    session: dict[str, Any] = api.call("GET", f"/sessions/{session_id}")
    kube = session.get("kind") == "k8s"
    if kube and mode == "peer":
        raise BadParameter(KUBE_PEER_REFUSAL)
    allowed = session.get("join_modes", [])
    if mode not in allowed:
        also = (
            f" (you may join as {', '.join(allowed)})"
            if allowed
            else " (role option join_sessions)"
        )
        raise AccessDenied(
            f"access denied: your roles do not allow joining {session['user']}'s session "
            f"as {mode}{also}"
        )
    return JoinTarget(str(session["node"]), join_login(mode, session_id), kube)


def describe_participants(session: dict[str, Any]) -> str:
    people = [f"{p['user']} ({p['mode']})" for p in session.get("participants", [])]
    return ", ".join(people)
