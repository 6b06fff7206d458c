"""The Slack notifier against the Slack stand-in: what a workspace receives."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import certgate.plugins.retry as retry_module
import certgate.plugins.slack as slack_module
from certgate.errors import ConnectionProblem
from certgate.plugins.notifier import RecipientRefused
from certgate.plugins.retry import RetryPolicy
from certgate.plugins.slack import SlackNotifier
from tests.plugins.conftest import config, runner, slack_section
from tests.plugins.requests import pending, review
from tests.support.slack_standin import SlackStandin
from tests.support.wait import eventually_async


def notifier(tmp_path: Path, slack: SlackStandin, token: str | None = None) -> SlackNotifier:
    section = slack_section(slack) if token is None else slack_section(slack, token)
    return SlackNotifier(config(tmp_path, slack=section))


async def test_message_reply_update_and_direct_message(tmp_path: Path, slack: SlackStandin) -> None:
    n = notifier(tmp_path, slack)
    request = pending()
    assert n.recipients(request) == ["#access-requests", "bob@example.com"]
    posted = await n.post("#access-requests", request)
    # The first call met the stand-in's one 429 and was retried after Retry-After.
    assert slack.rate_limited == 1
    assert posted.ref == {"channel": "C0ACCESS01", "ts": posted.ref["ts"]}
    [message] = slack.top_messages()
    assert message.channel == "C0ACCESS01"
    assert message.text == "alice requests roles kube-admin and node/db-1: ⏳ PENDING"
    body = str(message.blocks)
    for shown in (
        request.id,
        "alice",
        "incident 42",
        "4h",
        "2026-11-30 13:00 UTC",  # created + max_duration: when access would end
        f"<https://proxy.example.com:3080/web/requests/{request.id}|Review it in certgate>",
        f"`cgctl requests approve {request.id}`",
    ):
        assert shown in body, shown

    reviewed = replace(request, reviews=(review("bob", "approve", "looks right"),))
    await n.reply("#access-requests", posted.ref, reviewed, 0)
    [reply] = slack.replies(message)
    assert reply.text == "bob approved the request: looks right"

    approved = replace(reviewed, state="APPROVED", resolve_reason="on call")
    await n.update("#access-requests", posted.ref, approved)
    [edit] = message.edits
    assert edit["channel"] == "C0ACCESS01" and edit["ts"] == message.ts
    assert "✅ APPROVED: on call" in str(edit["blocks"])

    await n.tell_requester(approved)
    [lookup] = slack.ok_calls("users.lookupByEmail")
    assert lookup.body == {"email": "alice@example.com"}
    dm = slack.top_messages()[-1]
    assert dm.channel == slack.dm_channel("alice@example.com")
    assert dm.text.startswith(f"Your access request {request.id} for roles kube-admin")
    assert "was approved (on call)" in dm.text
    for call in slack.calls:
        assert call.headers["Authorization"] == "Bearer xoxb-test-token"
    await n.close()


async def test_an_email_recipient_gets_a_direct_message(
    tmp_path: Path, slack: SlackStandin
) -> None:
    n = notifier(tmp_path, slack)
    posted = await n.post("bob@example.com", pending())
    assert posted.ref["channel"] == slack.dm_channel("bob@example.com")
    await n.close()


async def test_unknown_channel_or_user_is_refused_for_good(
    tmp_path: Path, slack: SlackStandin
) -> None:
    n = notifier(tmp_path, slack)
    with pytest.raises(RecipientRefused, match="channel_not_found"):
        await n.post("#nowhere", pending())
    with pytest.raises(RecipientRefused, match="users_not_found"):
        await n.post("carol@example.com", pending())
    await n.close()


async def test_a_bad_token_is_not_the_recipients_fault(tmp_path: Path, slack: SlackStandin) -> None:
    n = notifier(tmp_path, slack, token="xoxb-wrong")
    with pytest.raises(ConnectionProblem, match="invalid_auth"):
        await n.post("#access-requests", pending())
    await n.close()


async def test_a_server_that_keeps_failing_is_given_up_for_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = slack_module.send

    async def quick(*args: Any, **kwargs: Any) -> Any:
        return await original(*args, policy=RetryPolicy(attempts=2, first_delay=0.01), **kwargs)

    monkeypatch.setattr(slack_module, "send", quick)
    # Nothing listens on the discard port.
    n = SlackNotifier(config(tmp_path, slack={"token": "x", "api_url": "http://127.0.0.1:9/api"}))
    with pytest.raises(ConnectionProblem, match="failed after 2 attempts"):
        await n.post("#access-requests", pending())
    await n.close()


async def test_a_long_reason_is_cut_not_refused(tmp_path: Path, slack: SlackStandin) -> None:
    n = notifier(tmp_path, slack)
    request = pending(reason="<&>" * 3000)
    blocks = n.blocks(request)
    [reason] = [f["text"] for f in blocks[1]["fields"] if f["text"].startswith("*Reason*")]
    assert len(reason) < 2000 and reason.endswith("…")
    assert reason.removesuffix("…").endswith(("&lt;", "&amp;", "&gt;"))
    await n.post("#access-requests", request)
    await n.close()


async def test_reviewers_get_direct_messages_only_through_the_config(
    tmp_path: Path, slack: SlackStandin
) -> None:
    slack.users["ceo@othercorp.com"] = "U0OUTSIDER"
    c = config(tmp_path, slack=slack_section(slack), emails={"carol": "alice@example.com"})
    # As stored before auth checked reviewers: an address the requester typed.
    request = pending(suggested_reviewers=("ceo@othercorp.com", "bob", "carol"))
    async with runner(c, SlackNotifier) as loop:
        await loop._handle(request.id, request)
    assert {m.channel for m in slack.top_messages()} == {
        "C0ACCESS01",
        slack.dm_channel("bob@example.com"),  # bob@email_domain
        slack.dm_channel("alice@example.com"),  # carol, through the emails map
    }
    lookups = [c.body["email"] for c in slack.calls if c.method == "users.lookupByEmail"]
    assert "ceo@othercorp.com" not in lookups


EVIL = "<!channel> please re-login at <https://evil.example/login|https://127.0.0.1:23080/web>"


def _texts(value: Any) -> list[str]:
    """Every mrkdwn string in a call's body: `text` and the blocks' texts."""
    if isinstance(value, dict):
        return [t for k, v in value.items() if k != "channel" for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return [value] if isinstance(value, str) else []


async def test_words_of_requesters_and_reviewers_are_escaped_everywhere(
    tmp_path: Path, slack: SlackStandin
) -> None:
    n = notifier(tmp_path, slack)
    request = pending(reason=EVIL)
    posted = await n.post("#access-requests", request)
    reviewed = replace(request, reviews=(review("bob", "approve", EVIL),))
    await n.reply("#access-requests", posted.ref, reviewed, 0)
    approved = replace(reviewed, state="APPROVED", resolve_reason=f"approved by bob (bob: {EVIL})")
    await n.update("#access-requests", posted.ref, approved)
    await n.tell_requester(approved)
    own_link = f"<https://proxy.example.com:3080/web/requests/{request.id}|Review it in certgate>"
    sent = [c for c in slack.calls if c.method in ("chat.postMessage", "chat.update")]
    assert {c.method for c in sent} == {"chat.postMessage", "chat.update"} and len(sent) >= 4
    for call in sent:
        for text in _texts(call.body):
            assert "<" not in text.replace(own_link, ""), json.dumps(call.body)
    shown = "&lt;!channel&gt; please re-login at &lt;https://evil.example/login|"
    [message] = [m for m in slack.top_messages() if m.channel == "C0ACCESS01"]
    assert shown in slack.replies(message)[0].text
    assert shown in message.text  # the fallback text, with the resolve reason
    assert shown in slack.top_messages()[-1].text  # the requester's direct message
    await n.close()


async def test_nothing_is_sent_before_a_long_retry_after_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaled down: a call waits out a Retry-After of up to 1 s (60 s in real life), and
    # Slack asks for 3 s (120 s), refusing every post until then, as Slack does.
    monkeypatch.setattr(retry_module, "MAX_RETRY_AFTER", 1.0)
    slack = SlackStandin(rate_limit_once=False).start()
    try:
        slack.rate_limit_next(retry_after=3, hold=True)
        request = pending(suggested_reviewers=())
        async with runner(config(tmp_path, slack=slack_section(slack)), SlackNotifier) as loop:
            started = time.monotonic()
            loop._pending[request.id] = request  # as a watch event would leave it
            loop._wake.set()
            work = asyncio.create_task(loop._work())
            try:
                await eventually_async(slack.top_messages, timeout=20)
            finally:
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        assert slack.rate_limited == 1
        assert slack.early_calls == 0  # not one post inside the window Slack asked for
        assert time.monotonic() - started >= 3
    finally:
        slack.stop()


async def test_a_post_whose_answer_was_lost_is_not_sent_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retry_module, "TIMEOUT", httpx.Timeout(0.5))  # 10 s in real life
    slack = SlackStandin(rate_limit_once=False).start()
    try:
        n = notifier(tmp_path, slack)
        slack.delay_next_answer(2.0)  # posted, but answered after the plugin gave up
        with pytest.raises(ConnectionProblem, match=r"ReadTimeout.*may have been taken"):
            await n.post("#access-requests", pending())
        # Not sent again within the call (it would show twice); the step waits, and
        # docs/plugins.md says when it can show twice.
        assert len(slack.calls) == 1 and len(slack.top_messages()) == 1
        await n.close()
    finally:
        slack.stop()
