"""A plugin killed with `kill -9` and started again repeats nothing it finished and
misses nothing that happened while it was down."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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

ALICE_DM = "D0ALICE001"


@pytest.fixture(scope="module")
def people(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> People:
    return setup_people(cluster, tmp_path_factory.mktemp("people"))


@pytest.fixture
def slack() -> Iterator[SlackStandin]:
    standin = SlackStandin(users={"alice@example.com": "U0ALICE001"}).start()
    yield standin
    standin.stop()


def channel_messages(slack: SlackStandin, rid: str) -> list[Any]:
    return [m for m in slack.top_messages() if m.channel == "C0ACCESS01" and rid in str(m.blocks)]


def slack_config(cluster: Cluster, workdir: Path, slack: SlackStandin, name: str) -> dict[str, Any]:
    return {
        "proxy": cluster.proxy_addr,
        "identity": str(plugin_identity(cluster, workdir, name)),
        "state_file": str(workdir / f"{name}-state.json"),
        "role_to_recipients": {"*": ["#access-requests"]},
        "email_domain": "example.com",
        "slack": {"token": TOKEN, "api_url": slack.api_url},
    }


def test_kill_9_and_restart(
    cluster: Cluster, people: People, workdir: Path, slack: SlackStandin
) -> None:
    config = slack_config(cluster, workdir, slack, "restart-plugin")
    state_file = Path(config["state_file"])
    plugin = PluginProcess("slack", config, workdir).start()
    try:
        # 1. Killed while idle; meanwhile a request is approved and another one made.
        first = create_request(cluster, people.alice, reason="one")["metadata"]["name"]
        [first_msg] = eventually(lambda: channel_messages(slack, first))
        eventually(lambda: first in json.loads(state_file.read_text())["requests"])
        plugin.kill()
        review(cluster, people.bob, first, "approve", "yes")
        review(cluster, people.carol, first, "approve", "yes too")
        second = create_request(cluster, people.alice, reason="two")["metadata"]["name"]
        plugin.start()
        eventually(lambda: first_msg.edits and channel_messages(slack, second))
        eventually(lambda: [m for m in slack.top_messages() if m.channel == ALICE_DM])

        # 2. Killed mid-run: Slack asked it to wait (429, Retry-After) in the middle of
        # a burst of new requests, and it died waiting.
        slack.rate_limit_next(retry_after=30)
        limited = slack.rate_limited
        burst = [
            create_request(cluster, people.alice, reason=f"burst {i}")["metadata"]["name"]
            for i in range(3)
        ]
        eventually(lambda: slack.rate_limited > limited)
        plugin.kill()
        plugin.start()

        # A last request, handled after everything before it: when its message is
        # there, the plugin has caught up, and every count below is final.
        last = create_request(cluster, people.alice, reason="last")["metadata"]["name"]
        eventually(lambda: channel_messages(slack, last), timeout=30)
    finally:
        assert plugin.stop() == 0

    for rid in (first, second, *burst, last):
        assert len(channel_messages(slack, rid)) == 1, rid
    assert [r.text for r in slack.replies(first_msg)] == [
        "bob approved the request: yes",
        "carol approved the request: yes too",
    ]
    assert len(first_msg.edits) == 1 and "✅ APPROVED" in str(first_msg.edits[0]["blocks"])
    told = [m for m in slack.top_messages() if m.channel == ALICE_DM]
    assert len(told) == 1 and first in told[0].text
    assert plugin.text().count("slack plugin ready") == 3


def test_sigterm_waits_for_the_call_in_flight(
    cluster: Cluster, people: People, workdir: Path
) -> None:
    slack = SlackStandin(rate_limit_once=False).start()
    try:
        config = slack_config(cluster, workdir, slack, "term-plugin")
        plugin = PluginProcess("slack", config, workdir).start()
        slack.delay_next_answer(3.0)
        rid = create_request(cluster, people.alice, reason="slow slack")["metadata"]["name"]
        # Slack has the message; the plugin still waits for the answer when told to stop.
        eventually(lambda: channel_messages(slack, rid))
        assert plugin.stop() == 0
        plugin.start()
        last = create_request(cluster, people.alice, reason="after")["metadata"]["name"]
        eventually(lambda: channel_messages(slack, last))
        assert plugin.stop() == 0
    finally:
        slack.stop()
    assert len(channel_messages(slack, rid)) == 1
