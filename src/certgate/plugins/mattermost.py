"""Mattermost (REST API v4): the same messages as Slack, in Markdown.

GET  /api/v4/users/me                                  the bot's own id (direct channels)
GET  /api/v4/teams/name/{team}/channels/name/{name}    a "team/channel" recipient's id
GET  /api/v4/users/email/{email}                       an email recipient's user id
POST /api/v4/channels/direct [bot id, user id]         -> {id}: the direct channel
POST /api/v4/posts {channel_id, message[, root_id]}    -> {id}; root_id makes a reply
PUT  /api/v4/posts/{id} {id, message}                  the update
GET  /api/v4/channels/{id}/posts?since=MS              after a post whose answer was lost

Each new post carries the step it is in `props` (`certgate_step`: "post:<request id>",
"reply:<request id>:<review>", "tell:<request id>"). When a post's answer was lost (no
answer in time, a cut connection, a 5xx), the step is tried again later, and first looks
for a post of the bot's with that step in the channel, so the channel does not show it
twice. Only this process remembers which answers were lost: after a restart the step is
posted again (docs/plugins.md, "When a message can show twice").
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import quote

import httpx

from certgate.errors import ConnectionProblem
from certgate.plugins import text
from certgate.plugins.config import PluginConfig
from certgate.plugins.notifier import OutcomeUnknown, Posted, RecipientRefused
from certgate.plugins.request_info import RequestInfo
from certgate.plugins.retry import send

# Characters of one shown value (a reason of thousands): Mattermost refuses a post over
# 16383, and a table of a few such cells stays under it.
VALUE_LIMIT = 4000
# What a requester's or reviewer's words could use as Markdown: emphasis, code, links
# and images, autolinks and HTML, entities, strike-through and ~channel links, hashtags,
# table bars, inline LaTeX, and the escape character itself.
_MARKDOWN = re.compile(r"([\\`*_\[\]()<>!#|~&$])")
# After each @, so `@channel` reaches nobody: Mattermost finds mentions in the raw text,
# where a backslash does not stop them. Invisible, and not a space.
WORD_JOINER = "\u2060"
# The post props naming the step a post is (see above), and the state a request's
# message was posted with.
STEP_PROP = "certgate_step"
SHOWS_PROP = "certgate_shows"
# How far before its lost post the lookup starts: our clock against the server's.
CLOCK_SKEW_MS = 10 * 60 * 1000


class MattermostNotifier:
    def __init__(self, config: PluginConfig, http: httpx.AsyncClient | None = None) -> None:
        assert config.mattermost is not None
        self._config = config
        self._api = config.mattermost.url.rstrip("/") + "/api/v4"
        self._http = http or httpx.AsyncClient(
            headers={"Authorization": f"Bearer {config.mattermost.token}"}
        )
        self._bot_id = ""
        # step -> epoch ms before its post whose answer was lost (look before posting again)
        self._lost: dict[str, int] = {}

    # Notifier ---------------------------------------------------------------------

    def recipients(self, request: RequestInfo) -> list[str]:
        return self._config.recipients_for(request.roles, request.suggested_reviewers)

    async def post(self, recipient: str, request: RequestInfo) -> Posted:
        channel_id = await self._channel(recipient)
        post = await self._create_post(
            f"post:{request.id}",
            channel_id,
            self.message(request),
            shows=request.state,
        )
        # A post found after a lost answer shows the state it was made with.
        shows = str((post.get("props") or {}).get(SHOWS_PROP) or request.state)
        return Posted({"channel_id": channel_id, "post_id": post["id"]}, shows)

    async def reply(
        self, recipient: str, ref: dict[str, Any], request: RequestInfo, index: int
    ) -> None:
        await self._create_post(
            f"reply:{request.id}:{index}",
            str(ref["channel_id"]),
            _literal(text.review_line(request.reviews[index])),
            root_id=str(ref["post_id"]),
        )

    async def update(self, recipient: str, ref: dict[str, Any], request: RequestInfo) -> None:
        post_id = str(ref["post_id"])
        await self._call(
            "PUT",
            f"/posts/{quote(post_id, safe='')}",
            {"id": post_id, "message": self.message(request)},
        )

    async def tell_requester(self, request: RequestInfo) -> None:
        email = self._config.email_for(request.user)
        if email is None:
            raise RecipientRefused(f"no email known for {request.user}: see docs/plugins.md")
        channel_id = await self._channel(email)
        await self._create_post(
            f"tell:{request.id}", channel_id, _literal(text.outcome_line(request))
        )

    async def close(self) -> None:
        await self._http.aclose()

    # the message ------------------------------------------------------------------

    def message(self, request: RequestInfo) -> str:
        url = text.review_url(self._config.link_base, request)
        return "\n".join(
            [
                f"**Access request** `{request.id}`",
                "",
                "| | |",
                "|---|---|",
                f"| User | {_literal(request.user)} |",
                f"| Requested | {_literal(request.what())} |",
                f"| Reason | {_literal(request.reason or '-')} |",
                f"| Duration | {text.duration(request)} |",
                f"| Access until | {text.when(request.access_ends())} |",
                f"| Status | {_literal(text.status(request))} |",
                "",
                f"[Review it in certgate]({url}) or run `{text.approve_command(request)}`",
                f"_pending until {text.when(request.pending_expires)}_",
            ]
        )

    # calls ------------------------------------------------------------------------

    async def _create_post(
        self, step: str, channel_id: str, message: str, root_id: str = "", shows: str = ""
    ) -> dict[str, Any]:
        """POST /posts, once: after a lost answer, the post found is returned instead."""
        if step in self._lost:
            found = await self._find_post(step, channel_id, self._lost[step])
            if found is not None:
                del self._lost[step]
                return found
        props = {STEP_PROP: step, **({SHOWS_PROP: shows} if shows else {})}
        body: dict[str, Any] = {"channel_id": channel_id, "message": message, "props": props}
        if root_id:
            body["root_id"] = root_id
        before = int(time.time() * 1000) - CLOCK_SKEW_MS
        try:
            post: dict[str, Any] = await self._call("POST", "/posts", body, idempotent=False)
        except OutcomeUnknown:
            self._lost.setdefault(step, before)
            raise
        self._lost.pop(step, None)
        return post

    async def _find_post(self, step: str, channel_id: str, since: int) -> dict[str, Any] | None:
        """The bot's live post for `step` in the channel, made since `since`, if any."""
        bot_id = await self._bot()
        answer = await self._call(
            "GET", f"/channels/{quote(channel_id, safe='')}/posts?since={since}"
        )
        posts = answer.get("posts") if isinstance(answer, dict) else None
        for post in (posts or {}).values():
            if (
                isinstance(post, dict)
                and post.get("user_id") == bot_id
                and not post.get("delete_at")
                and (post.get("props") or {}).get(STEP_PROP) == step
            ):
                return post
        return None

    async def _bot(self) -> str:
        if not self._bot_id:
            self._bot_id = str((await self._call("GET", "/users/me"))["id"])
        return self._bot_id

    async def _channel(self, recipient: str) -> str:
        if recipient.startswith("user:"):
            raise RecipientRefused(f"no email known for {recipient[5:]}: see docs/plugins.md")
        if "@" in recipient:
            user = await self._call("GET", f"/users/email/{quote(recipient, safe='@')}")
            channel = await self._call("POST", "/channels/direct", [await self._bot(), user["id"]])
            return str(channel["id"])
        team, sep, name = recipient.partition("/")
        if not sep or not team or not name:
            raise RecipientRefused(
                f'mattermost recipient "{recipient}": use team/channel or an email'
            )
        channel = await self._call(
            "GET", f"/teams/name/{quote(team, safe='')}/channels/name/{quote(name, safe='')}"
        )
        return str(channel["id"])

    async def _call(self, method: str, path: str, body: Any = None, idempotent: bool = True) -> Any:
        what = f"mattermost {method} {path}"
        response = await send(
            self._http, method, self._api + path, what=what, idempotent=idempotent, json=body
        )
        if response.status_code in (400, 404):
            raise RecipientRefused(f"{what}: {_error(response)}")
        if response.status_code == 403:
            # The bot may not post there (not in the channel, or a channel it may not
            # see): that recipient will not work until an admin acts, and waiting on it
            # would hold up every other recipient and request. Skipped, and logged once.
            raise RecipientRefused(
                f"{what}: {_error(response)}: add the bot to the channel (or team)"
            )
        if response.status_code >= 300:
            # 401: the token's fault, not the recipient's: retried later.
            raise ConnectionProblem(f"{what}: {_error(response)}")
        try:
            return response.json()
        except ValueError as exc:
            raise ConnectionProblem(f"{what}: answer is not JSON") from exc


def _error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"status {response.status_code}"
    if isinstance(body, dict) and body.get("message"):
        return f"{response.status_code} {body.get('id', '')} {body['message']}".replace("  ", " ")
    return f"status {response.status_code}"


def _literal(value: str, limit: int = VALUE_LIMIT) -> str:
    """`value` shown as the very words it is, wherever it goes (a table cell, a reply, a
    direct message): Markdown escaped, mentions broken, on one line (a newline would end
    a table row, or start a heading or a quote), and at most `limit` characters."""
    one_line = " ".join(value.splitlines())
    shown = _MARKDOWN.sub(r"\\\1", one_line).replace("@", "@" + WORD_JOINER)
    if len(shown) <= limit:
        return shown
    cut = shown[: limit - 1]
    if (len(cut) - len(cut.rstrip("\\"))) % 2:
        cut = cut[:-1]  # never half an escape
    return cut + "…"
