"""An admin runs the Mattermost plugin: the same story as Slack, through API v4."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.live import PluginProcess, create_request, plugin_identity, review, setup_people
from tests.support.cluster import Cluster
from tests.support.mattermost_standin import BOT_ID, TOKEN, MattermostStandin
from tests.support.wait import eventually

USERS = {"alice@example.com": "a" * 26, "bob@example.com": "b" * 26, "carol@example.com": "c" * 26}


@pytest.fixture
def mattermost() -> Iterator[MattermostStandin]:
    standin = MattermostStandin(users=dict(USERS)).start()
    yield standin
    standin.stop()


def test_request_thread_update_and_direct_message(
    cluster: Cluster, workdir: Path, mattermost: MattermostStandin
) -> None:
    people = setup_people(cluster, workdir)
    config = {
        "proxy": cluster.proxy_addr,
        "identity": str(plugin_identity(cluster, workdir, "mm-plugin")),
        "state_file": str(workdir / "mm-state.json"),
        "role_to_recipients": {"*": ["eng/access-requests"]},
        "emails": {"alice": "alice@example.com", "bob": "bob@example.com"},
        "mattermost": {"url": mattermost.url, "token": TOKEN},
    }
    plugin = PluginProcess("mattermost", config, workdir).start()
    try:
        rid = create_request(cluster, people.alice, reason="on call", reviewers=["bob"])[
            "metadata"
        ]["name"]
        posts = eventually(lambda: _two([p for p in mattermost.top_posts() if rid in p.message]))
        channel_post, bob_post = sorted(
            posts, key=lambda p: p.channel_id != mattermost.channels["eng/access-requests"]
        )
        assert channel_post.channel_id == mattermost.channels["eng/access-requests"]
        assert bob_post.channel_id == mattermost.direct_with("bob@example.com")
        assert mattermost.rate_limited == 1
        direct = [c for c in mattermost.calls if c.method == "POST /channels/direct"]
        assert direct[0].body == [BOT_ID, USERS["bob@example.com"]]
        for shown in (
            f"**Access request** `{rid}`",
            "| User | alice |",
            "| Reason | on call |",
            "| Duration | 4h |",
            "| Status | ⏳ PENDING |",
            f"(https://{cluster.proxy_addr}/web/requests/{rid})",
            f"`cgctl requests approve {rid}`",
        ):
            assert shown in channel_post.message, shown

        review(cluster, people.bob, rid, "approve", "fine")
        review(cluster, people.carol, rid, "approve", "me too")
        eventually(lambda: channel_post.edits and bob_post.edits)
        for post in (channel_post, bob_post):
            assert [r.message for r in mattermost.replies(post)] == [
                "bob approved the request: fine",
                "carol approved the request: me too",
            ]
            assert "| Status | ✅ APPROVED" in post.message
        alice_dm = eventually(lambda: mattermost.direct_with("alice@example.com"))
        [told] = eventually(lambda: [p for p in mattermost.posts if p.channel_id == alice_dm])
        assert told.message.startswith(
            f"Your access request {rid} for roles kube-admin was approved"
        )
        for call in mattermost.calls:
            assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    finally:
        assert plugin.stop() == 0


def _two(items: list[object]) -> list[object] | None:
    return items if len(items) == 2 else None
