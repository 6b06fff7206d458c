"""Session trackers: the live interactive sessions of the cluster, as `cgsh sessions ls`
shows them.

A node (or the proxy, for agentless nodes) registers a tracker when a terminal session
starts, updates it when someone joins or leaves, and removes it when the session ends.
Each tracker expires unless refreshed, so the sessions of a node that died disappear
on their own. metadata.name is the session id (a UUID, as the recording's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from certgate.api.meta import Metadata, Model

JoinMode = Literal["observer", "peer"]
JOIN_MODES: tuple[JoinMode, ...] = ("observer", "peer")

# The SSH login a joiner uses: `join:<mode>:<session id>`. A colon cannot appear in a
# Unix user name, so this never names a real account, and OpenSSH passes it as it is.
JOIN_LOGIN_PREFIX = "join:"

# Typing into someone's kubectl exec is not built: a kube session's joiners only watch.
KUBE_PEER_REFUSAL = "peer join of a Kubernetes session is not supported; join as observer"


class Participant(Model):
    user: str
    mode: JoinMode
    joined: datetime


class SessionTrackerSpec(Model):
    kind: Literal["ssh", "k8s"] = "ssh"  # k8s: a kubectl exec/attach (node = the cluster)
    session_kind: str  # "shell" or "exec" (with a terminal)
    user: str
    login: str
    node: str
    roles: list[str] = Field(default_factory=list)
    command: str | None = None
    started: datetime
    participants: list[Participant] = Field(default_factory=list)


class SessionTracker(Model):
    kind: Literal["session_tracker"] = "session_tracker"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: SessionTrackerSpec

    @property
    def name(self) -> str:
        return self.metadata.name


def join_login(mode: str, session_id: str) -> str:
    return f"{JOIN_LOGIN_PREFIX}{mode}:{session_id}"


def parse_join_login(login: str) -> tuple[str, str] | None:
    """(mode, session id) of a join login; None for an ordinary login."""
    if not login.startswith(JOIN_LOGIN_PREFIX):
        return None
    mode, _, session_id = login[len(JOIN_LOGIN_PREFIX) :].partition(":")
    return mode, session_id
