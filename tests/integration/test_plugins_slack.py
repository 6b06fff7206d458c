"""An admin runs the Slack plugin: a workspace hears of every access request, its
reviews and its outcome, as a real Slack workspace would receive them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from certgate.rpc.identity_files import IdentityFiles
from tests.plugins.live import (
    People,
    PluginProcess,
    create_request,
    plugin_identity,
    review,
    setup_people,
)
from tests.support.cluster import Cluster
from tests.support.slack_standin import TOKEN, SlackStandin
from tests.support.wait import eventually

EMAILS = {
    "alice@example.com": "U0ALICE001",
    "bob@example.com": "U0BOB00001",
    "carol@example.com": "U0CAROL001",
    "ceo@othercorp.com": "U0OUTSIDER",  # in the workspace, but no certgate user
}


@pytest.fixture(scope="module")
def people(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> People:
    return setup_people(cluster, tmp_path_factory.mktemp("people"))


@pytest.fixture
def slack() -> Iterator[SlackStandin]:
    standin = SlackStandin(users=dict(EMAILS)).start()
    yield standin
    standin.stop()


def slack_config(cluster: Cluster, workdir: Path, slack: SlackStandin, name: str) -> dict[str, Any]:
    return {
        "proxy": cluster.proxy_addr,
        "identity": str(plugin_identity(cluster, workdir, name)),
        "state_file": str(workdir / f"{name}-state.json"),
        "role_to_recipients": {"*": ["#access-requests"]},
        "email_domain": "example.com",
        "slack": {"token": TOKEN, "api_url": slack.api_url},
    }


def messages_for(slack: SlackStandin, rid: str) -> list[Any]:
    return [m for m in slack.top_messages() if rid in str(m.blocks)]


def test_request_reviews_and_approval_reach_slack(
    cluster: Cluster, people: People, slack: SlackStandin, workdir: Path
) -> None:
    plugin = PluginProcess("slack", slack_config(cluster, workdir, slack, "slack-a"), workdir)
    plugin.start()
    try:
        request = create_request(cluster, people.alice, reason="incident 42", reviewers=["bob"])
        rid = request["metadata"]["name"]
        # One message in the channel, one to the suggested reviewer (bob, by email).
        channel_msg, bob_msg = eventually(lambda: _two(messages_for(slack, rid)))
        assert {channel_msg.channel, bob_msg.channel} == {"C0ACCESS01", "D0BOB00001"}
        assert slack.rate_limited == 1  # the stand-in's one 429 was waited out, not lost
        [first] = [c for c in slack.ok_calls("chat.postMessage") if rid in str(c.body)][:1]
        assert first.headers["Authorization"] == f"Bearer {TOKEN}"
        assert first.body["channel"] in ("#access-requests", "D0BOB00001", "U0BOB00001")
        blocks = str(channel_msg.blocks)
        assert channel_msg.text == "alice requests roles kube-admin: ⏳ PENDING"
        for shown in (
            f"`{rid}`",
            "*User*\\nalice",
            "*Reason*\\nincident 42",
            "*Duration*\\n4h",
            "*Access until*",
            f"<https://{cluster.proxy_addr}/web/requests/{rid}|Review it in certgate>",
            f"`cgctl requests approve {rid}`",
        ):
            assert shown in blocks, shown

        review(cluster, people.bob, rid, "approve", "looks right")
        eventually(lambda: all(len(slack.replies(m)) == 1 for m in (channel_msg, bob_msg)))
        assert slack.replies(channel_msg)[0].text == "bob approved the request: looks right"
        # One approval of two: nothing resolved, nothing edited yet.
        assert channel_msg.edits == [] and bob_msg.edits == []

        review(cluster, people.carol, rid, "approve", "")
        eventually(lambda: channel_msg.edits and bob_msg.edits)
        assert [r.text for r in slack.replies(channel_msg)] == [
            "bob approved the request: looks right",
            "carol approved the request",
        ]
        [edit] = channel_msg.edits
        # chat.update names the channel by the id Slack answered with, never its name.
        assert edit["channel"] == "C0ACCESS01" and edit["ts"] == channel_msg.ts
        assert "✅ APPROVED" in str(edit["blocks"])
        dm = eventually(lambda: _dm(slack, "D0ALICE001"))
        assert dm.text.startswith(
            f"Your access request {rid} for roles kube-admin was approved by bob, carol "
            "(bob: looks right). You have access until "
        )
        assert f"cgsh login --request-id={rid}" in dm.text
    finally:
        assert plugin.stop() == 0


def test_denial_and_expiry_edit_the_message(
    cluster: Cluster, people: People, slack: SlackStandin, workdir: Path
) -> None:
    plugin = PluginProcess("slack", slack_config(cluster, workdir, slack, "slack-b"), workdir)
    plugin.start()
    try:
        denied = create_request(cluster, people.alice, reason="try")["metadata"]["name"]
        expiring = create_request(cluster, people.alice, request_ttl="2s")["metadata"]["name"]
        [denied_msg] = eventually(lambda: messages_for(slack, denied))
        [expiring_msg] = eventually(lambda: messages_for(slack, expiring))
        review(cluster, people.bob, denied, "deny", "not during the freeze")
        eventually(lambda: denied_msg.edits)
        assert "❌ DENIED" in str(denied_msg.edits[-1]["blocks"])
        assert [r.text for r in slack.replies(denied_msg)] == [
            "bob denied the request: not during the freeze"
        ]
        eventually(lambda: expiring_msg.edits, timeout=20)
        assert "⌛ EXPIRED" in str(expiring_msg.edits[-1]["blocks"])
        # An administrator's decision on the auth host, with cgctl: the same story.
        decided = create_request(cluster, people.alice)["metadata"]["name"]
        [decided_msg] = eventually(lambda: messages_for(slack, decided))
        cluster.cgctl("requests", "approve", decided, "--reason=break glass")
        eventually(lambda: decided_msg.edits)
        assert "✅ APPROVED" in str(decided_msg.edits[-1]["blocks"])
        [reply] = slack.replies(decided_msg)
        assert reply.text.endswith("approved the request: break glass")
        outcomes = eventually(
            lambda: _three([m for m in slack.top_messages() if m.channel == "D0ALICE001"])
        )
        texts = sorted(m.text for m in outcomes)
        assert any(f"{denied} for roles kube-admin was denied" in t for t in texts)
        assert any(
            f"{expiring} for roles kube-admin expired: nobody resolved it" in t for t in texts
        )
        assert any(f"{decided} for roles kube-admin was approved by" in t for t in texts)
    finally:
        assert plugin.stop() == 0


def _two(items: list[Any]) -> list[Any] | None:
    return items if len(items) == 2 else None


def _three(items: list[Any]) -> list[Any] | None:
    return items if len(items) == 3 else None


def _dm(slack: SlackStandin, channel: str) -> Any:
    found = [m for m in slack.top_messages() if m.channel == channel]
    return found[-1] if found else None


def test_a_first_start_announces_pending_requests_not_history(
    cluster: Cluster, people: People, slack: SlackStandin, workdir: Path
) -> None:
    pending = create_request(cluster, people.alice, reason="still open")["metadata"]["name"]
    history = create_request(cluster, people.alice, reason="old news")["metadata"]["name"]
    review(cluster, people.bob, history, "deny", "no")
    plugin = PluginProcess("slack", slack_config(cluster, workdir, slack, "slack-c"), workdir)
    plugin.start()
    try:
        eventually(lambda: messages_for(slack, pending))
        later = create_request(cluster, people.alice, reason="later")["metadata"]["name"]
        eventually(lambda: messages_for(slack, later))
    finally:
        assert plugin.stop() == 0
    # Handled in order: the later request's message means the snapshot was all handled.
    assert messages_for(slack, history) == []
    assert not any(history in m.text for m in slack.top_messages())


def test_a_requester_cannot_make_the_plugin_message_outsiders(
    cluster: Cluster, people: People, slack: SlackStandin, workdir: Path
) -> None:
    plugin = PluginProcess("slack", slack_config(cluster, workdir, slack, "slack-d"), workdir)
    plugin.start()
    try:
        # `cgsh request create --reviewers=ceo@othercorp.com,...`, straight at the API.
        identity = IdentityFiles.load(people.alice.home / "keys")
        with httpx.Client(verify=identity.tls_context(insecure=True)) as http:
            url = f"https://{cluster.proxy_addr}/v1/api/access_requests"
            for reviewers, said in (
                (["bob", "ceo@othercorp.com"], '"ceo@othercorp.com" is not a certgate user'),
                ([f"person{i}" for i in range(256)], "at most 10 suggested reviewers"),
            ):
                answer = http.post(url, json={"roles": ["kube-admin"], "reviewers": reviewers})
                assert answer.status_code == 400, answer.text
                assert said in answer.json()["message"] and "\n" not in answer.json()["message"]
        # A reviewer who is a certgate user still gets a direct message.
        rid = create_request(cluster, people.alice, reason="outsiders", reviewers=["carol"])[
            "metadata"
        ]["name"]
        eventually(lambda: _two(messages_for(slack, rid)))
        assert {m.channel for m in messages_for(slack, rid)} == {"C0ACCESS01", "D0CAROL001"}
    finally:
        assert plugin.stop() == 0
    lookups = [c.body["email"] for c in slack.calls if c.method == "users.lookupByEmail"]
    assert "ceo@othercorp.com" not in lookups
    assert not any(m.channel == "D0OUTSIDER" for m in slack.top_messages())
