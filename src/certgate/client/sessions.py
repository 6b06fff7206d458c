"""Live sessions from the user's side: list them, join one.

    list_sessions(api, node=)        GET /v1/sessions         (through the proxy)
    join_target(api, id, mode)       GET /v1/sessions/{id}    -> (node, login) for OpenSSH

Joining runs the system OpenSSH client with the login `join:<mode>:<id>` to the
session's node; what a user may see and join is auth's answer first and the node's
decision in the end. This module only asks and refuses early with the reason.
"""

from __future__ import annotations

from typing import Any

from certgate.api.recording import is_recording_id
from certgate.api.session_tracker import JOIN_MODES, join_login
from certgate.client.cluster import ClusterAPI
from certgate.client.names import is_id_prefix, resolve_prefix
from certgate.errors import AccessDenied, BadParameter, NotFound


def list_sessions(api: ClusterAPI, node: str | None = None) -> list[dict[str, Any]]:
    params = {"node": node} if node else None
    answer: list[dict[str, Any]] = api.call("GET", "/sessions", params=params) or []
    return answer


def join_target(api: ClusterAPI, session_id: str, mode: str) -> tuple[str, str]:
    """(node, login) to join `session_id` as `mode`; AccessDenied says why not."""
    if mode not in JOIN_MODES:
        raise BadParameter(f'unknown join mode "{mode}": use {" or ".join(JOIN_MODES)}')
    if not is_recording_id(session_id):
        # Checked here too, so nothing but an id ever becomes part of a URL path.
        if not is_id_prefix(session_id):
            raise NotFound(f'session "{session_id}" not found: session ids are UUIDs')
        live = [str(s["id"]) for s in list_sessions(api)]
        session_id = resolve_prefix(live, session_id, "session")
    session: dict[str, Any] = api.call("GET", f"/sessions/{session_id}")
    if session.get("kind") == "k8s":
        raise BadParameter(
            f"session {session_id} is a kubectl session on kubernetes cluster "
            f'"{session["node"]}": joining kubernetes sessions is not available yet '
            "(cgsh play replays its recording once it ends)"
        )
    allowed = session.get("join_modes", [])
    if mode not in allowed:
        also = f" (you may join as {', '.join(allowed)})" if allowed else ""
        raise AccessDenied(
            f"access denied: your roles do not allow joining {session['user']}'s session "
            f"as {mode}{also}"
        )
    return str(session["node"]), join_login(mode, session_id)


def describe_participants(session: dict[str, Any]) -> str:
    people = [f"{p['user']} ({p['mode']})" for p in session.get("participants", [])]
    return ", ".join(people)
