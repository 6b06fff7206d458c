"""Session trackers for the terminal sessions a server runs (sshd.SessionTracking).

The node uses one for its own sessions; the proxy one for the agentless nodes it
serves, and the kube service one for kubectl exec/attach (each SessionInfo then names
its node, or its cluster).
"""

from __future__ import annotations

from typing import Any

from certgate.api.meta import Metadata
from certgate.api.session_tracker import Participant, SessionTracker, SessionTrackerSpec
from certgate.rpc.session_trackers import SessionTrackerPublisher
from certgate.srv.session import SessionInfo


class TrackedSessions:
    def __init__(self, publisher: SessionTrackerPublisher, node_name: str = "") -> None:
        self._publisher = publisher
        self._node_name = node_name

    def _tracker(self, info: SessionInfo, participants: list[dict[str, Any]]) -> SessionTracker:
        return SessionTracker(
            metadata=Metadata(name=info.id),
            spec=SessionTrackerSpec(
                kind="k8s" if info.protocol == "k8s" else "ssh",
                session_kind=info.kind,
                user=info.identity.username,
                login=info.login,
                node=info.node or self._node_name,
                roles=list(info.identity.roles),
                command=info.command,
                started=info.started,
                participants=[Participant.model_validate(p) for p in participants],
            ),
        )

    def started(self, info: SessionInfo) -> None:
        self._publisher.put(self._tracker(info, []))

    def participants_changed(self, info: SessionInfo, participants: list[dict[str, Any]]) -> None:
        self._publisher.put(self._tracker(info, participants))

    def ended(self, info: SessionInfo) -> None:
        self._publisher.remove(info.id)
