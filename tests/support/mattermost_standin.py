"""A Mattermost REST API v4 stand-in: the calls the Mattermost plugin makes, answered
as Mattermost answers them (26-character ids, 201 on create, error bodies with id and
message, one 429 with Retry-After, 403 on a post where the bot is no member), recording
the posts a real server would hold (with their props, found again by
GET /channels/{id}/posts?since=), and able to answer a post late.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.http_standin import Call, ThreadedServer

TOKEN = "mm-test-token-0123456789"
BOT_ID = "botuser0000000000000000000"


def new_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(26))


@dataclass
class Post:
    id: str
    channel_id: str
    message: str
    root_id: str = ""
    edits: list[str] = field(default_factory=list)
    props: dict[str, Any] = field(default_factory=dict)
    create_at: int = field(default_factory=lambda: int(time.time() * 1000))


class MattermostStandin:
    def __init__(
        self,
        channels: dict[str, str] | None = None,  # "team/channel" -> id
        users: dict[str, str] | None = None,  # email -> user id
        rate_limit_once: bool = True,
        not_member: tuple[str, ...] = (),  # "team/channel"s the bot may find, not post in
    ) -> None:
        self.channels = channels or {"eng/access-requests": new_id()}
        for name in not_member:
            self.channels.setdefault(name, new_id())
        self._not_member = {self.channels[name] for name in not_member}
        self.users = users or {}
        self.direct: dict[str, str] = {}  # direct channel id -> the other user's id
        self.posts: list[Post] = []
        self.calls: list[Call] = []
        self._rate_limit = rate_limit_once
        self.rate_limited = 0
        self._delay = 0.0
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_route("*", "/api/v4/{path:.*}", self._handle)
        self._server = ThreadedServer(app)

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> MattermostStandin:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def delay_next_post(self, seconds: float) -> None:
        """The next POST /posts is saved at once but answered `seconds` later: a caller
        that gives up waiting has made a post it has no answer for."""
        with self._lock:
            self._delay = seconds

    def top_posts(self) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if not p.root_id]

    def replies(self, parent: Post) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if p.root_id == parent.id]

    def direct_with(self, email: str) -> str | None:
        user_id = self.users[email]
        with self._lock:
            return next((c for c, u in self.direct.items() if u == user_id), None)

    async def _handle(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["path"]
        body = await request.json() if request.can_read_body else None
        status, answer = self._answer(request, path, body)
        headers = {"Retry-After": "1"} if status == 429 else {}
        with self._lock:
            self.calls.append(Call(f"{request.method} {path}", body, dict(request.headers), status))
            delay = 0.0
            if request.method == "POST" and path == "/posts" and status == 201:
                delay, self._delay = self._delay, 0.0
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(answer, status=status, headers=headers)

    def _answer(self, request: web.Request, path: str, body: Any) -> tuple[int, Any]:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _error(
                401, "api.context.session_expired.app_error", "Invalid or expired session"
            )
        verb = request.method
        if verb == "GET" and path.startswith("/channels/") and path.endswith("/posts"):
            with self._lock:
                return self._posts_since(path.split("/")[2], int(request.query.get("since", 0)))
        if self._rate_limit and verb == "POST" and path == "/posts":
            self._rate_limit = False
            self.rate_limited += 1
            return _error(429, "api.context.rate_limit", "Too many requests, try again later")
        with self._lock:
            return self._route(verb, path, body)

    def _route(self, verb: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if verb == "GET" and path == "/users/me":
            return 200, {"id": BOT_ID, "username": "certgate-bot", "is_bot": True}
        if verb == "GET" and parts[:2] == ["users", "email"] and len(parts) == 3:
            user_id = self.users.get(parts[2])
            if user_id is None:
                return _error(404, "app.user.missing_account.const", "Unable to find the user.")
            return 200, {"id": user_id, "email": parts[2]}
        if verb == "GET" and len(parts) == 6 and parts[0] == "teams" and parts[3] == "channels":
            channel_id = self.channels.get(f"{parts[2]}/{parts[5]}")
            if channel_id is None:
                return _error(404, "app.channel.get_by_name.missing.app_error", "Channel not found")
            return 200, {"id": channel_id, "name": parts[5], "type": "O"}
        if verb == "POST" and path == "/channels/direct":
            if not isinstance(body, list) or len(body) != 2 or BOT_ID not in body:
                return _error(400, "api.context.invalid_body_param.app_error", "Invalid user ids")
            other = next(u for u in body if u != BOT_ID)
            if other not in self.users.values():
                return _error(400, "api.context.invalid_body_param.app_error", "Invalid user ids")
            channel_id = next((c for c, u in self.direct.items() if u == other), None) or new_id()
            self.direct[channel_id] = other
            return 201, {"id": channel_id, "type": "D", "name": f"{BOT_ID}__{other}"}
        if verb == "POST" and path == "/posts":
            return self._create_post(body)
        if verb == "PUT" and parts[0] == "posts" and len(parts) == 2:
            return self._update_post(parts[1], body)
        return _error(404, "api.context.404.app_error", "Sorry, we could not find the page.")

    def _create_post(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not body.get("channel_id"):
            return _error(400, "api.context.invalid_body_param.app_error", "Invalid channel_id")
        channel_id = str(body["channel_id"])
        known = channel_id in self.channels.values() or channel_id in self.direct
        if not known or channel_id in self._not_member:
            return _error(403, "api.context.permissions.app_error", "You do not have permission")
        root_id = str(body.get("root_id") or "")
        if root_id and not any(p.id == root_id for p in self.posts):
            return _error(400, "api.post.create_post.root_id.app_error", "Invalid RootId parameter")
        props = body.get("props") if isinstance(body.get("props"), dict) else {}
        post = Post(new_id(), channel_id, str(body.get("message", "")), root_id, props=props)
        self.posts.append(post)
        return 201, _post_json(post)

    def _posts_since(self, channel_id: str, since: int) -> tuple[int, Any]:
        if channel_id not in self.channels.values() and channel_id not in self.direct:
            return _error(403, "api.context.permissions.app_error", "You do not have permission")
        found = [p for p in self.posts if p.channel_id == channel_id and p.create_at >= since]
        return 200, {
            "order": [p.id for p in reversed(found)],
            "posts": {p.id: _post_json(p) for p in found},
        }

    def _update_post(self, post_id: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or body.get("id") != post_id:
            return _error(400, "api.context.invalid_body_param.app_error", "Invalid post id")
        for post in self.posts:
            if post.id == post_id:
                post.message = str(body.get("message", post.message))
                post.edits.append(post.message)
                return 200, _post_json(post)
        return _error(404, "app.post.get.app_error", "Unable to get the post.")


def _post_json(post: Post) -> dict[str, Any]:
    return {
        "id": post.id,
        "user_id": BOT_ID,  # every post here is the bot's: the token is its
        "channel_id": post.channel_id,
        "message": post.message,
        "root_id": post.root_id,
        "props": post.props,
        "create_at": post.create_at,
        "update_at": int(time.time() * 1000),
        "delete_at": 0,
    }


def _error(status: int, ident: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"id": ident, "message": message, "status_code": status}
