"""The plugin's own small state, one JSON file, replaced atomically after every step.

    {"version": 1, "initialized": true,
     "requests": {"<request id>": {
         "request":  {...RequestInfo.to_json() as last handled...},
         "messages": {"<recipient>": {"ref": {...}, "shows": "PENDING", "replies": 1}
                      | {"failed": "channel_not_found"}},
         "requester_told": false},
                  "<resolved, all said>": {"quiet": true, "request": {id, user, state}}}}

A record is dropped once its request is gone from the cluster, so the file holds only
live requests. A crash between an outbound call and the save that follows it can send
a step twice; so can a post whose answer was lost (docs/plugins.md, "When a message can
show twice", lists every case).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certgate.errors import BadParameter
from certgate.plugins.request_info import RequestInfo

VERSION = 1


@dataclass
class MessageRecord:
    """One message about a request, at one recipient."""

    ref: dict[str, Any] = field(default_factory=dict)  # the chat's ids: channel, ts, post id
    shows: str = ""  # the request state the message shows now
    replies: int = 0  # reviews posted as replies so far
    failed: str = ""  # the recipient refused for good (unknown channel, no such user)

    def to_json(self) -> dict[str, Any]:
        if self.failed:
            return {"failed": self.failed}
        return {"ref": self.ref, "shows": self.shows, "replies": self.replies}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MessageRecord:
        return cls(
            ref=dict(data.get("ref") or {}),
            shows=str(data.get("shows", "")),
            replies=int(data.get("replies", 0)),
            failed=str(data.get("failed", "")),
        )


@dataclass
class RequestRecord:
    request: RequestInfo
    messages: dict[str, MessageRecord] = field(default_factory=dict)
    requester_told: bool = False
    # Nothing more to say about it: resolved when the plugin first started, or resolved
    # and everything said. Kept small, only so that it is not announced again.
    quiet: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.quiet:
            r = self.request
            return {"quiet": True, "request": {"id": r.id, "user": r.user, "state": r.state}}
        return {
            "request": self.request.to_json(),
            "messages": {name: m.to_json() for name, m in self.messages.items()},
            "requester_told": self.requester_told,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(
            request=RequestInfo.from_json(data["request"]),
            messages={
                str(k): MessageRecord.from_json(v) for k, v in (data.get("messages") or {}).items()
            },
            requester_told=bool(data.get("requester_told", False)),
            quiet=bool(data.get("quiet", False)),
        )


@dataclass
class PluginState:
    requests: dict[str, RequestRecord] = field(default_factory=dict)
    # False until the first snapshot is handled: requests resolved before the plugin
    # ever ran are history, not news.
    initialized: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "initialized": self.initialized,
            "requests": {rid: r.to_json() for rid, r in self.requests.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PluginState:
        if data.get("version") != VERSION:
            raise BadParameter(f"state file version {data.get('version')!r} is not {VERSION}")
        return cls(
            requests={
                str(rid): RequestRecord.from_json(r)
                for rid, r in (data.get("requests") or {}).items()
            },
            initialized=bool(data.get("initialized", False)),
        )


class StateFile:
    """Loads and saves `PluginState` at `path` (write to a temporary file, fsync, rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> PluginState:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return PluginState()
        except OSError as exc:
            raise BadParameter(f"cannot read the state file {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return PluginState.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError, BadParameter) as exc:
            raise BadParameter(
                f"the state file {self.path} is damaged ({exc}): move it away to start afresh"
            ) from exc

    def save(self, state: PluginState) -> None:
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        try:
            self._replace(data)
        except OSError as exc:
            # Without its state the plugin cannot promise not to repeat itself: stop.
            raise BadParameter(
                f"cannot write the state file {self.path}: {exc.strerror or exc}"
            ) from exc

    def _replace(self, data: bytes) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        # The rename itself must reach the disk, or a power cut could bring back the old file.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
