"""The access request lifecycle in a real auth server on a real SQLite store: reviews,
thresholds, compare-and-swap under concurrent reviewers, expiry, and certificates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certgate.api.certs import generate_private_key, identity_from_ssh_cert, public_key_openssh
from certgate.api.codec import from_dict
from certgate.api.identity import SYSTEM_ADMIN, Identity
from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.auth.permissions import Authorizer
from certgate.auth.server import AuthServer
from certgate.clock import SystemClock
from certgate.errors import AccessDenied, AlreadyExists, BadParameter, NotFound
from tests.support.auth_server import started_auth_server
from tests.support.wait import eventually_async

ROLES: list[dict[str, Any]] = [
    {
        "kind": "role",
        "metadata": {"name": "contractor"},
        "spec": {
            "allow": {
                "request": {
                    "roles": ["db-admin", "two-man", "event-reader"],
                    "search_as_roles": ["db-search"],
                    "max_duration": "2h",
                    "suggested_reviewers": ["alice"],
                },
            }
        },
    },
    {
        "kind": "role",
        "metadata": {"name": "picky"},
        "spec": {
            "allow": {"request": {"roles": ["two-man"], "thresholds": [{"approve": 2}]}},
        },
    },
    {
        "kind": "role",
        "metadata": {"name": "db-admin"},
        "spec": {"allow": {"logins": ["dba"], "node_labels": {"env": "prod"}}},
    },
    {
        "kind": "role",
        "metadata": {"name": "event-reader"},
        "spec": {"allow": {"rules": [{"resources": ["event"], "verbs": ["list"]}]}},
    },
    {
        "kind": "role",
        "metadata": {"name": "two-man"},
        "spec": {"allow": {"logins": ["root2"], "node_labels": {"*": "*"}}},
    },
    {
        "kind": "role",
        "metadata": {"name": "db-search"},
        "spec": {"allow": {"logins": ["reader"], "node_labels": {"env": "prod"}}},
    },
    {
        "kind": "role",
        "metadata": {"name": "reviewer"},
        "spec": {"allow": {"review_requests": {"roles": ["db-*", "two-man", "event-*"]}}},
    },
    {
        "kind": "role",
        "metadata": {"name": "kube-reviewer"},
        "spec": {"allow": {"review_requests": {"roles": ["kube-member"]}}},
    },
]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AuthServer]:
    async with started_auth_server(tmp_path) as auth:
        for role in ROLES:
            await auth.put_resource(from_dict(role), "admin", upsert=False)
        await auth.add_user("carl", ["contractor"], {}, "admin")
        await auth.add_user("pete", ["contractor", "picky"], {}, "admin")
        for name in ("alice", "bob", *(f"r{i}" for i in range(8))):
            await auth.add_user(name, ["reviewer"], {}, "admin")
        await auth.add_user("kim", ["kube-reviewer"], {}, "admin")
        yield auth


def user(name: str) -> Identity:
    return Identity(username=name, kind="user", expires=SystemClock().now() + timedelta(hours=8))


ADMIN = Identity(username="admin", roles=(SYSTEM_ADMIN,), kind="service")


async def request(server: AuthServer, who: str = "carl", **kw: Any) -> Any:
    args: dict[str, Any] = {
        "roles": ["db-admin"],
        "resources": [],
        "reason": "migration",
        "reviewers": [],
        "max_duration": None,
        "pending_ttl": None,
        **kw,
    }
    created, _ = await server.create_request(user(who), **args)
    return created


def events(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "log" / "events.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


async def test_one_approval_resolves_and_the_certificate_carries_the_grant(
    server: AuthServer, tmp_path: Path
) -> None:
    created = await request(server)
    assert created.state == "PENDING" and created.spec.suggested_reviewers == ["alice"]
    # Reviewers see what the grant would last: the roles' 2h, nothing shorter asked.
    assert created.spec.max_duration == timedelta(hours=2)
    approved = await server.review_request(user("alice"), created.name[:8], "approve", "ok")
    assert approved.state == "APPROVED"
    assert approved.spec.resolve_reason == "approved by alice (alice: ok)"
    # The roles' max_duration (2h) caps access when the request asks for nothing shorter.
    left = approved.spec.access_expires - SystemClock().now()
    assert timedelta(hours=1, minutes=59) < left <= timedelta(hours=2)

    key = public_key_openssh(generate_private_key())
    bundle = await server.assume_requests(user("carl"), key, [created.name], None)
    cert = identity_from_ssh_cert(bundle.ssh_cert)
    assert cert.roles == ("contractor", "db-admin")
    assert cert.request_ids == (created.name,)
    assert cert.logins == ("dba",)
    assert abs((cert.expires - approved.spec.access_expires).total_seconds()) < 1

    [create] = events(tmp_path, "access_request.create")
    assert create["id"] == created.name and create["reason"] == "migration"
    [review] = events(tmp_path, "access_request.review")
    assert review["user"] == "alice" and review["verdict"] == "approve"
    [update] = events(tmp_path, "access_request.update")
    assert update["state"] == "APPROVED" and update["user"] == "alice"
    assert update["reason"] == "approved by alice (alice: ok)"


async def test_asking_again_for_the_same_finds_the_pending_request(
    server: AuthServer, tmp_path: Path
) -> None:
    first, new = await server.create_request(
        user("carl"), ["db-admin"], [], "migration", [], None, None
    )
    again, new_again = await server.create_request(
        user("carl"), ["db-admin"], [], "migration", [], None, None
    )
    assert new and not new_again
    assert again.name == first.name
    # Reviewers were asked once: one create event, one request in the store.
    assert [e["id"] for e in events(tmp_path, "access_request.create")] == [first.name]
    assert [r.name for r in await server.list_requests(ADMIN, True)] == [first.name]

    # Anything else asked for is another request: a reason, a duration, another user.
    other_reason = await request(server, reason="another migration")
    shorter = await request(server, max_duration=timedelta(minutes=5))
    other_user = await request(server, who="pete")
    assert len({first.name, other_reason.name, shorter.name, other_user.name}) == 4

    # Once the first is decided, the same words make a new request.
    await server.review_request(user("alice"), first.name, "deny", "not now")
    after, new_after = await server.create_request(
        user("carl"), ["db-admin"], [], "migration", [], None, None
    )
    assert new_after and after.name != first.name


async def test_the_asked_max_duration_caps_access_below_the_roles(server: AuthServer) -> None:
    created = await request(server, max_duration=timedelta(minutes=5))
    assert created.spec.max_duration == timedelta(minutes=5)
    longer = await request(server, max_duration=timedelta(hours=5), reason="longer")
    assert longer.spec.max_duration == timedelta(hours=2)  # the roles' limit
    approved = await server.review_request(user("alice"), created.name, "approve", "")
    left = approved.spec.access_expires - SystemClock().now()
    assert timedelta(minutes=4) < left <= timedelta(minutes=5)


async def test_a_threshold_of_two_needs_two_different_reviewers(server: AuthServer) -> None:
    created = await request(server, who="pete", roles=["two-man"])
    assert [(t.approve, t.deny) for t in created.spec.thresholds] == [(2, 1)]
    once = await server.review_request(user("alice"), created.name, "approve", "")
    assert once.state == "PENDING"
    with pytest.raises(AlreadyExists, match="a reviewer counts once"):
        await server.review_request(user("alice"), created.name, "approve", "")
    twice = await server.review_request(user("bob"), created.name, "approve", "")
    assert twice.state == "APPROVED"
    with pytest.raises(BadParameter, match=r"already approved .*your review changes nothing"):
        await server.review_request(user("r0"), created.name, "deny", "")


async def test_refusals_name_their_reason(server: AuthServer) -> None:
    with pytest.raises(AccessDenied, match='you may not request role "reviewer"'):
        await request(server, roles=["reviewer"])
    created = await request(server)
    with pytest.raises(AccessDenied, match="may not review your own"):
        await server.review_request(user("carl"), created.name, "approve", "")
    with pytest.raises(
        AccessDenied,
        match='you may not review requests for role "db-admin": none of your roles lists it '
        "in review_requests",
    ):
        await server.review_request(user("kim"), created.name, "approve", "")
    # Nobody else sees it listed, but its owner and reviewers do.
    assert [r.name for r in await server.list_requests(user("alice"), False)] == [created.name]
    assert await server.list_requests(user("kim"), False) == []
    with pytest.raises(NotFound):
        await server.get_request(user("kim"), created.name, False)
    # A prefix finds only requests one can see; the whole id gets the reason above.
    with pytest.raises(NotFound):
        await server.review_request(user("kim"), created.name[:8], "approve", "")
    assert (await server.get_request(user("alice"), created.name[:8], False)).name == created.name

    key = public_key_openssh(generate_private_key())
    with pytest.raises(AccessDenied, match="still pending"):
        await server.assume_requests(user("carl"), key, [created.name], None)
    with pytest.raises(AccessDenied, match="is carl's, not yours"):
        await server.assume_requests(user("pete"), key, [created.name], None)
    await server.review_request(user("alice"), created.name, "deny", "not today")
    with pytest.raises(AccessDenied, match=r"was denied by alice \(alice: not today\)"):
        await server.assume_requests(user("carl"), key, [created.name], None)


def slow_writes(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes that take a while (a remote store): every reviewer reads the request
    before any of them has written, so a write that is not conditional loses reviews."""
    backend = server.backend
    for name in ("put", "compare_and_swap"):
        write = getattr(backend, name)

        async def slow(*args: Any, _write: Any = write) -> Any:
            await asyncio.sleep(0.05)
            return await _write(*args)

        monkeypatch.setattr(backend, name, slow)


