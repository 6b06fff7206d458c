"""Who has access to what, right now: the access matrix of users, nodes and logins.

Pure (no I/O): auth reads users, roles, nodes, locks and access requests from its
store and hands them here; the answer is a list of rows, one per (user, node, login)
that some role of the user allows on that node by its labels.

    users, roles, nodes, locks, requests, now ──> access_matrix() ──> [AccessRow]

Each row is decided with the checks a node runs for `cgsh ssh LOGIN@NODE` (see
access/cached_access.py `CachedAccess.check_login`): `RoleSet.check_login`, then the
resources an access request limits the certificate to, then locks. So the matrix can
not disagree with the node. The paths a user may take are tried in order:

1. standing: the user's own roles, no request;
2. each approved access request whose access has not ended (one at a time, as
   `cgsh login --request-id=ID` would carry it): the user's roles plus the request's,
   limited to the request's resources when it names any.

The first path that passes makes the row `allowed` (how: "standing" or "request").
Otherwise the row says why not: "locked" (a path passes the roles but a lock applies;
`lock` names it) or "denied" (a deny rule refuses the login; `denied_by` names the
roles, and `lock` a lock that applies as well). Logins no role allows on the node
have no row at all.

Explanations (`allowed_by`, `denied_by`) come from evaluating each role on its own with
the same RoleSet code: the roles whose allow section grants the login on the node
(logins and labels together), and the roles whose deny section refuses it.

Locks are matched as for a certificate issued now: a user lock limited to certificates
issued before some moment (after a reset or demotion) does not lock new logins.

Kubernetes clusters get one row per (user, cluster), decided in access/kube_matrix.py.
Rows come in one order (user, then nodes by name and login, then clusters by name), as
an iterator that can start after any row's key: a page of the matrix costs the rows it
shows, not the whole matrix (`iter_access(data, after=key)`, `encode_key`/`decode_key`
for the opaque `start_key` of the API).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from certgate.access.kube_matrix import KubeAccessRow, decide_kube
from certgate.access.matrix_paths import (
    Path,
    RowKey,
    RowStatus,
    user_paths,
    with_allow,
    with_deny,
)
from certgate.access.rbac import RoleSet
from certgate.access.requests import resource_allowed
from certgate.access.templates import expand_all, is_valid_login
from certgate.api.access_request import AccessRequest
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock, lock_message
from certgate.api.node import Node
from certgate.api.role import Role, RoleConditions
from certgate.api.user import User
from certgate.errors import AccessDenied, BadParameter


@dataclass(frozen=True)
class Grant:
    """A role whose allow section grants the login on the node, and the labels it asks."""

    role: str
    node_labels: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class AccessRow(RowStatus):
    node: str
    hostname: str
    login: str
    allowed_by: tuple[Grant, ...] = ()

    kind = "node"

    @property
    def key(self) -> RowKey:
        return (self.user, 0, self.node, self.login)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "node",
            "user": self.user,
            "node": self.node,
            "hostname": self.hostname,
            "login": self.login,
            **self.status_dict(),
            "allowed_by": [
                {"role": g.role, "node_labels": dict(g.node_labels)} for g in self.allowed_by
            ],
        }


@dataclass
class MatrixInput:
    users: Sequence[User]
    roles: Mapping[str, Role]
    nodes: Sequence[Node]
    locks: Sequence[Lock] = ()
    requests: Sequence[AccessRequest] = ()
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    kube_clusters: Sequence[KubeCluster] = ()


Row = AccessRow | KubeAccessRow


def access_matrix(data: MatrixInput) -> list[Row]:
    """Every row of the matrix, in order."""
    return list(iter_access(data))


def iter_access(data: MatrixInput, after: RowKey | None = None) -> Iterator[Row]:
    """The rows in order (user; nodes by name, login; clusters by name), each decided as
    the node or kube service would; with `after`, only the rows whose key follows it."""
    live_nodes = sorted((n for n in data.nodes if _live(n.metadata.expires, data.now)),
                        key=lambda n: n.name)  # fmt: skip
    # What roles decide depends on labels only: keyed once per node, not per user.
    keyed = [(node, _labels_key(node)) for node in live_nodes]
    clusters = sorted((c for c in data.kube_clusters if _live(c.metadata.expires, data.now)),
                      key=lambda c: c.name)  # fmt: skip
    live_locks = [lock for lock in data.locks if _live(lock.metadata.expires, data.now)]
    for user in sorted(data.users, key=lambda u: u.name):
        if after is not None and user.name < after[0]:
            continue  # before the page: not even evaluated
        paths = user_paths(user, data.roles, data.requests, data.now)
        explainer = _Explainer(user, paths)
        for node, labels in keyed:
            if after is not None and (user.name, 0, node.name) < after[:3]:
                continue
            for login in explainer.candidate_logins(node, labels):
                if after is not None and (user.name, 0, node.name, login) <= after:
                    continue
                row = _decide(user, node, login, paths, explainer, live_locks, data.now)
                if row is not None:
                    yield row
        for cluster in clusters:
            if after is not None and (user.name, 1, cluster.name, "") <= after:
                continue
            kube_row = decide_kube(user, cluster, paths, live_locks, data.now)
            if kube_row is not None:
                yield kube_row


def encode_key(key: RowKey) -> str:
    """A row's key as the API's opaque `start_key` (the page after it starts there)."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_key(text: str) -> RowKey:
    try:
        raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        user, kind, name, login = raw
        if not (
            isinstance(user, str)
            and kind in (0, 1)
            and isinstance(name, str)
            and isinstance(login, str)
        ):
            raise ValueError(text)
    except (ValueError, TypeError):
        raise BadParameter(
            "start_key is not one this server gave: start from the first page"
        ) from None
    return (user, int(kind), name, login)


