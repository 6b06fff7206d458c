"""A Slack Web API stand-in: the few methods the Slack plugin calls, answered as Slack
answers them (HTTP 200 with `ok`, channel ids, message `ts`, error codes, one 429 with
Retry-After), recording what a real workspace would have received.

    chat.postMessage   channel: #name, name, C.. id or a user's U.. id (their DM, D..)
    chat.update        channel must be the *id* (a name fails: channel_not_found), ts known
    users.lookupByEmail
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.http_standin import Call, ThreadedServer

TOKEN = "xoxb-test-token"


@dataclass
class Message:
    channel: str  # id
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None = None
    edits: list[dict[str, Any]] = field(default_factory=list)


class SlackStandin:
    def __init__(
        self,
        channels: dict[str, str] | None = None,  # name -> id
        users: dict[str, str] | None = None,  # email -> user id
        rate_limit_once: bool = True,
    ) -> None:
        self.channels = channels or {"access-requests": "C0ACCESS01"}
        self.users = users or {}
        self.calls: list[Call] = []
        self.messages: list[Message] = []
        self._rate_limit = rate_limit_once
        self._retry_after = 1
        self._hold = False
        self._limited_until = 0.0  # monotonic: while held, every post before it is a 429
        self.early_calls = 0  # posts that came before the Retry-After asked had passed
        self._delay = 0.0
        self.rate_limited = 0
        self._ts = itertools.count(1)
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle)
        self._server = ThreadedServer(app)

    @property
    def api_url(self) -> str:
        return f"{self._server.url}/api"

    def start(self) -> SlackStandin:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def delay_next_answer(self, seconds: float) -> None:
        """The next chat.postMessage is posted at once but answered `seconds` later:
        a caller stopped meanwhile has sent a message it has no answer for yet."""
        with self._lock:
            self._delay = seconds

    def rate_limit_next(self, retry_after: int, hold: bool = False) -> None:
        """The next chat.postMessage gets a 429 asking for `retry_after` seconds. With
        `hold`, as Slack does: every chat.postMessage until then gets one too (asking
        for the rest of the window), and is counted in `early_calls`."""
        with self._lock:
            self._rate_limit = True
            self._retry_after = retry_after
            self._hold = hold

    # what was received --------------------------------------------------------------

    def ok_calls(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and c.status == 200]

    def top_messages(self) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.thread_ts is None]

    def replies(self, parent: Message) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.thread_ts == parent.ts]

    def dm_channel(self, email: str) -> str:
        return "D" + self.users[email][1:]

    # the API ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.method == "POST" and request.content_type == "application/json":
            body: dict[str, Any] = await request.json()
        else:
            body = dict(request.query)
        status, answer = self._answer(request, method, body)
        headers = {"Retry-After": str(self._retry_after)} if status == 429 else {}
        if status == 429 and self._hold:
            left = self._limited_until - time.monotonic()
            if left > 0:
                headers = {"Retry-After": str(math.ceil(left))}
            else:
                self._limited_until = time.monotonic() + self._retry_after
        with self._lock:
            self.calls.append(Call(method, body, dict(request.headers), status))
            delay, self._delay = (self._delay, 0.0) if method == "chat.postMessage" else (0.0, 0.0)
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(answer, status=status, headers=headers)

    def _answer(
        self, request: web.Request, method: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        auth = request.headers.get("Authorization", "")
        if not auth:
            return 200, {"ok": False, "error": "not_authed"}
        if auth != f"Bearer {TOKEN}":
            return 200, {"ok": False, "error": "invalid_auth"}
        if method == "chat.postMessage" and time.monotonic() < self._limited_until - 0.05:
            self.early_calls += 1
            return 429, {"ok": False, "error": "ratelimited"}
        if self._rate_limit and method == "chat.postMessage":
            self._rate_limit = False
            self.rate_limited += 1
            return 429, {"ok": False, "error": "ratelimited"}
        with self._lock:
            if method == "users.lookupByEmail":
                user_id = self.users.get(str(body.get("email", "")))
                if user_id is None:
                    return 200, {"ok": False, "error": "users_not_found"}
                return 200, {"ok": True, "user": {"id": user_id, "profile": {}}}
            if method == "chat.postMessage":
                return self._post(body)
            if method == "chat.update":
                return self._update(body)
        return 200, {"ok": False, "error": "unknown_method"}

    def _channel_id(self, name: str) -> str | None:
        if name in self.channels.values():
            return name
        if name.startswith("U") and name in self.users.values():
            return "D" + name[1:]  # posting to a user id opens the app's DM with them
        if name.startswith("D") and "U" + name[1:] in self.users.values():
            return name
        return self.channels.get(name.removeprefix("#"))

    def _post(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        channel = self._channel_id(str(body.get("channel", "")))
        if channel is None:
            return 200, {"ok": False, "error": "channel_not_found"}
        if not body.get("text") and not body.get("blocks"):
            return 200, {"ok": False, "error": "no_text"}
        if not _blocks_valid(body.get("blocks")):
            return 200, {"ok": False, "error": "invalid_blocks"}
        thread_ts = body.get("thread_ts")
        if thread_ts is not None and not any(
            m.ts == thread_ts and m.channel == channel for m in self.messages
        ):
            return 200, {"ok": False, "error": "thread_not_found"}
        ts = f"1700000000.{next(self._ts):06d}"
        message = Message(channel, ts, str(body.get("text", "")), body.get("blocks"), thread_ts)
        self.messages.append(message)
        return 200, {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "message": {"type": "message", "text": message.text, "ts": ts},
        }

    def _update(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not _blocks_valid(body.get("blocks")):
            return 200, {"ok": False, "error": "invalid_blocks"}
        channel = str(body.get("channel", ""))
        if channel != self._channel_id(channel):  # a name, not an id
            return 200, {"ok": False, "error": "channel_not_found"}
        for message in self.messages:
            if message.channel == channel and message.ts == body.get("ts"):
                message.edits.append(body)
                message.text = str(body.get("text", message.text))
                message.blocks = body.get("blocks", message.blocks)
                return 200, {"ok": True, "channel": channel, "ts": message.ts, "text": message.text}
        return 200, {"ok": False, "error": "message_not_found"}


def _blocks_valid(blocks: Any) -> bool:
    """Block Kit's limits the plugin could meet: 50 blocks, section text 3000 characters,
    10 fields of 2000."""
    if blocks is None:
        return True
    if not isinstance(blocks, list) or len(blocks) > 50:
        return False
    for block in blocks:
        if block.get("type") == "section":
            if len(block.get("text", {}).get("text", "")) > 3000:
                return False
            fields = block.get("fields", [])
            if len(fields) > 10 or any(len(f.get("text", "")) > 2000 for f in fields):
                return False
    return True
