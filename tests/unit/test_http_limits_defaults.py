"""The connection defaults fit 10,000 nodes on one auth without tuning.

Every node holds a watch stream and a keep-alive connection on auth. The old default,
1,000 connections per listener, turned away every node past about 450; and httpx's
5 s keep-alive made every 10 s heartbeat a new mTLS handshake, auth's dearest work.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from certgate.daemon.config import SAMPLE, Config, HTTPLimits
from certgate.rpc.auth_client import KEEPALIVE_EXPIRY

NODES = 10_000


def test_the_default_connection_cap_fits_ten_thousand_nodes() -> None:
    assert HTTPLimits().max_connections >= 2 * NODES + 1000  # watch + keep-alive, proxies


def test_a_node_keeps_its_connection_from_one_heartbeat_to_the_next() -> None:
    heartbeat = Config().ssh_service.heartbeat_interval.total_seconds()
    idle = HTTPLimits().idle_timeout.total_seconds()
    # The node keeps the connection past its next beat (large fleets beat every 30 s),
    # and closes it before auth would, so auth never closes one a request is on.
    assert heartbeat < 30 < KEEPALIVE_EXPIRY < idle


def test_the_printed_config_says_the_same_defaults() -> None:
    assert f"max_connections: {HTTPLimits().max_connections}" in SAMPLE
    assert f"idle_timeout: {int(HTTPLimits().idle_timeout.total_seconds())}s" in SAMPLE
    assert f"handshakes_at_once: {HTTPLimits().handshakes_at_once}" in SAMPLE


def test_handshakes_at_once_is_set_in_http_limits() -> None:
    # The listener takes its handshake slots from here (tests/daemon/test_handshake_slots.py).
    limits = Config.model_validate({"http_limits": {"handshakes_at_once": 8}}).http_limits
    assert limits.handshakes_at_once == 8
    with pytest.raises(ValidationError):
        Config.model_validate({"http_limits": {"handshakes_at_once": 0}})
