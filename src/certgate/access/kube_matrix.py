"""The access matrix's Kubernetes rows: may a user reach a cluster now, as which groups
and users, and why (not).

Pure (no I/O), called by access/matrix.py for every (user, cluster) pair. Each row is
decided with the checks the kube service runs on a kubectl call (kube/forwarder.py):
the request's resources (`check_resource_grant`), `check_cluster` (a deny rule's
kubernetes_labels, else some role's), the groups and users to impersonate (none of
either refuses), then locks matched with the cluster as the node. The paths a user may
take are the matrix's (standing, then each active approved request).

A row exists when some role's allow kubernetes_labels match the cluster on some path
(the roles in `allowed_by`); a cluster no role matches has no row, as a login no role
grants has none for nodes. The row is `allowed` (standing / request), `locked`, or
`denied`: by a deny rule's kubernetes_labels (`denied_by` names the roles), or because
no group and no user is left (`denied_by` names the roles whose deny took them away).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from certgate.access.kube import check_cluster, impersonation
from certgate.access.matrix_paths import Path, RowKey, RowStatus, with_allow, with_deny
from certgate.access.rbac import RoleSet
from certgate.access.requests import resource_allowed
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock, lock_message
from certgate.api.role import RoleConditions
from certgate.api.user import User
from certgate.errors import AccessDenied

KUBE = "kube_cluster"  # the row kind, as resource references name it


@dataclass(frozen=True)
class KubeGrant:
    """A role whose allow kubernetes_labels match the cluster, and those labels."""

    role: str
    kubernetes_labels: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class KubeAccessRow(RowStatus):
    kube_cluster: str
    # What kubectl acts as there (empty when refused): groups, and users for --as.
    kubernetes_groups: tuple[str, ...] = ()
    kubernetes_users: tuple[str, ...] = ()
    allowed_by: tuple[KubeGrant, ...] = ()

    kind = KUBE

    @property
    def key(self) -> RowKey:
        return (self.user, 1, self.kube_cluster, "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KUBE,
            "user": self.user,
            "kube_cluster": self.kube_cluster,
            "kubernetes_groups": list(self.kubernetes_groups),
            "kubernetes_users": list(self.kubernetes_users),
            **self.status_dict(),
            "allowed_by": [
                {"role": g.role, "kubernetes_labels": dict(g.kubernetes_labels)}
                for g in self.allowed_by
            ],
        }


def decide_kube(
    user: User,
    cluster: KubeCluster,
    paths: Sequence[Path],
    locks: Sequence[Lock],
    now: datetime,
) -> KubeAccessRow | None:
    """The row for one user and cluster, or None when no role of any path matches it."""
    labels = cluster.metadata.labels
    locked: tuple[Path, Lock, tuple[str, ...], tuple[str, ...]] | None = None
    refused: tuple[Path, str] | None = None
    for path in paths:
        if not resource_allowed(path.resources, KUBE, cluster.name):
            continue
        if not path.role_set.kube_roles(labels):
            continue
        refusal = _refusal(path, user, cluster)
        if refusal is not None:
            refused = refused or (path, refusal)
            continue
        groups = tuple(path.role_set.kubernetes_groups(labels))
        users = tuple(path.role_set.kubernetes_users(labels))
        lock = path.lock_for(user.name, locks, now, node=cluster.name)
        if lock is not None:
            locked = locked or (path, lock, groups, users)
            continue
        return KubeAccessRow(
            user=user.name,
            kube_cluster=cluster.name,
            allowed=True,
            how="request" if path.request else "standing",
            kubernetes_groups=groups,
            kubernetes_users=users,
            **path.held_by_request(),
            allowed_by=_grants(path, labels),
        )
    if locked is not None:
        path, lock, groups, users = locked
        return KubeAccessRow(
            user=user.name,
            kube_cluster=cluster.name,
            allowed=False,
            how="locked",
            kubernetes_groups=groups,
            kubernetes_users=users,
            **path.held_by_request(),
            lock=lock.name,
            allowed_by=_grants(path, labels),
            reason=lock_message(lock),
        )
    if refused is not None:
        path, reason = refused
        lock = path.lock_for(user.name, locks, now, node=cluster.name)
        return KubeAccessRow(
            user=user.name,
            kube_cluster=cluster.name,
            allowed=False,
            how="denied",
            lock=lock.name if lock else "",
            allowed_by=_grants(path, labels),
            denied_by=_deniers(path, labels),
            reason=reason,
        )
    return None


def _refusal(path: Path, user: User, cluster: KubeCluster) -> str | None:
    """The kube service's refusal of a resource call on this path's roles, or None."""
    labels = cluster.metadata.labels
    role_set = path.role_set
    try:
        # What every call but discovery goes through (kube/forwarder.py). Several
        # kubernetes users are no refusal: kubectl --as picks one.
        check_cluster(role_set, cluster.name, labels)
        if not role_set.kubernetes_groups(labels) and not role_set.kubernetes_users(labels):
            impersonation(role_set, user.name, cluster.name, labels)  # raises its refusal
    except AccessDenied as exc:
        return exc.message
    return None


def _grants(path: Path, labels: Mapping[str, str]) -> tuple[KubeGrant, ...]:
    found = [
        KubeGrant(role.name, role.spec.allow.kubernetes_labels)
        for role in path.role_set.kube_roles(labels)
    ]
    return tuple(sorted(found, key=lambda g: g.role))


def _deniers(path: Path, labels: Mapping[str, str]) -> tuple[str, ...]:
    """Roles whose deny section refuses the cluster, or takes away its groups or users:
    each role's deny section evaluated on its own by the same RoleSet code."""
    allow_only = RoleSet([with_deny(r, RoleConditions()) for r in path.roles], path.traits)
    groups = allow_only.kubernetes_groups(labels)
    users = allow_only.kubernetes_users(labels)
    everything = RoleConditions(
        kubernetes_labels={"*": "*"}, kubernetes_groups=groups, kubernetes_users=users
    )
    found = []
    for role in path.roles:
        alone = RoleSet([with_allow(role, everything)], path.traits)
        if (
            alone.kube_denier(labels) is not None
            or alone.kubernetes_groups(labels) != groups
            or alone.kubernetes_users(labels) != users
        ):
            found.append(role.name)
    return tuple(sorted(found))
