"""The plugin loop's handling of one request: each step sent once and saved at once,
refusals skipped, failures left for later with what was done kept, removals shown."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from certgate.errors import ConnectionProblem
from certgate.plugins.base import PluginRunner
from certgate.plugins.notifier import Posted, RecipientRefused
from certgate.plugins.request_info import RequestInfo
from certgate.plugins.state import StateFile
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.transport import client_context
from tests.plugins.conftest import config
from tests.plugins.requests import pending, review


class Recorder:
    """A Notifier that writes down what it is asked to send (and can be told to fail)."""

    def __init__(self, state_file: StateFile) -> None:
        self.sent: list[tuple[str, str, Any]] = []
        self.refuse: set[str] = set()
        self.down = False
        self._file = state_file
        self.saved_before: list[int] = []  # how many steps the state file held at each call

    def recipients(self, request: RequestInfo) -> list[str]:
        return ["#a", "#b"]

    def _call(self, kind: str, recipient: str, detail: Any = None) -> None:
        state = self._file.load()
        record = state.requests.get(pending().id)
        self.saved_before.append(len(record.messages) if record else 0)
        if self.down:
            raise ConnectionProblem("chat down")
        if recipient in self.refuse:
            raise RecipientRefused(f"{recipient}: channel_not_found")
        self.sent.append((kind, recipient, detail))

    async def post(self, recipient: str, request: RequestInfo) -> Posted:
        self._call("post", recipient, request.state)
        return Posted({"id": recipient}, request.state)

    async def reply(
        self, recipient: str, ref: dict[str, Any], request: RequestInfo, index: int
    ) -> None:
        self._call("reply", recipient, index)

    async def update(self, recipient: str, ref: dict[str, Any], request: RequestInfo) -> None:
        self._call("update", recipient, request.state)

    async def tell_requester(self, request: RequestInfo) -> None:
        self._call("tell", request.user, request.state)

    async def close(self) -> None:
        pass


@pytest.fixture
async def runner(tmp_path: Path) -> Any:
    state_file = StateFile(tmp_path / "state.json")
    notifier = Recorder(state_file)
    auth = AsyncAuthClient("https://127.0.0.1:9", client_context(insecure=True))
    yield PluginRunner("test", config(tmp_path), notifier, state_file, auth), notifier, state_file
    await auth.close()


async def test_each_step_once_saved_before_the_next(runner: Any) -> None:
    loop, notifier, state_file = runner
    request = pending()
    await loop._handle(request.id, request)
    await loop._handle(request.id, request)  # the same again: nothing new to say
    assert notifier.sent == [("post", "#a", "PENDING"), ("post", "#b", "PENDING")]
    assert notifier.saved_before == [0, 1]  # #a was on disk before #b was sent
    approved = replace(request, state="APPROVED", reviews=(review(),))
    await loop._handle(request.id, approved)
    assert notifier.sent[2:] == [
        ("reply", "#a", 0),
        ("reply", "#b", 0),
        ("update", "#a", "APPROVED"),
        ("update", "#b", "APPROVED"),
        ("tell", "alice", "APPROVED"),
    ]
    done = state_file.load().requests[request.id]
    assert done.quiet  # resolved and all said: kept small from now on
    await loop._handle(request.id, approved)
    assert len(notifier.sent) == 7


async def test_a_refused_recipient_is_skipped_for_good(runner: Any) -> None:
    loop, notifier, state_file = runner
    notifier.refuse = {"#a"}
    request = pending()
    await loop._handle(request.id, request)
    notifier.refuse = set()
    await loop._handle(request.id, replace(request, reviews=(review(),)))
    assert notifier.sent == [("post", "#b", "PENDING"), ("reply", "#b", 0)]
    record = state_file.load().requests[request.id]
    assert record.messages["#a"].failed == "#a: channel_not_found"


async def test_a_chat_that_is_down_keeps_what_was_done(runner: Any) -> None:
    loop, notifier, _ = runner
    request = pending()
    await loop._handle(request.id, request)
    notifier.down = True
    reviewed = replace(request, reviews=(review(),))
    with pytest.raises(ConnectionProblem):
        await loop._handle(request.id, reviewed)
    notifier.down = False
    await loop._handle(request.id, reviewed)
    assert notifier.sent == [
        ("post", "#a", "PENDING"),
        ("post", "#b", "PENDING"),
        ("reply", "#a", 0),
        ("reply", "#b", 0),
    ]


async def test_a_request_removed_while_pending_is_shown_expired_then_forgotten(
    runner: Any,
) -> None:
    loop, notifier, state_file = runner
    request = pending()
    await loop._handle(request.id, request)
    await loop._handle(request.id, None)
    assert notifier.sent[2:] == [
        ("update", "#a", "EXPIRED"),
        ("update", "#b", "EXPIRED"),
        ("tell", "alice", "EXPIRED"),
    ]
    assert request.id not in state_file.load().requests
    await loop._handle(request.id, None)  # gone twice: nothing more
    assert len(notifier.sent) == 5
