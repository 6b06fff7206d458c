"""Resources by kind (`cgctl get/create/rm`): one store per kind, audited writes."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from certgate.access.rbac import validate_role
from certgate.api.access_request import AccessRequest
from certgate.api.authority import CertAuthority
from certgate.api.codec import Resource
from certgate.api.lock import Lock
from certgate.api.node import Node
from certgate.api.role import Role
from certgate.api.user import User
from certgate.auth.user_cuts import narrowed
from certgate.auth.users_admin import UserAdmin
from certgate.errors import AlreadyExists, BadParameter, NotFound
from certgate.services.host_names import HostName
from certgate.services.store import ResourceStore


class ResourceAdmin(UserAdmin):
    # resources ----------------------------------------------------------------------

    def store_for(self, kind: str) -> ResourceStore[Any]:
        stores: dict[str, ResourceStore[Any]] = {
            "role": self.roles,
            "user": self.users.users,
            "token": self.tokens,
            "lock": self.locks,
            "node": self.nodes,
            "kube_cluster": self.kube_clusters,
            "cert_authority": self.authorities,
            "access_request": self.access_requests,
        }
        if kind not in stores:
            raise BadParameter(f'unknown kind "{kind}": use {", ".join(stores)}')
        return stores[kind]

    async def get_resources(self, kind: str, name: str | None) -> list[BaseModel]:
        store = self.store_for(kind)
        items = [await store.get(name)] if name else await store.list()
        if kind == "cert_authority":
            items = [ca.without_secrets() for ca in items]
        return items

    async def put_resource(self, resource: Resource, by: str, upsert: bool) -> BaseModel:
        return (await self.put_resources([resource], by, upsert))[0]

    async def put_resources(
        self, resources: Sequence[Resource], by: str, upsert: bool
    ) -> list[BaseModel]:
        """All or nothing: every resource is checked, then all are written in one
        transaction (Backend.write_many); a user may name a role created in the same call."""
        seen: set[tuple[str, str]] = set()
        new_roles = {r.metadata.name for r in resources if isinstance(r, Role)}
        prepared: list[Resource] = []
        befores: list[User | None] = []
        for resource in resources:
            ref = (resource.kind, resource.metadata.name)
            if ref in seen:
                raise BadParameter(f'{resource.kind} "{ref[1]}" appears twice in the input')
            seen.add(ref)
            expires = resource.metadata.expires
            if expires is not None and expires <= self.clock.now():
                # Stored, it would be gone at once: a lock that locks nothing.
                raise BadParameter(
                    f'{resource.kind} "{ref[1]}" expires {expires.isoformat()}, which has'
                    " passed: give a time in the future"
                )
            if isinstance(resource, Role):
                validate_role(resource)
            if isinstance(resource, CertAuthority):
                raise BadParameter("certificate authorities are created by auth and cannot be set")
            if isinstance(resource, AccessRequest):
                raise BadParameter(
                    "access requests are made with `cgsh request create` and changed by reviews"
                )
            if isinstance(resource, Lock) and resource.spec.target.access_request:
                await self.access_requests.get(resource.spec.target.access_request)
            before: User | None = None
            if isinstance(resource, User):
                for role in resource.spec.roles:
                    if role not in new_roles:
                        await self.roles.get(role)
                if upsert:
                    with contextlib.suppress(NotFound):
                        before = await self.users.get(resource.name)
                if before is not None:
                    # Status (invite completed, lockouts) is auth's, not the document's.
                    resource = resource.model_copy(update={"status": before.status})
            prepared.append(resource)
            befores.append(before)
        # Narrowed users are cut before the write too (see auth/user_cuts.py).
        narrowings = [
            (before, lost)
            for before, resource in zip(befores, prepared, strict=True)
            if before is not None
            and isinstance(resource, User)
            and (lost := narrowed(before, resource))
        ]
        for before, lost in narrowings:
            await self.cut_user_certs(before, by, f"changed (lost {', '.join(lost)})", wait=False)
        stores = [self.store_for(r.kind) for r in prepared]
        items = [store.encode(r) for store, r in zip(stores, prepared, strict=True)]
        claimed = await self._claim_agentless_names(prepared)
        try:
            written = await self.backend.write_many(items, create_only=not upsert)
        except BaseException as exc:
            for name in claimed:  # nothing was written: the names stay free
                await self.host_names.release("node", name)
            if isinstance(exc, AlreadyExists):
                for item, resource in zip(items, prepared, strict=True):
                    if item.key in exc.message.split():
                        name = resource.metadata.name
                        raise AlreadyExists(f'{resource.kind} "{name}" already exists') from None
            raise
        saved: list[BaseModel] = [
            store.decode(item) for store, item in zip(stores, written, strict=True)
        ]
        # Every write is audited first: cutting a user's certificates may fail (the
        # store, a lock write), and must not leave the writes after it unaudited.
        for resource in prepared:
            await self._audit_put(resource, by)
        for before, lost in narrowings:
            await self.cut_user_certs(before, by, f"changed (lost {', '.join(lost)})")
        return saved

    async def _claim_agentless_names(self, resources: Sequence[Resource]) -> list[str]:
        """Claim the names of the agentless nodes among `resources`, so that no join can
        take one (services/host_names.py); the names newly claimed. AlreadyExists if a
        joined node holds one: an admin removes it first."""
        claimed: list[str] = []
        try:
            for resource in resources:
                if not isinstance(resource, Node) or resource.spec.sub_kind != "openssh":
                    continue
                entry = HostName.agentless_node(resource.name, self.clock.now())
                try:
                    await self.host_names.claim(entry)  # of this and a racing join, one wins
                except AlreadyExists:
                    holder = await self.host_names.get("node", resource.name)
                    if holder is None or holder.agentless:
                        continue  # registered already (or just freed): the claim stands
                    where = f" from {holder.addr}" if holder.addr else ""
                    raise AlreadyExists(
                        f'node "{resource.name}" is held by a node that joined{where}: '
                        f'remove it first with "cgctl rm node/{resource.name}"'
                    ) from None
                claimed.append(resource.name)
        except BaseException:
            for name in claimed:
                await self.host_names.release("node", name)
            raise
        return claimed

    async def _audit_put(self, resource: Resource, by: str) -> None:
        if isinstance(resource, Lock):
            await self.audit.emit(
                "lock.created",
                user=by,
                name=resource.name,
                target=resource.spec.target.describe(),
                message=resource.spec.message,
                expires=resource.metadata.expires.isoformat()
                if resource.metadata.expires
                else None,
            )
        else:
            event = "role.created" if resource.kind == "role" else "resource.created"
            await self.audit.emit(event, user=by, kind=resource.kind, name=resource.metadata.name)

    async def delete_resource(self, kind: str, name: str, by: str) -> None:
        if kind == "user":
            await self.delete_user(name, by)
            return
        if kind == "cert_authority":
            raise BadParameter("certificate authorities cannot be deleted")
        if kind == "role":
            await self._check_role_unheld(name)
        if kind == "node":
            await self._delete_node(name)
        else:
            await self.store_for(kind).delete(name)
        event = {"role": "role.deleted", "token": "token.delete", "lock": "lock.deleted"}.get(
            kind, "resource.deleted"
        )
        await self.audit.emit(event, user=by, kind=kind, name=name)

    async def _check_role_unheld(self, name: str) -> None:
        """BadParameter while users hold role `name`: deleted under them, it would leave
        them naming a role that is not there, and their next login refused for it."""
        holders = sorted(u.name for u in await self.users.list_all() if name in u.spec.roles)
        if holders:
            more = f" and {len(holders) - 5} more" if len(holders) > 5 else ""
            shown = ", ".join(holders[:5]) + more
            raise BadParameter(
                f'role "{name}" is held by {shown}: take it from them first '
                "(cgctl users update NAME --set-roles=...)"
            )

    async def _delete_node(self, name: str) -> None:
        """Out of the inventory, and its name free to join again: the identity that held
        it can no longer heartbeat (its entry is gone)."""
        released = await self.host_names.release("node", name)
        try:
            await self.nodes.delete(name)
        except NotFound:
            if not released:
                raise
