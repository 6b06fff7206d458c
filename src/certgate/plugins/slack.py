"""Slack: one message per request and recipient, reviews in its thread, edited when the
request is resolved, and a direct message to the requester.

Web API calls (`POST <api_url>/<method>`, bearer token, JSON body):

    chat.postMessage {channel, text, blocks}            -> {ok, channel: "C..", ts}
    chat.postMessage {channel: C.., thread_ts, text}    a review, in the thread
    chat.update      {channel: C.., ts, text, blocks}   needs the channel *id* from above
    users.lookupByEmail ?email=                         -> {ok, user: {id}}: direct messages

Slack answers HTTP 200 with `ok: false` and an error code for refusals; the codes that
mean "this recipient will never work" make the recipient be skipped for good.
"""

from __future__ import annotations

from typing import Any

import httpx

from certgate.errors import ConnectionProblem
from certgate.plugins import text
from certgate.plugins.config import PluginConfig
from certgate.plugins.notifier import Posted, RecipientRefused
from certgate.plugins.request_info import RequestInfo
from certgate.plugins.retry import send

# Characters of one field's value (Slack's limit is 2000 with the field's name).
FIELD_LIMIT = 1900
# Characters of a message's `text` (Slack refuses one over 40000: msg_too_long).
TEXT_LIMIT = 4000
# Refusals that do not go away by trying again.
_FOR_GOOD = {
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "users_not_found",
    "user_not_found",
    "cannot_dm_bot",
    "msg_too_long",
    "invalid_blocks",
    "message_not_found",
    "cant_update_message",
}
# invalid_auth, missing_scope and the like are not here: they are the token's fault, not
# the recipient's, so steps wait (and the log says why) until an admin fixes the token.


class SlackNotifier:
    def __init__(self, config: PluginConfig, http: httpx.AsyncClient | None = None) -> None:
        assert config.slack is not None
        self._config = config
        self._api = config.slack.api_url.rstrip("/")
        self._http = http or httpx.AsyncClient(
            headers={"Authorization": f"Bearer {config.slack.token}"}
        )

    # Notifier ---------------------------------------------------------------------

    def recipients(self, request: RequestInfo) -> list[str]:
        return self._config.recipients_for(request.roles, request.suggested_reviewers)

    async def post(self, recipient: str, request: RequestInfo) -> Posted:
        channel = await self._channel(recipient)
        answer = await self._call(
            "chat.postMessage",
            {"channel": channel, "text": _fallback(request), "blocks": self.blocks(request)},
        )
        return Posted({"channel": answer["channel"], "ts": answer["ts"]}, request.state)

    async def reply(
        self, recipient: str, ref: dict[str, Any], request: RequestInfo, index: int
    ) -> None:
        await self._call(
            "chat.postMessage",
            {
                "channel": ref["channel"],
                "thread_ts": ref["ts"],
                "text": _escaped(text.review_line(request.reviews[index]), TEXT_LIMIT),
            },
        )

    async def update(self, recipient: str, ref: dict[str, Any], request: RequestInfo) -> None:
        await self._call(
            "chat.update",
            {
                "channel": ref["channel"],
                "ts": ref["ts"],
                "text": _fallback(request),
                "blocks": self.blocks(request),
            },
        )

    async def tell_requester(self, request: RequestInfo) -> None:
        email = self._config.email_for(request.user)
        if email is None:
            raise RecipientRefused(f"no email known for {request.user}: see docs/plugins.md")
        channel = await self._channel(email)
        await self._call(
            "chat.postMessage",
            {"channel": channel, "text": _escaped(text.outcome_line(request), TEXT_LIMIT)},
        )

    async def close(self) -> None:
        await self._http.aclose()

    # the message ------------------------------------------------------------------

    def blocks(self, request: RequestInfo) -> list[dict[str, Any]]:
        """The message in Block Kit: summary, fields, how to review, status."""
        url = text.review_url(self._config.link_base, request)
        fields = [
            ("User", request.user),
            ("Requested", request.what()),
            ("Reason", request.reason or "-"),
            ("Duration", text.duration(request)),
            ("Access until", text.when(request.access_ends())),
            ("Status", text.status(request)),
        ]
        return [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Access request* `{request.id}`"},
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*{name}*\n{_field(value)}"}
                    for name, value in fields
                ],
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"<{url}|Review it in certgate> or run "
                    f"`{text.approve_command(request)}`",
                },
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"pending until {text.when(request.pending_expires)}",
                    }
                ],
            },
        ]

    # calls ------------------------------------------------------------------------

    async def _channel(self, recipient: str) -> str:
        """A channel name or id as it is; an email becomes the user's id (their DMs)."""
        if recipient.startswith("user:"):
            raise RecipientRefused(f"no email known for {recipient[5:]}: see docs/plugins.md")
        if "@" not in recipient:
            return recipient
        answer = await self._call("users.lookupByEmail", params={"email": recipient})
        return str(answer["user"]["id"])

    async def _call(
        self,
        method: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        what = f"slack {method}"
        if body is not None:
            # A message posted twice shows twice; Slack has no key to post it once, and
            # asking whether it arrived needs the history scopes (docs/plugins.md).
            response = await send(
                self._http,
                "POST",
                f"{self._api}/{method}",
                what=what,
                idempotent=method != "chat.postMessage",
                json=body,
            )
        else:
            response = await send(
                self._http, "GET", f"{self._api}/{method}", what=what, params=params
            )
        try:
            answer = response.json()
        except ValueError as exc:
            raise ConnectionProblem(f"{what}: answer is not JSON ({response.status_code})") from exc
        if not isinstance(answer, dict):
            raise ConnectionProblem(f"{what}: answer is not a JSON object")
        if answer.get("ok") is True:
            return answer
        error = str(answer.get("error") or f"status {response.status_code}")
        if error in _FOR_GOOD or response.status_code in (400, 404):
            raise RecipientRefused(f"{what}: {error}")
        raise ConnectionProblem(f"{what}: {error}")


def _fallback(request: RequestInfo) -> str:
    """The notification text (and what clients without blocks show)."""
    return _escaped(f"{text.headline(request)}: {text.status(request)}", TEXT_LIMIT)


def _field(value: str) -> str:
    """Escaped, and short enough for a field (Slack refuses one over 2000 characters)."""
    return _escaped(value, FIELD_LIMIT)


def _escaped(value: str, limit: int) -> str:
    """`value` as plain words in mrkdwn, at most `limit` characters. Every text sent goes
    through here, blocks and `text` alike: `<!channel>` or `<https://evil|certgate>` in a
    reason or a review would otherwise notify everyone or show a disguised link."""
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: limit - 1]
    amp = cut.rfind("&", len(cut) - 5)
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]  # never half an entity
    return cut + "…"
