"""A resource whose expiry has passed is refused, not stored: in the store it would be
gone at once, and a lock made that way (`cgctl create -f` of a lock, or any client of
the API) would be reported made while locking nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.errors import BadParameter
from tests.support.auth_server import started_auth_server


async def test_a_lock_that_has_expired_already_is_refused(tmp_path: Path) -> None:
    async with started_auth_server(tmp_path) as server:
        lock = Lock(
            metadata=Metadata(name="late", expires=datetime(2000, 1, 1, tzinfo=UTC)),
            spec=LockSpec(target=LockTarget(user="mallory")),
        )
        with pytest.raises(BadParameter, match=r'lock "late" expires 2000-01-01.* has passed'):
            await server.put_resources([lock], "admin", False)
        assert await server.locks.list() == []
