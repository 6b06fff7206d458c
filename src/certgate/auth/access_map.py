"""Who has access to what (the access matrix) and recent activity, from auth's store.

    users, roles, nodes, kube clusters, locks, access requests
        ──> filtered ──> access/matrix.py ──> rows (a page of them: `limit`, `after`)
    audit store (indexed by type and time)       ──> counts per day per activity kind

Callers are already authorized (resource `access`, verb `list`); this layer reads.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from certgate.access.matrix import MatrixInput, Row, iter_access
from certgate.access.matrix_paths import RowKey
from certgate.errors import BadParameter, NotFound

if TYPE_CHECKING:
    from certgate.api.kube_cluster import KubeCluster
    from certgate.api.node import Node
    from certgate.api.role import Role
    from certgate.api.user import User
    from certgate.auth.server import AuthServer

# Activity kinds and the audit event types each counts.
ACTIVITY_KINDS: dict[str, tuple[str, ...]] = {
    "sessions": ("session.start",),
    "logins": ("user.login",),
    "login_refusals": ("user.login.failure", "user.login.locked"),
    "session_refusals": ("session.rejected",),
}
MAX_ACTIVITY_DAYS = 90
RowKind = Literal["", "node", "kube_cluster"]  # "": both
_PAGE = 10_000


@dataclass(frozen=True)
class AccessFilter:
    """Which rows to answer: every given filter must match (empty: no filter)."""

    user: str = ""
    # Naming a node leaves clusters out, and naming a cluster leaves nodes out, unless
    # both are named; `kind` keeps one kind of row.
    node: str = ""  # node id or hostname
    kube_cluster: str = ""
    kind: RowKind = ""
    role: str = ""  # a role the user holds, standing or by an active request
    labels: Mapping[str, str] = field(default_factory=dict)  # of nodes and clusters

    @classmethod
    def parse_labels(cls, texts: Sequence[str]) -> dict[str, str]:
        labels: dict[str, str] = {}
        for text in texts:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise BadParameter(f"label filter {text!r} must be KEY=VALUE")
            labels[key] = value
        return labels


class AccessMap:
    def __init__(self, server: AuthServer) -> None:
        self._server = server

    async def rows(
        self, wanted: AccessFilter, limit: int | None = None, after: RowKey | None = None
    ) -> tuple[list[Row], RowKey | None]:
        """The rows in the matrix's order, after `after` when given; at most `limit` of
        them, with the key to pass as `after` for the next page (None: no more rows)."""
        server = self._server
        users = await server.users.users.list_readable()
        roles = {r.name: r for r in await server.roles.list_readable()}
        nodes = await server.nodes.list_readable() if wanted.kind != "kube_cluster" else []
        clusters = await server.kube_clusters.list_readable() if wanted.kind != "node" else []
        locks = await server.locks.list_readable()
        requests = await server.access_requests.list_readable()
        now = server.clock.now()
        _check_named(wanted, users, roles, nodes, clusters)
        if wanted.user:
            users = [u for u in users if u.name == wanted.user]
        if wanted.role:
            holders = {
                r.spec.user for r in requests if wanted.role in r.spec.roles and r.active_at(now)
            }
            users = [u for u in users if wanted.role in u.spec.roles or u.name in holders]
        if wanted.node or wanted.kube_cluster:
            nodes = [n for n in nodes if wanted.node in (n.name, n.spec.hostname)]
            clusters = [c for c in clusters if c.name == wanted.kube_cluster]
        if wanted.labels:
            nodes = [n for n in nodes if _has_labels(n.metadata.labels, wanted.labels)]
            clusters = [c for c in clusters if _has_labels(c.metadata.labels, wanted.labels)]
        data = MatrixInput(users, roles, nodes, locks, requests, now, kube_clusters=clusters)

        def page() -> tuple[list[Row], RowKey | None]:
            rows = iter_access(data, after)
            if limit is None:
                return list(rows), None
            # One row past the page says whether there is a next one.
            found = list(itertools.islice(rows, limit + 1))
            return found[:limit], found[limit - 1].key if len(found) > limit else None

        # Pure and CPU-bound (the whole matrix of 200 users by 500 nodes took about
        # 0.6 s here; a page a few ms): off the event loop, so auth keeps answering
        # logins and heartbeats meanwhile.
        return await asyncio.to_thread(page)

    async def activity(self, days: int) -> dict[str, Any]:
        """Counts per UTC day (oldest first, today last) of each kind in ACTIVITY_KINDS."""
        if not 1 <= days <= MAX_ACTIVITY_DAYS:
            raise BadParameter(f"days must be between 1 and {MAX_ACTIVITY_DAYS}")
        now = self._server.clock.now()
        first = now.date() - timedelta(days=days - 1)
        since = datetime(first.year, first.month, first.day, tzinfo=now.tzinfo)
        day_list = [first + timedelta(days=i) for i in range(days)]
        counts = {kind: dict.fromkeys(day_list, 0) for kind in ACTIVITY_KINDS}
        for kind, types in ACTIVITY_KINDS.items():
            async for moment in self._times(types, since):
                day = moment.astimezone(now.tzinfo).date()
                if day in counts[kind]:
                    counts[kind][day] += 1
        return {
            "days": [d.isoformat() for d in day_list],
            "series": {kind: [per_day[d] for d in day_list] for kind, per_day in counts.items()},
        }

    async def _times(self, types: Sequence[str], since: datetime) -> AsyncIterator[datetime]:
        # The store answers by its (event, time) index; only times are kept from each page.
        cursor: str | None = None
        while True:
            events, cursor = await self._server.audit.search(
                since=since, until=None, event_types=list(types), limit=_PAGE, cursor=cursor
            )
            for event in events:
                yield datetime.fromisoformat(event["time"])
            if cursor is None:
                return


def _check_named(
    wanted: AccessFilter,
    users: Sequence[User],
    roles: Mapping[str, Role],
    nodes: Sequence[Node],
    clusters: Sequence[KubeCluster],
) -> None:
    """NotFound for a filter naming what does not exist: a mistyped name would
    otherwise read as "has no access" (an empty answer)."""
    if wanted.user and not any(u.name == wanted.user for u in users):
        raise NotFound(f'user "{wanted.user}" not found')
    if wanted.role and wanted.role not in roles:
        raise NotFound(f'role "{wanted.role}" not found')
    # Only where that kind is listed: `kind` may leave nodes or clusters out.
    if wanted.node and wanted.kind != "kube_cluster":
        if not any(wanted.node in (n.name, n.spec.hostname) for n in nodes):
            raise NotFound(
                f'node "{wanted.node}" not found: no online node has that id or hostname'
            )
    if wanted.kube_cluster and wanted.kind != "node":
        if not any(c.name == wanted.kube_cluster for c in clusters):
            raise NotFound(
                f'kubernetes cluster "{wanted.kube_cluster}" not found: no kube service serves it'
            )


def _has_labels(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())
