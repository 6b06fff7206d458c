"""Watchers ask auth for fewer keep-alive pings (10,000 node streams pinged every second
were 10,000 writes a second), but always several within the strict-locking grace."""

from __future__ import annotations

import pytest

from certgate.auth.http import _ping_seconds
from certgate.errors import BadParameter
from certgate.rpc.watcher import ping_seconds


def test_a_node_with_the_default_grace_asks_for_a_ping_every_5_seconds() -> None:
    assert ping_seconds(30.0) == 5.0


def test_a_short_grace_still_gets_several_pings_within_it() -> None:
    assert ping_seconds(2.0) == 1.0  # the most auth sends
    assert ping_seconds(12.0) == 2.0
    assert ping_seconds(600.0) == 5.0


def test_auth_pings_every_second_unless_asked_and_refuses_odd_asks() -> None:
    assert _ping_seconds("") == 1.0
    assert _ping_seconds("5") == 5.0
    for asked in ("0", "0.01", "11", "nan", "inf", "soon"):
        with pytest.raises(BadParameter):
            _ping_seconds(asked)
