"""Session-wide servers the tests share: PostgreSQL and an S3-compatible store, each
started on first use and stopped when the session ends.

In-process async tests run on the event loop the daemon would pick for
CERTGATE_EVENT_LOOP (certgate/daemon/event_loop.py) when it is set, so the servers the
tests build in-process can be checked on uvloop as well as on asyncio's own loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

import pytest

from certgate.daemon.event_loop import EVENT_LOOP_ENV, chosen_event_loop, loop_factory

pytest_plugins = ["tests.support.postgres", "tests.support.s3"]


if os.environ.get(EVENT_LOOP_ENV):
    # Only then: pytest-asyncio's own default stays untouched otherwise.

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        name = chosen_event_loop()
        return {name: loop_factory(name) or asyncio.new_event_loop}
