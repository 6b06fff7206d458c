"""The Mattermost notifier against the Mattermost stand-in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from certgate.errors import ConnectionProblem
from certgate.plugins.mattermost import MattermostNotifier
from certgate.plugins.notifier import RecipientRefused
from tests.plugins.conftest import config, mattermost_section
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
