"""The proxy must not drop a live node because its own watch lags (at 10,000 nodes a
view can be seconds behind): while the watch is up, a node leaves the view when the
store deletes it, not when the proxy's clock passes the expiry it last saw."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certgate.access.cached_access import EXPIRY_LAG_ALLOWANCE, CachedAccess
from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.clock import FakeClock
from certgate.errors import NotFound
from tests.support.views import StubView

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def view_with(expires: datetime, connected: bool) -> CachedAccess:
    node = Node(
        metadata=Metadata(name="web-1", expires=expires),
        spec=NodeSpec(addr="127.0.0.1:3022", hostname="web-1"),
    )
    view = StubView({"node": {"web-1": node}})
    view.connected = connected
    return CachedAccess(view, clock=FakeClock(NOW))  # type: ignore[arg-type]


def test_a_lagging_view_keeps_a_node_whose_last_expiry_it_saw_has_passed() -> None:
    # Its newer heartbeat is still in the stream; the store has not deleted it.
    access = view_with(NOW - timedelta(seconds=5), connected=True)
    assert access.find_node("web-1").name == "web-1"


def test_a_view_cut_off_from_auth_drops_nodes_at_their_expiry() -> None:
    assert view_with(NOW + timedelta(seconds=1), connected=False).find_node("web-1")
    with pytest.raises(NotFound):
        view_with(NOW - timedelta(seconds=5), connected=False).find_node("web-1")


def test_a_view_far_behind_still_drops_long_expired_nodes() -> None:
    access = view_with(NOW - EXPIRY_LAG_ALLOWANCE - timedelta(seconds=1), connected=True)
    with pytest.raises(NotFound):
        access.find_node("web-1")