def _live(expires: datetime | None, now: datetime) -> bool:
    return expires is None or expires > now


class _Explainer:
    """Answers for one user's paths, by node labels: whether a path's roles allow a
    login, which roles grant it and which refuse it.

    What roles decide depends on a node's labels, never on its name, so each answer is
    worked out once per distinct set of labels (a fleet has far fewer of those than
    nodes); resources and locks, which do name nodes, are checked per node.
    """

    def __init__(self, user: User, paths: Sequence[Path]) -> None:
        self._traits = user.spec.traits
        self._paths = paths
        every = {role.name: role for path in paths for role in path.roles}
        self._roles = [every[name] for name in sorted(every)]
        # Allow sections alone (deny emptied) and deny sections alone: evaluated by the
        # same RoleSet code the node runs, one role at a time.
        self._allow_only = {
            r.name: RoleSet([with_deny(r, RoleConditions())], self._traits) for r in self._roles
        }
        self._logins = {
            r.name: frozenset(
                login
                for login in expand_all(r.spec.allow.logins, self._traits)
                if is_valid_login(login)
            )
            for r in self._roles
        }
        self._deny_only: dict[tuple[str, str], RoleSet] = {}
        self._candidates: dict[_LabelsKey, list[str]] = {}
        self._passes: dict[tuple[int, _LabelsKey, str], bool] = {}
        self._grants: dict[tuple[int, _LabelsKey, str], tuple[Grant, ...]] = {}
        self._deniers: dict[tuple[int, _LabelsKey, str], tuple[str, ...]] = {}

    def candidate_logins(self, node: Node, key: _LabelsKey) -> list[str]:
        """The logins of the roles whose allow labels match the node (`key`: its labels,
        as `_labels_key` gives them): every row needs one of them to grant its login
        there (deny sections only take away)."""
        found = self._candidates.get(key)
        if found is None:
            logins: set[str] = set()
            for name, role_set in self._allow_only.items():
                if role_set.can_access_node(node.metadata.labels):
                    logins |= self._logins[name]
            found = self._candidates[key] = sorted(logins)
        return found

    def passes(self, index: int, node: Node, login: str) -> bool:
        """Whether path `index`'s roles allow `login` on the node (RoleSet.check_login)."""
        key = (index, _labels_key(node), login)
        answer = self._passes.get(key)
        if answer is None:
            answer = self._passes[key] = self.refusal(index, node, login) is None
        return answer

    def refusal(self, index: int, node: Node, login: str) -> str | None:
        """The node's one-line refusal on path `index`'s roles, or None if allowed."""
        try:
            self._paths[index].role_set.check_login(node.name, node.metadata.labels, login)
        except AccessDenied as exc:
            return exc.message
        return None

    def allowed_by(self, index: int, node: Node, login: str) -> tuple[Grant, ...]:
        key = (index, _labels_key(node), login)
        grants = self._grants.get(key)
        if grants is None:
            found = []
            for r in self._paths[index].roles:
                try:
                    self._allow_only[r.name].check_login(node.name, node.metadata.labels, login)
                except AccessDenied:
                    continue
                found.append(Grant(r.name, r.spec.allow.node_labels))
            grants = self._grants[key] = tuple(sorted(found, key=lambda g: g.role))
        return grants

    def denied_by(self, index: int, node: Node, login: str) -> tuple[str, ...]:
        key = (index, _labels_key(node), login)
        deniers = self._deniers.get(key)
        if deniers is None:
            found = []
            for r in self._paths[index].roles:
                try:
                    self._deny_only_set(r, login).check_login(
                        node.name, node.metadata.labels, login
                    )
                except AccessDenied:
                    found.append(r.name)
            deniers = self._deniers[key] = tuple(sorted(found))
        return deniers

    def _deny_only_set(self, role: Role, login: str) -> RoleSet:
        key = (role.name, login)
        role_set = self._deny_only.get(key)
        if role_set is None:
            # This role's deny section next to an allow that grants the login
            # everywhere: a refusal can come from the deny section only.
            everywhere = RoleConditions(logins=[login], node_labels={"*": "*"})
            role_set = self._deny_only[key] = RoleSet([with_allow(role, everywhere)], self._traits)
        return role_set


