"""Access requests in the auth service: create, review, wait, expire, and assume.

    cgsh request create ─> create_request ──> /access_requests/<id>  PENDING
    reviewers           ─> review_request ──> compare-and-swap: reviews + state
    cgsh (waiting)      ─> wait_request(after_revision) ──> the request once it changed
    reaper (every auth) ─> expire_requests ──> EXPIRED past pending_expires
    cgsh (approved)     ─> assume_requests ──> certificates with the grant

Who may do what is decided in access/requests.py from the roles as stored now; this
module reads and writes the store and records every change in the audit log
(`access_request.create`, `.review`, `.update`). Every write is conditional on the
revision read, and a lost race is retried on the fresh request, so two reviewers at the
same moment both count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from certgate.access.rbac import RoleSet
from certgate.access.requests import (
    RequestPolicy,
    ReviewPolicy,
    access_duration,
    apply_review,
    check_reviewable,
    expire,
    resolve_directly,
)
from certgate.api.access_request import (
    MAX_SUGGESTED_REVIEWERS,
    AccessRequest,
    AccessRequestSpec,
    ResourceRef,
    Verdict,
    new_request_id,
)
from certgate.api.bundle import CertBundle
from certgate.api.identity import SYSTEM_ADMIN, Identity
from certgate.api.kube_cluster import KubeCluster
from certgate.api.meta import Metadata
from certgate.api.names import check_name, shown
from certgate.api.node import Node
from certgate.api.role import Role, RoleConditions
from certgate.api.user import User
from certgate.auth.core import MAX_USER_TTL, AuthCore
from certgate.errors import AccessDenied, BadParameter, CertgateError, CompareFailed, NotFound

log = logging.getLogger("certgate.auth.requests")

DEFAULT_PENDING_TTL = timedelta(hours=1)
MAX_PENDING_TTL = timedelta(days=7)
# Resolved requests stay readable (cgsh request ls, audits) this long after they end.
RETENTION = timedelta(days=7)
REAPER_INTERVAL = 1.0
# How long one wait call may hold (under the proxy's 15 s read timeout).
MAX_WAIT = timedelta(seconds=10)
CAS_ATTEMPTS = 20
# What a resource request may name (`cgsh request create --resource=KIND/NAME`).
RESOURCE_KINDS = ("node", "kube_cluster")


def _retention(request: AccessRequest) -> AccessRequest:
    """The request with its store expiry: RETENTION after its last relevant moment."""
    spec = request.spec
    last = max(t for t in (spec.pending_expires, spec.access_expires) if t is not None)
    meta = request.metadata.model_copy(update={"expires": last + RETENTION})
    return request.model_copy(update={"metadata": meta})


def _not_requestable(kind: str, name: str) -> str:
    what = "kubernetes cluster" if kind == "kube_cluster" else "node"
    return (
        f'{what} "{name}" not found among the {what}s you may request '
        f"(cgsh request search --kind={kind})"
    )


def _owned_by(user: str) -> Callable[[AccessRequest], Awaitable[bool]]:
    async def owned(request: AccessRequest) -> bool:
        return request.spec.user == user

    return owned


class AccessRequestAdmin(AuthCore):
    _reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        self._reaper = asyncio.create_task(self._reap_forever(), name="access request reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await super().close()

    # who is asking -------------------------------------------------------------------

    async def _standing(self, caller: Identity) -> tuple[User, list[Role]]:
        """The caller's user record and standing roles (never roles from requests)."""
        return await self.user_with_roles(caller.username, ())

    async def request_policy(self, caller: Identity) -> RequestPolicy:
        user, roles = await self._standing(caller)
        return RequestPolicy(roles, user.spec.traits)

    async def review_policy(self, caller: Identity) -> ReviewPolicy:
        user, roles = await self._standing(caller)
        return ReviewPolicy(roles, user.spec.traits)

    # create --------------------------------------------------------------------------

    async def create_request(
        self,
        caller: Identity,
        roles: Sequence[str],
        resources: Sequence[str],
        reason: str,
        reviewers: Sequence[str],
        max_duration: timedelta | None,
        pending_ttl: timedelta | None,
    ) -> tuple[AccessRequest, bool]:
        """The new request and True; or, when the caller already waits on a request for
        the very same thing (a command typed again after Ctrl-C, a form sent twice), that
        one and False: reviewers are not asked twice."""
        if caller.kind != "user":
            raise AccessDenied("access denied: only users request access")
        user, standing = await self._standing(caller)
        policy = RequestPolicy(standing, user.spec.traits)
        reviewers = await self._suggested_reviewers(reviewers)
        refs = [await self._resource_ref(text) for text in resources]
        if refs:
            roles = await self._search_roles_for(policy, user, refs, roles)
        policy.check_request(list(roles), refs, reason)
        for role in roles:
            await self.roles.get(role)  # a requestable role that does not exist: NotFound
        ttl = pending_ttl or DEFAULT_PENDING_TTL
        if not timedelta(0) < ttl <= MAX_PENDING_TTL:
            raise BadParameter("--request-ttl must be longer than 0s and at most 7d")
        now = self.clock.now()
        request = AccessRequest(
            metadata=Metadata(name=new_request_id()),
            spec=AccessRequestSpec(
                user=user.name,
                roles=list(dict.fromkeys(roles)),
                resources=refs,
                reason=reason,
                suggested_reviewers=list(
                    dict.fromkeys([*reviewers, *policy.suggested_reviewers(roles)])
                ),
                created=now,
                pending_expires=now + ttl,
                # What the grant would last, as reviewers and chat messages show it: the
                # asked duration, capped by the roles' (approval caps it again by the
                # roles as they are then).
                max_duration=access_duration(max_duration, policy.max_duration(roles)),
                thresholds=policy.thresholds(roles),
            ),
        )
        same = await self._same_pending(request.spec)
        if same is not None:
            return same, False
        saved = await self.access_requests.create(_retention(request))
        await self.audit.emit(
            "access_request.create",
            user=user.name,
            id=saved.name,
            roles=saved.spec.roles,
            resources=[r.describe() for r in saved.spec.resources],
            reason=reason,
            reviewers=saved.spec.suggested_reviewers,
            state="PENDING",
        )
        return saved, True

    async def _suggested_reviewers(self, names: Sequence[str]) -> list[str]:
        """The requester's suggested reviewers, each a certgate user, at most
        MAX_SUGGESTED_REVIEWERS: plugins message them directly, so a request must not
        name outsiders (an email address) or a crowd."""
        unique = list(dict.fromkeys(names))
        if len(unique) > MAX_SUGGESTED_REVIEWERS:
            raise BadParameter(
                f"at most {MAX_SUGGESTED_REVIEWERS} suggested reviewers, not {len(unique)}: "
                "name fewer"
            )
        for name in unique:
            check_name(name, "suggested reviewer")
            try:
                await self.users.get(name)
            except NotFound:
                raise BadParameter(
                    f"suggested reviewer {shown(name)} is not a certgate user: "
                    "name reviewers by their certgate user name"
                ) from None
        return unique

    async def _same_pending(self, asked: AccessRequestSpec) -> AccessRequest | None:
        """The user's pending request asking for exactly `asked` (roles, resources,
        reason, reviewers, durations), if any."""

        def key(spec: AccessRequestSpec) -> tuple[object, ...]:
            return (
                spec.user,
                spec.roles,
                spec.resources,
                spec.reason,
                spec.suggested_reviewers,
                spec.max_duration,
                spec.pending_expires - spec.created,
            )

        for found in await self.access_requests.list():
            found = await self._expire_one(found)
            if found.spec.state == "PENDING" and key(found.spec) == key(asked):
                return found
        return None

    async def _resource_ref(self, text: str) -> ResourceRef:
        kind, _, name = text.partition("/")
        if kind not in RESOURCE_KINDS or not name:
            raise BadParameter(f'"{text}": name a resource as node/NAME or kube_cluster/NAME')
        if kind == "kube_cluster":
            try:
                cluster = await self.kube_clusters.get(name)
            except NotFound:
                raise NotFound(_not_requestable("kube_cluster", name)) from None
            return ResourceRef(kind="kube_cluster", name=cluster.name)
        try:
            node = await self._find_node(name)
        except NotFound:
            raise NotFound(_not_requestable("node", name)) from None
        return ResourceRef(kind="node", name=node.name)

    async def _find_node(self, name: str) -> Node:
        try:
            return await self.nodes.get(name)
        except NotFound:
            found = [n for n in await self.nodes.list() if name in (n.spec.hostname,)]
            if len(found) == 1:
                return found[0]
            raise NotFound(f'node "{name}" not found') from None

    async def _search_roles_for(
        self,
        policy: RequestPolicy,
        user: User,
        refs: Sequence[ResourceRef],
        asked: Sequence[str],
    ) -> list[str]:
        """The search roles to grant the resources with: those asked, else those of the
        roles the user may search as that reach a named resource (and any that deny
        something: a deny only narrows); together they must reach every named resource
        (the grant is limited to those resources anyway). Reviewers are asked about, and
        the certificates carry, no role that has nothing to do with the resources."""
        names = list(asked) or policy.search_as_roles()
        if not names:
            raise AccessDenied(
                "access denied: your roles let you request no resources (no search_as_roles)"
            )
        policy.check_request(names, refs, "-")  # the reason is checked with the request
        roles = await self.roles.get_many(names)
        role_set = RoleSet(roles, user.spec.traits)
        for ref in refs:
            if not await self._reachable(role_set, ref):
                # The same answer as for a resource that does not exist: a user learns
                # of resources only through the roles they may search as.
                raise NotFound(_not_requestable(ref.kind, ref.name))
        if asked:
            return names
        kept = []
        for role in roles:
            alone = RoleSet([role], user.spec.traits)
            reaches = [await self._reachable(alone, ref) for ref in refs]
            if any(reaches) or role.spec.deny != RoleConditions():
                kept.append(role.name)
        return kept

    async def _reachable(self, role_set: RoleSet, ref: ResourceRef) -> bool:
        if ref.kind == "kube_cluster":
            cluster = await self.kube_clusters.get(ref.name)
            return role_set.can_access_kube(cluster.metadata.labels)
        node = await self.nodes.get(ref.name)
        return role_set.can_access_node(node.metadata.labels)

    async def search_resources(
        self, caller: Identity, kind: str, labels: dict[str, str]
    ) -> Sequence[Node | KubeCluster]:
        """What the caller could reach with their search_as_roles (`cgsh request search`)."""
        if kind not in RESOURCE_KINDS:
            raise BadParameter(
                f'cannot search for "{kind}": use --kind=node or --kind=kube_cluster'
            )
        user, standing = await self._standing(caller)
        names = RequestPolicy(standing, user.spec.traits).search_as_roles()
        if not names:
            raise AccessDenied(
                "access denied: your roles let you search for no resources (no search_as_roles)"
            )
        role_set = RoleSet(await self.roles.get_many(names), user.spec.traits)
        now = self.clock.now()
        found: list[Node | KubeCluster] = []
        if kind == "kube_cluster":
            found.extend(
                c
                for c in await self.kube_clusters.list()
                if role_set.can_access_kube(c.metadata.labels)
            )
        else:
            found.extend(
                n for n in await self.nodes.list() if role_set.can_access_node(n.metadata.labels)
            )
        return [
            r
            for r in found
            if (r.metadata.expires is None or r.metadata.expires > now)
            and all(r.metadata.labels.get(k) == v for k, v in labels.items())
        ]

    async def suggest(self, caller: Identity, node_ref: str, login: str) -> dict[str, object]:
        """Which requestable roles (or a resource request) would let the caller log in
        as `login` on the node: what `cgsh ssh` tells a refused user to request."""
        empty: dict[str, object] = {"roles": [], "resource": None}
        if caller.kind != "user":
            return empty
        user, standing = await self._standing(caller)
        policy = RequestPolicy(standing, user.spec.traits)
        try:
            node = await self._find_node(node_ref)
        except NotFound:
            return empty

        def allows(extra: list[Role]) -> bool:
            try:
                role_set = RoleSet([*standing, *extra], user.spec.traits)
                role_set.check_login(node.name, node.metadata.labels, login)
            except AccessDenied:
                return False
            return True

        roles = []
        for name in policy.requestable_roles():
            with contextlib.suppress(NotFound):
                if allows([await self.roles.get(name)]):
                    roles.append(name)
        resource = None
        search = policy.search_as_roles()
        if search and allows(await self.roles.get_many(search)):
            resource = f"node/{node.name}"
        return {"roles": roles, "resource": resource}

    # read ----------------------------------------------------------------------------

    async def _visible(self, caller: Identity, request: AccessRequest, read_all: bool) -> bool:
        if read_all or caller.is_service(SYSTEM_ADMIN) or request.spec.user == caller.username:
            return True
        if caller.kind != "user":
            return False
        return (await self.review_policy(caller)).may_review(request)

    async def get_request(self, caller: Identity, ref: str, read_all: bool) -> AccessRequest:
        """A request by id or unique id prefix, if the caller may see it (the same
        NotFound as for no such request otherwise)."""
        request = await self._by_ref(ref, lambda r: self._visible(caller, r, read_all))
        request = await self._expire_one(request)
        if not await self._visible(caller, request, read_all):
            raise NotFound(f'access request "{ref}" not found')
        return request

    async def _by_ref(
        self, ref: str, visible: Callable[[AccessRequest], Awaitable[bool]]
    ) -> AccessRequest:
        """By the whole id, or by a prefix unique among the requests `visible` to the
        caller (a prefix never finds, or counts, requests the caller cannot see)."""
        if not ref or "/" in ref:
            raise NotFound(f'access request "{ref}" not found')
        with contextlib.suppress(NotFound):
            return await self.access_requests.get(ref)
        found = [
            r
            for r in await self.access_requests.list()
            if r.name.startswith(ref) and await visible(r)
        ]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise BadParameter(f'"{ref}" names {len(found)} access requests: give more of the id')
        raise NotFound(f'access request "{ref}" not found')

    async def list_requests(self, caller: Identity, read_all: bool) -> list[AccessRequest]:
        """The caller's own requests and those they may review (every one with `list`
        on access_request), newest first."""
        requests = [await self._expire_one(r) for r in await self.access_requests.list()]
        policy = await self.review_policy(caller) if caller.kind == "user" else None
        shown = [
            r
            for r in requests
            if read_all
            or caller.is_service(SYSTEM_ADMIN)
            or r.spec.user == caller.username
            or (policy is not None and policy.may_review(r))
        ]
        return sorted(shown, key=lambda r: r.spec.created, reverse=True)

    async def wait_request(
        self, caller: Identity, ref: str, after_revision: int, timeout: timedelta, read_all: bool
    ) -> AccessRequest:
        """The request once its revision passes `after_revision`, or as it is when
        `timeout` ends first. A change made between the caller's last read and this
        call is never missed: revisions only grow."""
        timeout = min(timeout, MAX_WAIT)
        request = await self.get_request(caller, ref, read_all)
        key = self.access_requests.key(request.name)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout.total_seconds()):
                while request.metadata.revision <= after_revision and not request.is_final():
                    watched_from = await self.backend.current_revision()
                    request = await self.get_request(caller, request.name, read_all)
                    if request.metadata.revision > after_revision or request.is_final():
                        break
                    await self._next_change(key, watched_from, request)
                    request = await self.get_request(caller, request.name, read_all)
        return request

    async def _next_change(self, key: str, revision: int, request: AccessRequest) -> None:
        """Until the key changes, or its pending time ends (it then expires)."""
        left = (request.spec.pending_expires - self.clock.now()).total_seconds()
        events = self.backend.watch([key], revision)
        try:
            async with asyncio.timeout(max(left, 0.0) + 0.05):
                async for _ in events:
                    return
        except TimeoutError:
            return
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    # review --------------------------------------------------------------------------

    async def review_request(
        self, caller: Identity, ref: str, verdict: Verdict, reason: str
    ) -> AccessRequest:
        if verdict not in ("approve", "deny"):
            raise BadParameter('a review is "approve" or "deny"')
        admin = caller.is_service(SYSTEM_ADMIN)
        if not admin and caller.kind != "user":
            raise AccessDenied("access denied: only users and administrators review requests")
        policy = None if admin else await self.review_policy(caller)
        request = await self._by_ref(ref, lambda r: self._visible(caller, r, False))
        for _ in range(CAS_ATTEMPTS):
            request = await self._expire_one(request)
            if policy is not None:
                # Requests one may not review are not listed, but a reviewer who names
                # one learns why they may not review it.
                policy.check_review(request, caller.username)
            check_reviewable(request, caller.username)
            limit = await self._roles_max_duration(request)
            now = self.clock.now()
            apply = resolve_directly if admin else apply_review
            updated = apply(request, caller.username, verdict, reason, now, limit)
            try:
                saved = await self.access_requests.update(_retention(updated))
            except CompareFailed:
                request = await self.access_requests.get(request.name)
                continue
            await self._audit_review(saved, caller.username, verdict, reason)
            return saved
        raise CompareFailed(f"access request {request.name} kept changing: try the review again")

    async def _roles_max_duration(self, request: AccessRequest) -> timedelta | None:
        try:
            user = await self.users.users.get(request.spec.user)
            roles = await self.roles.get_many(user.spec.roles)
        except NotFound:
            return None
        return RequestPolicy(roles, user.spec.traits).max_duration(request.spec.roles)

    async def _audit_review(
        self, saved: AccessRequest, author: str, verdict: str, reason: str
    ) -> None:
        await self.audit.emit(
            "access_request.review",
            user=author,
            id=saved.name,
            requester=saved.spec.user,
            verdict=verdict,
            reason=reason,
            state=saved.state,
        )
        if saved.state != "PENDING":
            await self._audit_update(saved, by=author)

    async def _audit_update(self, saved: AccessRequest, by: str) -> None:
        await self.audit.emit(
            "access_request.update",
            user=by,
            id=saved.name,
            requester=saved.spec.user,
            roles=saved.spec.roles,
            state=saved.state,
            reason=saved.spec.resolve_reason,
            access_expires=saved.spec.access_expires.isoformat()
            if saved.spec.access_expires
            else None,
        )

    # expiry --------------------------------------------------------------------------

    async def _expire_one(self, request: AccessRequest) -> AccessRequest:
        """The request, marked EXPIRED first if its pending time has passed (whichever
        auth process sees it first writes it; the others read its write)."""
        expired = expire(request, self.clock.now())
        if expired is None:
            return request
        try:
            saved = await self.access_requests.update(expired)
        except CompareFailed:
            return await self.access_requests.get(request.name)
        await self._audit_update(saved, by="certgate")
        return saved

    async def expire_requests(self) -> int:
        count = 0
        now = self.clock.now()
        for request in await self.access_requests.list():
            if expire(request, now) is not None:
                with contextlib.suppress(NotFound):
                    if (await self._expire_one(request)).state == "EXPIRED":
                        count += 1
        return count

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAPER_INTERVAL)
            try:
                await self.expire_requests()
            except CertgateError as exc:  # the store busy or unreachable: one line
                log.warning("expiring access requests failed, trying again: %s", exc)
            except Exception:  # a bug: keep the trace
                log.exception("expiring access requests failed; trying again")

    # certificates with grants ------------------------------------------------------

    async def active_request(self, user: str, ref: str) -> AccessRequest:
        """An approved request of `user` whose access has not ended; AccessDenied with
        the reason otherwise."""
        try:
            request = await self._expire_one(await self._by_ref(ref, _owned_by(user)))
        except NotFound:
            raise AccessDenied(f'access denied: access request "{ref}" not found') from None
        if request.spec.user != user:
            raise AccessDenied(
                f"access denied: access request {request.name} is {request.spec.user}'s, not yours"
            )
        why = request.spec.resolve_reason
        if request.state == "PENDING":
            raise AccessDenied(f"access denied: access request {request.name} is still pending")
        if request.state == "DENIED":
            raise AccessDenied(f"access denied: access request {request.name} was {why}")
        if request.state == "EXPIRED":
            raise AccessDenied(
                f"access denied: access request {request.name} expired: {why}; request again"
            )
        if not request.active_at(self.clock.now()):
            ended = request.spec.access_expires
            raise AccessDenied(
                f"access denied: the access granted by request {request.name} ended at "
                f"{ended:%Y-%m-%d %H:%M:%S %Z}"
                if ended
                else f"access denied: access request {request.name} grants nothing"
            )
        return request

    async def granted_roles(self, caller: Identity) -> list[Role]:
        """The roles the caller's access requests grant now: those approved for this
        user whose access has not ended (the API authorizer adds them to the roles the
        user holds)."""
        now = self.clock.now()
        names: list[str] = []
        for ref in caller.request_ids:
            try:
                request = await self.access_requests.get(ref)
            except NotFound:
                continue
            if request.spec.user == caller.username and request.active_at(now):
                names += request.spec.roles
        if not names:
            return []
        try:
            return await self.roles.get_many(list(dict.fromkeys(names)))
        except NotFound:
            return []

    async def assume_requests(
        self,
        caller: Identity,
        public_key: str,
        request_ids: Sequence[str],
        ttl: timedelta | None,
    ) -> CertBundle:
        """Certificates with the caller's standing roles plus those of the approved
        requests: they end when the first grant ends, and never after the certificate
        presented. A resource request limits them to its resources."""
        if caller.kind != "user":
            raise AccessDenied("access denied: only users assume access requests")
        user, standing = await self._standing(caller)
        requests = [await self.active_request(user.name, ref) for ref in request_ids]
        ids = tuple(dict.fromkeys(r.name for r in requests))
        extra = [n for r in requests for n in r.spec.roles if n not in user.spec.roles]
        roles = [*standing, *await self.roles.get_many(list(dict.fromkeys(extra)))]
        resources = tuple(
            dict.fromkeys(ref.describe() for r in requests for ref in r.spec.resources)
        )
        ends: list[datetime] = [caller.expires]
        ends += [r.spec.access_expires for r in requests if r.spec.access_expires is not None]
        not_after = min(ends)
        remaining = not_after - self.clock.now()
        wanted = min(ttl, remaining) if ttl else remaining
        if wanted <= timedelta(0):
            raise AccessDenied("access denied: certificate expired; log in again")
        return await self._issue_for_user(
            user,
            public_key,
            min(wanted, MAX_USER_TTL),
            ids,
            roles,
            not_after=not_after,
            resources=resources,
        )
