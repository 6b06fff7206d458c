"""Plugin configs pointing at stand-ins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from certgate.plugins.base import PluginRunner
from certgate.plugins.config import PluginConfig
from certgate.plugins.notifier import Notifier
from certgate.plugins.state import StateFile
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.transport import client_context
from tests.support.mattermost_standin import TOKEN as MM_TOKEN
from tests.support.mattermost_standin import MattermostStandin
from tests.support.slack_standin import TOKEN as SLACK_TOKEN
from tests.support.slack_standin import SlackStandin

EMAILS = {"alice@example.com": "U0ALICE001", "bob@example.com": "U0BOB00001"}


@pytest.fixture
def slack() -> Iterator[SlackStandin]:
    standin = SlackStandin(users=dict(EMAILS)).start()
    yield standin
    standin.stop()


@pytest.fixture
def mattermost() -> Iterator[MattermostStandin]:
    standin = MattermostStandin(
        users={"alice@example.com": "alice0000000000000000000000"[:26], "bob@example.com": "b" * 26}
    ).start()
    yield standin
    standin.stop()


def config(tmp_path: Path, **sections: object) -> PluginConfig:
    return PluginConfig.model_validate(
        {
            "proxy": "proxy.example.com:3080",
            "identity": str(tmp_path / "identity"),
            "state_file": str(tmp_path / "state.json"),
            "role_to_recipients": {"*": ["#access-requests"], "dba": ["eng/access-requests"]},
            "email_domain": "example.com",
            **sections,
        }
    )


def slack_section(standin: SlackStandin, token: str = SLACK_TOKEN) -> dict[str, str]:
    return {"token": token, "api_url": standin.api_url}


def mattermost_section(standin: MattermostStandin, token: str = MM_TOKEN) -> dict[str, str]:
    return {"token": token, "url": standin.url}


@asynccontextmanager
async def runner(
    config: PluginConfig, make: Callable[[PluginConfig], Notifier]
) -> AsyncIterator[PluginRunner]:
    """The plugin loop around a real notifier, fed requests by the test (`_handle`)
    instead of a watch: no cluster needed."""
    notifier = make(config)
    auth = AsyncAuthClient("https://127.0.0.1:9", client_context(insecure=True))
    try:
        yield PluginRunner("test", config, notifier, StateFile(config.state_file), auth)
    finally:
        await notifier.close()
        await auth.close()