_LabelsKey = tuple[tuple[str, str], ...]


def _labels_key(node: Node) -> _LabelsKey:
    return tuple(sorted(node.metadata.labels.items()))


def _decide(
    user: User,
    node: Node,
    login: str,
    paths: Sequence[Path],
    explainer: _Explainer,
    locks: Sequence[Lock],
    now: datetime,
) -> AccessRow | None:
    def row(**fields: Any) -> AccessRow:
        return AccessRow(
            user=user.name, node=node.name, hostname=node.spec.hostname, login=login, **fields
        )

    locked: tuple[int, Lock] | None = None
    for index, path in enumerate(paths):
        if not explainer.passes(index, node, login):
            continue
        if not resource_allowed(path.resources, "node", node.name):
            continue
        lock = path.lock_for(user.name, locks, now, node=node.name, login=login)
        if lock is not None:
            locked = locked or (index, lock)
            continue
        return row(
            allowed=True,
            how="request" if path.request else "standing",
            **path.held_by_request(),
            allowed_by=explainer.allowed_by(index, node, login),
        )
    if locked is not None:
        index, lock = locked
        return row(
            allowed=False,
            how="locked",
            **paths[index].held_by_request(),
            lock=lock.name,
            allowed_by=explainer.allowed_by(index, node, login),
            reason=lock_message(lock),
        )
    # Refused by roles on every path: a row only when some role grants the login here
    # (and a deny rule takes it away); a login nothing grants is simply absent.
    for index, path in enumerate(paths):
        if not resource_allowed(path.resources, "node", node.name):
            continue
        grants = explainer.allowed_by(index, node, login)
        deniers = explainer.denied_by(index, node, login) if grants else ()
        if grants and deniers:
            # A lock may apply as well (the proxy then says so first): name it too.
            lock = path.lock_for(user.name, locks, now, node=node.name, login=login)
            return row(
                allowed=False,
                how="denied",
                lock=lock.name if lock else "",
                allowed_by=grants,
                denied_by=deniers,
                reason=explainer.refusal(index, node, login) or "",
            )
    return None
