"""The session monitor's rules, with a fake clock: which clients it cuts, when, and
with which one-line message. The servers that use it are tested with real clients in
tests/node/test_session_monitor.py and tests/proxy/test_agentless.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from certgate.access.cached_access import CachedAccess
from certgate.api.identity import Identity
from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.api.role import Role, RoleConditions, RoleOptions, RoleSpec
from certgate.clock import FakeClock
from certgate.srv.live import LiveClient
from certgate.srv.monitor import SessionMonitor
from certgate.srv.registry import SessionRegistry
from certgate.srv.session import SessionPolicy
from tests.support.views import StubView
from tests.support.wait import eventually_async


class Ticks:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _role(name: str, **options: Any) -> Role:
    return Role(
        metadata=Metadata(name=name),
        spec=RoleSpec(
            allow=RoleConditions(logins=["ops"], node_labels={"*": "*"}),
            options=RoleOptions(**options),
        ),
    )


class Harness:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.ticks = Ticks()
        self.view = StubView(
            {
                "role": {"dev": _role("dev"), "strict": _role("strict", locking_mode="strict")},
                "lock": {},
            }
        )
        self.access = CachedAccess(self.view, clock=self.clock, strict_grace=30)  # type: ignore[arg-type]
        self.registry = SessionRegistry()
        self.monitor = SessionMonitor(self.registry, self.access, server="node", clock=self.clock)
        self.hung_up: list[str] = []

    def client(
        self, user: str, roles: tuple[str, ...] = ("dev",), policy: SessionPolicy | None = None
    ) -> LiveClient:
        events: list[tuple[str, dict[str, Any]]] = []

        async def close() -> None:
            self.hung_up.append(user)

        client = LiveClient(
            identity=Identity(
                username=user, roles=roles, logins=("ops",), expires=self.clock.now()
            ),
            login="ops",
            target="node-1",
            client_addr="127.0.0.1:1",
            policy=policy or SessionPolicy(),
            audit=lambda event, fields: events.append((event, fields)),
            close=close,
            monotonic=self.ticks,
        )
        self.registry.add_client(client)
        return client

    def lock(self, name: str, **target: str) -> Lock:
        lock = Lock(
            metadata=Metadata(name=name),
            spec=LockSpec(target=LockTarget(**target), message="go away"),
        )
        self.view.items["lock"][name] = lock
        return lock


@pytest.fixture
def h() -> Harness:
    return Harness()


async def test_a_lock_put_cuts_the_clients_it_targets_and_no_others(h: Harness) -> None:
    alice, bob = h.client("alice"), h.client("bob")
    lock = h.lock("l1", user="alice")
    assert h.monitor.decide(alice, stale=False) is not None
    assert h.monitor.decide(bob, stale=False) is None
    await h.monitor.check()
    assert h.hung_up == ["alice"]
    assert alice.cut_reason == "locked" and bob.cut_reason is None
    cut = h.monitor.decide(alice, stale=False)
    assert cut is not None and cut.message == "access denied: locked: go away"
    assert cut.audit_fields == {"lock": lock.name}


async def test_a_lock_on_the_node_cuts_everyone_there(h: Harness) -> None:
    h.client("alice")
    h.client("bob")
    h.lock("n1", node="node-1")
    await h.monitor.check()
    assert sorted(h.hung_up) == ["alice", "bob"]


async def test_a_stale_view_cuts_strict_roles_only(h: Harness) -> None:
    strict = h.client("sam", roles=("strict",))
    relaxed = h.client("rita")
    assert h.monitor.decide(strict, stale=False) is None  # fresh: nothing to do
    h.view.silence = 31
    cut = h.monitor.decide(strict, stale=True)
    assert cut is not None
    assert cut.message == (
        "access denied: locked: this node cannot confirm locks with auth, "
        "and your roles require it (locking_mode: strict)"
    )
    assert h.monitor.decide(relaxed, stale=True) is None
    await h.monitor.check()
    assert h.hung_up == ["sam"]


async def test_idle_time_counts_from_the_last_input(h: Harness) -> None:
    client = h.client("ida", policy=SessionPolicy(idle_timeout=3.0))
    h.ticks.now += 2.9
    assert h.monitor.decide(client, stale=False) is None
    client.touch()  # a keystroke
    h.ticks.now += 2.9
    assert h.monitor.decide(client, stale=False) is None
    h.ticks.now += 0.1
    cut = h.monitor.decide(client, stale=False)
    assert cut is not None and cut.reason == "idle timeout"
    assert cut.message == (
        "certgate: session ended: no input for 3s (client_idle_timeout of your roles)"
    )


async def test_an_expired_certificate_cuts_only_when_the_roles_say_so(h: Harness) -> None:
    expires = h.clock.now() + timedelta(minutes=1)
    watched = h.client("exa", policy=SessionPolicy(expires=expires))
    unwatched = h.client("una")
    h.clock.advance(timedelta(seconds=59))
    assert h.monitor.decide(watched, stale=False) is None
    h.clock.advance(timedelta(seconds=1))
    cut = h.monitor.decide(watched, stale=False)
    assert cut is not None and cut.reason == "certificate expired"
    assert "your certificate expired at" in cut.message and "log in again" in cut.message
    assert "\n" not in cut.message
    assert h.monitor.decide(unwatched, stale=False) is None
    await h.monitor.check()
    assert h.hung_up == ["exa"]


async def test_a_cut_client_is_cut_once(h: Harness) -> None:
    h.client("alice")
    h.lock("l1", user="alice")
    await h.monitor.check()
    await h.monitor.check()
    assert h.hung_up == ["alice"]


async def test_a_lock_put_cuts_in_the_callback_and_hangs_up_off_the_watch_loop(
    h: Harness,
) -> None:
    alice, bob = h.client("alice"), h.client("bob")
    release = asyncio.Event()

    async def slow_close() -> None:  # a client slow to take its last words
        await release.wait()
        h.hung_up.append("alice")

    alice._close = slow_close
    first = h.lock("l1", user="alice")
    await h.monitor.on_change("role", "dev", None)  # not a lock: nothing
    assert alice.cut_reason is None
    await h.monitor.on_change("lock", "l1", first)
    assert alice.cut_reason == "locked"  # cut before the callback returned
    assert h.hung_up == []  # its hang-up waits, but not in the watch loop
    # A second lock is not held up behind the first one's hang-ups.
    second = h.lock("l2", user="bob")
    await h.monitor.on_change("lock", "l2", second)
    assert bob.cut_reason == "locked"
    await eventually_async(lambda: h.hung_up == ["bob"])
    release.set()
    await eventually_async(lambda: sorted(h.hung_up) == ["alice", "bob"])
    await h.monitor.close()


async def test_ticks_between_lock_rechecks_leave_locks_out(h: Harness) -> None:
    alice = h.client("alice", policy=SessionPolicy(idle_timeout=1.0))
    h.lock("l1", user="alice")
    assert h.monitor.decide(alice, stale=False, locks=True) is not None
    h.ticks.now += 0.5
    assert h.monitor.decide(alice, stale=False, locks=False) is None
    h.ticks.now += 0.5
    cut = h.monitor.decide(alice, stale=False, locks=False)
    assert cut is not None and cut.reason == "idle timeout"


async def test_a_new_client_is_matched_against_locks_at_its_first_tick(h: Harness) -> None:
    # A lock that reached the view while the client's login was being decided.
    h.lock("l1", user="late")
    h.client("late")
    h.client("early")
    await h.monitor.check(locks=False)
    assert h.hung_up == ["late"]
    # Later ticks leave locks to lock puts: an old client is not matched again.
    h.lock("l2", user="early")
    await h.monitor.check(locks=False)
    assert h.hung_up == ["late"]
    await h.monitor.check(locks=True)
    assert h.hung_up == ["late", "early"]


async def test_every_cut_is_made_before_any_hang_up_is_waited_for(h: Harness) -> None:
    """A lock and an idle timeout in one check: both clients are cut at once, though
    neither hang-up (a wait for the client to take its last words) has finished."""
    release = asyncio.Event()

    async def slow_close() -> None:
        await release.wait()

    alice = h.client("alice")
    bob = h.client("bob", policy=SessionPolicy(idle_timeout=60))
    alice._close = bob._close = slow_close
    h.ticks.now += 61
    h.lock("l1", user="alice")
    check = asyncio.create_task(h.monitor.check())
    await eventually_async(lambda: alice.cut_reason is not None and bob.cut_reason is not None)
    assert (alice.cut_reason, bob.cut_reason) == ("locked", "idle timeout")
    assert not check.done()  # the hang-ups still wait
    release.set()
    assert await check == 0  # neither had a live session