async def test_concurrent_reviews_are_all_kept(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = await request(server, who="pete", roles=["two-man"])
    slow_writes(server, monkeypatch)
    # Eight reviewers at once, on a request that needs two approvals: compare-and-swap
    # makes each lost race read again, so exactly two approvals count and the others
    # learn their review changed nothing.
    results = await asyncio.gather(
        *(server.review_request(user(f"r{i}"), created.name, "approve", f"r{i}") for i in range(8)),
        return_exceptions=True,
    )
    kept = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, BadParameter) for r in refused), refused
    final = await server.get_request(ADMIN, created.name, True)
    assert final.state == "APPROVED"
    assert len(final.spec.reviews) == 2 == len(kept)
    assert {r.author for r in final.spec.reviews} == {k.spec.reviews[-1].author for k in kept}


async def test_concurrent_reviews_below_the_threshold_are_never_lost(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = from_dict(
        {
            "kind": "role",
            "metadata": {"name": "picky"},
            "spec": {"allow": {"request": {"roles": ["two-man"], "thresholds": [{"approve": 9}]}}},
        }
    )
    await server.put_resource(role, "admin", upsert=True)
    created = await request(server, who="pete", roles=["two-man"])
    slow_writes(server, monkeypatch)
    await asyncio.gather(
        *(server.review_request(user(f"r{i}"), created.name, "approve", "") for i in range(8))
    )
    final = await server.get_request(ADMIN, created.name, True)
    assert final.state == "PENDING"
    assert sorted(r.author for r in final.spec.reviews) == [f"r{i}" for i in range(8)]


async def test_a_pending_request_expires_and_says_so(server: AuthServer, tmp_path: Path) -> None:
    created = await request(server, pending_ttl=timedelta(milliseconds=200))
    waited = await server.wait_request(
        user("carl"), created.name, created.metadata.revision, timedelta(seconds=5), False
    )
    assert waited.state == "EXPIRED"
    assert any(e["state"] == "EXPIRED" for e in events(tmp_path, "access_request.update"))
    key = public_key_openssh(generate_private_key())
    with pytest.raises(AccessDenied, match="expired"):
        await server.assume_requests(user("carl"), key, [created.name], None)
    with pytest.raises(BadParameter, match="already expired"):
        await server.review_request(user("alice"), created.name, "approve", "")


async def test_a_wait_returns_on_a_review_made_before_it_started(server: AuthServer) -> None:
    created = await request(server)
    await server.review_request(ADMIN, created.name, "approve", "go")  # before the wait
    started = asyncio.get_running_loop().time()
    waited = await server.wait_request(
        user("carl"), created.name, created.metadata.revision, timedelta(seconds=5), False
    )
    assert waited.state == "APPROVED" and waited.spec.resolve_reason == "approved by admin: go"
    assert asyncio.get_running_loop().time() - started < 1


async def test_a_resource_request_grants_the_search_roles_for_that_node_only(
    server: AuthServer,
) -> None:
    for name, env in (("db-1", "prod"), ("db-2", "prod"), ("web-1", "dev")):
        node = from_dict(
            {
                "kind": "node",
                "metadata": {"name": name, "labels": {"env": env}},
                "spec": {"addr": "127.0.0.1:1"},
            }
        )
        await server.nodes.upsert(node)  # type: ignore[arg-type]
    found = await server.search_resources(user("carl"), "node", {})
    assert [n.name for n in found] == ["db-1", "db-2"]
    for name in ("web-1", "no-such-node"):
        with pytest.raises(NotFound, match=f'node "{name}" not found among the nodes you may'):
            await request(server, roles=[], resources=[f"node/{name}"])
    with pytest.raises(AccessDenied, match="do not let you request resources as"):
        await request(server, roles=["db-admin"], resources=["node/db-1"])
    created = await request(server, roles=[], resources=["node/db-1"])
    assert created.spec.roles == ["db-search"]
    await server.review_request(user("alice"), created.name, "approve", "")
    key = public_key_openssh(generate_private_key())
    bundle = await server.assume_requests(user("carl"), key, [created.name], None)
    cert = identity_from_ssh_cert(bundle.ssh_cert)
    assert cert.resources == ("node/db-1",) and cert.logins == ("reader",)
    assert [n.name for n in await server.nodes_for(cert)] == ["db-1"]


async def test_a_resource_request_names_only_the_search_roles_that_matter_to_it(
    server: AuthServer,
) -> None:
    """Reviewers are asked about the roles that reach the node (and any that deny, which
    only narrow), not every role the user may search as."""
    extra = [
        {"kind": "role", "metadata": {"name": "web-search"},
         "spec": {"allow": {"logins": ["web"], "node_labels": {"env": "dev"}}}},
        {"kind": "role", "metadata": {"name": "no-root"},
         "spec": {"deny": {"logins": ["root"]}}},
        {"kind": "role", "metadata": {"name": "wide-searcher"},
         "spec": {"allow": {"request": {
             "search_as_roles": ["db-search", "web-search", "no-root"]}}}},
    ]  # fmt: skip
    for role in extra:
        await server.put_resource(from_dict(role), "admin", upsert=False)
    await server.add_user("sam", ["wide-searcher"], {}, "admin")
    node = from_dict(
        {"kind": "node", "metadata": {"name": "db-9", "labels": {"env": "prod"}},
         "spec": {"addr": "127.0.0.1:1"}}
    )  # fmt: skip
    await server.nodes.upsert(node)  # type: ignore[arg-type]
    created = await request(server, who="sam", roles=[], resources=["node/db-9"])
    assert created.spec.roles == ["db-search", "no-root"]


async def test_ls_judges_each_label_set_so_shared_sets_do_not_leak(server: AuthServer) -> None:
    # Label sets repeat across nodes and are judged once per call: every node still
    # gets the answer for its own labels, in the store's order.
    labels = [
        {"env": "prod"},
        {"env": "dev"},
        {"env": "prod"},
        {"env": "prod", "team": "x"},
        {"env": "dev"},
        {"team": "x", "env": "prod"},
        {"team": "x"},
    ]
    for i, these in enumerate(labels):
        node = from_dict(
            {"kind": "node", "metadata": {"name": f"n{i}", "labels": these},
             "spec": {"addr": "127.0.0.1:1"}}
        )  # fmt: skip
        await server.nodes.upsert(node)  # type: ignore[arg-type]
    # `cgsh ls` answers from auth's watch-fed copy of the nodes: wait for the last put.
    await eventually_async(lambda: len(server.node_mirror.items()) == len(labels))
    dba = replace(user("dan"), roles=("db-admin",))
    assert [n.name for n in await server.nodes_for(dba)] == ["n0", "n2", "n3", "n5"]
    everyone = replace(user("dan"), roles=("two-man",))
    assert len(await server.nodes_for(everyone)) == len(labels)


async def test_a_lock_on_a_request_refuses_its_certificates(server: AuthServer) -> None:
    created = await request(server)
    await server.review_request(ADMIN, created.name, "approve", "")
    with pytest.raises(NotFound):
        await server.put_resource(_lock("no-such-request"), "admin", upsert=False)
    await server.put_resource(_lock(created.name), "admin", upsert=False)
    await asyncio.sleep(0)  # the lock cache follows the store's watch
    key = public_key_openssh(generate_private_key())
    for _ in range(100):
        try:
            await server.assume_requests(user("carl"), key, [created.name], None)
        except AccessDenied as exc:
            assert "locked" in exc.message
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the lock never applied")


def _lock(request_id: str) -> Lock:
    return Lock(
        metadata=Metadata(name=f"lock-{request_id[:8]}"),
        spec=LockSpec(target=LockTarget(access_request=request_id), message="grant revoked"),
    )


async def test_the_api_honours_a_grant_while_it_lasts_and_never_a_foreign_one(
    server: AuthServer,
) -> None:
    authorizer = Authorizer(
        server.load_roles,
        server.role_sets,
        check_not_locked=server.check_not_locked,
        load_user=server.user_with_roles,
        load_grants=server.granted_roles,
    )
    created = await request(server, roles=["event-reader"], max_duration=None)
    key = public_key_openssh(generate_private_key())
    standing = (await server._issue_for_user(await server.users.get("carl"), key, None)).identity
    with pytest.raises(AccessDenied):
        await authorizer.check(standing, "event", "list")
    await server.review_request(user("alice"), created.name, "approve", "")
    granted = (await server.assume_requests(standing, key, [created.name], None)).identity
    assert await authorizer.check(granted, "event", "list")
    # The same roles and request id claimed by someone else's certificate grant nothing.
    pete = (await server._issue_for_user(await server.users.get("pete"), key, None)).identity
    forged = replace(pete, roles=(*pete.roles, "event-reader"), request_ids=(created.name,))
    with pytest.raises(AccessDenied):
        await authorizer.check(forged, "event", "list")
    # The grant ends (as its max_duration would end it): its certificate loses the role.
    stored = await server.access_requests.get(created.name)
    ended = stored.spec.model_copy(update={"access_expires": SystemClock().now()})
    await server.access_requests.update(stored.model_copy(update={"spec": ended}))
    with pytest.raises(AccessDenied):
        await authorizer.check(granted, "event", "list")


async def test_suggested_reviewers_are_a_few_certgate_users(server: AuthServer) -> None:
    # Plugins message suggested reviewers directly: a requester names users, not addresses.
    with pytest.raises(BadParameter, match=r'"ceo@othercorp\.com" is not a certgate user'):
        await request(server, reviewers=["bob", "ceo@othercorp.com"])
    with pytest.raises(BadParameter, match="invalid suggested reviewer"):
        await request(server, reviewers=["<!channel>"])
    with pytest.raises(BadParameter, match="at most 10 suggested reviewers, not 11"):
        await request(server, reviewers=["alice", "bob", *(f"r{i}" for i in range(8)), "kim"])
    ten = ["alice", "bob", *(f"r{i}" for i in range(8))]
    created = await request(server, reviewers=[*ten, "bob"])
    assert created.spec.suggested_reviewers == ten
