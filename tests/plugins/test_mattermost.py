"""The Mattermost notifier against the Mattermost stand-in."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

import certgate.plugins.retry as retry_module
from certgate.errors import ConnectionProblem
from certgate.plugins.mattermost import MattermostNotifier
from certgate.plugins.notifier import RecipientRefused
from tests.plugins.conftest import config, mattermost_section, runner
from tests.plugins.requests import pending, review
from tests.support.mattermost_standin import MattermostStandin


def notifier(tmp_path: Path, mm: MattermostStandin, token: str | None = None) -> MattermostNotifier:
    section = mattermost_section(mm) if token is None else mattermost_section(mm, token)
    return MattermostNotifier(config(tmp_path, mattermost=section))


async def test_post_thread_update_and_direct_message(
    tmp_path: Path, mattermost: MattermostStandin
) -> None:
    n = notifier(tmp_path, mattermost)
    request = pending(roles=("dba",))
    assert n.recipients(request) == ["eng/access-requests", "bob@example.com"]
    posted = await n.post("eng/access-requests", request)
    assert mattermost.rate_limited == 1  # one 429, retried after Retry-After
    [post] = mattermost.top_posts()
    assert posted.ref == {
        "channel_id": mattermost.channels["eng/access-requests"],
        "post_id": post.id,
    }
    for shown in (
        f"**Access request** `{request.id}`",
        "| User | alice |",
        "| Requested | roles dba and node/db-1 |",
        "| Reason | incident 42 |",
        "| Duration | 4h |",
        "| Access until | 2026-11-30 13:00 UTC |",
        "| Status | ⏳ PENDING |",
        f"[Review it in certgate](https://proxy.example.com:3080/web/requests/{request.id})",
        f"`cgctl requests approve {request.id}`",
    ):
        assert shown in post.message, shown

    reviewed = replace(request, reviews=(review("bob", "deny", "not now"),))
    await n.reply("eng/access-requests", posted.ref, reviewed, 0)
    [reply] = mattermost.replies(post)
    assert reply.message == "bob denied the request: not now"
    assert reply.channel_id == post.channel_id

    denied = replace(reviewed, state="DENIED")
    await n.update("eng/access-requests", posted.ref, denied)
    assert len(post.edits) == 1 and "| Status | ❌ DENIED |" in post.message

    await n.tell_requester(denied)
    direct = mattermost.direct_with("alice@example.com")
    assert direct is not None
    [dm] = [p for p in mattermost.posts if p.channel_id == direct]
    assert dm.message == f"Your access request {request.id} for roles dba and node/db-1 was denied."
    await n.close()


async def test_refusals(tmp_path: Path, mattermost: MattermostStandin) -> None:
    n = notifier(tmp_path, mattermost)
    with pytest.raises(RecipientRefused, match="Channel not found"):
        await n.post("eng/nowhere", pending())
    with pytest.raises(RecipientRefused, match="use team/channel"):
        await n.post("nowhere", pending())
    with pytest.raises(RecipientRefused, match="Unable to find the user"):
        await n.post("carol@example.com", pending())
    await n.close()
    wrong = notifier(tmp_path, mattermost, token="wrong-token-0123456789")
    with pytest.raises(ConnectionProblem, match="401"):
        await wrong.post("eng/access-requests", pending())
    await wrong.close()


REASON = (
    "@channel urgent ![x](https://evil.example/p.png) "
    "[Review it in certgate](https://evil.example/login) <b>*bold*</b> `code` ~town &amp; #tag"
)


def _as_read(markdown: str) -> str:
    """What a reader sees of escaped text: the escapes and word joiners gone."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def _markup(message: str, request_id: str) -> list[str]:
    """Markdown in `message` besides the plugin's own (title, id, link, command, time)."""
    for own in (
        "**Access request**",
        f"`{request_id}`",
        f"[Review it in certgate](https://proxy.example.com:3080/web/requests/{request_id})",
        f"`cgctl requests approve {request_id}`",
    ):
        message = message.replace(own, "")
    message = re.sub(r"^_pending until .*_$", "", message, flags=re.M)
    return re.findall(r"(?<!\\)[\[\]()!<>`*_~#&]|@[a-z]", message)


async def test_words_of_requesters_and_reviewers_show_as_words(
    tmp_path: Path, mattermost: MattermostStandin
) -> None:
    n = notifier(tmp_path, mattermost)
    request = pending(roles=("dba",), reason=REASON + "\n# heading\n| a | b |")
    posted = await n.post("eng/access-requests", request)
    reviewed = replace(request, reviews=(review("bob", "deny", REASON),))
    await n.reply("eng/access-requests", posted.ref, reviewed, 0)
    denied = replace(reviewed, state="DENIED", resolve_reason=f"denied by bob (bob: {REASON})")
    await n.update("eng/access-requests", posted.ref, denied)
    await n.tell_requester(denied)
    [post] = [p for p in mattermost.top_posts() if p.id == posted.ref["post_id"]]
    [reply] = mattermost.replies(post)
    direct = mattermost.direct_with("alice@example.com")
    [dm] = [p for p in mattermost.posts if p.channel_id == direct]
    for message in (post.message, reply.message, dm.message):
        # No mention, link, image, HTML, code span or emphasis but the plugin's own.
        assert _markup(message, request.id) == [], message
    # Each reads as what was typed, on one line.
    assert f"| Reason | {REASON} # heading | a | b | |" in _as_read(post.message)
    assert f"| Status | ❌ DENIED: denied by bob (bob: {REASON}) |" in _as_read(post.message)
    assert _as_read(reply.message) == f"bob denied the request: {REASON}"
    assert _as_read(dm.message).endswith(f"was denied by bob (bob: {REASON}).")
    await n.close()


async def test_a_channel_the_bot_may_not_post_in_does_not_hold_up_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mm = MattermostStandin(not_member=("eng/private",), rate_limit_once=False).start()
    try:
        c = config(
            tmp_path,
            mattermost=mattermost_section(mm),
            role_to_recipients={"*": ["eng/private", "eng/access-requests"]},
        )
        request = pending(suggested_reviewers=())
        async with runner(c, MattermostNotifier) as loop:
            await loop._handle(request.id, request)  # not ConnectionProblem, for ever
            reviewed = replace(request, reviews=(review(),))
            await loop._handle(request.id, reviewed)
        [post] = mm.top_posts()
        assert post.channel_id == mm.channels["eng/access-requests"]
        assert [r.message for r in mm.replies(post)] == ["bob approved the request: ok"]
        private = mm.channels["eng/private"]
        tried = [
            x for x in mm.calls if x.method == "POST /posts" and x.body["channel_id"] == private
        ]
        assert [x.status for x in tried] == [403]  # once, and never again
        refused = [r for r in caplog.records if r.levelno == logging.WARNING and "403" in r.message]
        assert len(refused) == 1 and "add the bot to the channel" in refused[0].message
    finally:
        mm.stop()


async def test_a_post_whose_answer_was_lost_is_found_not_posted_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retry_module, "TIMEOUT", httpx.Timeout(0.5))  # 10 s in real life
    mm = MattermostStandin(rate_limit_once=False).start()
    try:
        c = config(
            tmp_path,
            mattermost=mattermost_section(mm),
            role_to_recipients={"*": ["eng/access-requests"]},
        )
        request = pending(suggested_reviewers=())
        async with runner(c, MattermostNotifier) as loop:
            mm.delay_next_post(2.0)  # saved, but answered after the plugin gave up
            with pytest.raises(ConnectionProblem, match="may have been taken"):
                await loop._handle(request.id, request)
            await loop._handle(request.id, request)  # the loop tries the step again
            await loop._handle(request.id, replace(request, reviews=(review(),)))
        [post] = mm.top_posts()
        # Found, and recorded: the review went into its thread.
        assert [r.message for r in mm.replies(post)] == ["bob approved the request: ok"]
        assert [x.status for x in mm.calls if x.method == "POST /posts"] == [201, 201]
        assert [x.method for x in mm.calls if x.method.startswith("GET /channels/")] == [
            f"GET /channels/{post.channel_id}/posts"
        ]
    finally:
        mm.stop()
