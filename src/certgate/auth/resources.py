"""Resources by kind (`cgctl get/create/rm`): one store per kind, audited writes."""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import BaseModel

from certgate.access.rbac import validate_role
from certgate.api.authority import CertAuthority
from certgate.api.codec import Resource
from certgate.api.lock import Lock
from certgate.api.role import Role
from certgate.api.user import User
from certgate.auth.user_cuts import narrowed
from certgate.auth.users_admin import UserAdmin
from certgate.errors import BadParameter, NotFound
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
            "cert_authority": self.authorities,
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
        if isinstance(resource, Role):
            validate_role(resource)
        if isinstance(resource, CertAuthority):
            raise BadParameter("certificate authorities are created by auth and cannot be set")
        before: User | None = None
        if isinstance(resource, User):
            for role in resource.spec.roles:
                await self.roles.get(role)
            if upsert:
                with contextlib.suppress(NotFound):
                    before = await self.users.get(resource.name)
            if before is not None:
                # Status (invite completed, lockouts) is auth's, not the document's.
                resource = resource.model_copy(update={"status": before.status})
        store = self.store_for(resource.kind)
        saved: BaseModel = await (store.upsert(resource) if upsert else store.create(resource))
        if before is not None and isinstance(saved, User):
            lost = narrowed(before, saved)
            if lost:
                await self.cut_user_certs(before, by, f"changed (lost {', '.join(lost)})")
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
        return saved

    async def delete_resource(self, kind: str, name: str, by: str) -> None:
        if kind == "user":
            await self.delete_user(name, by)
            return
        if kind == "cert_authority":
            raise BadParameter("certificate authorities cannot be deleted")
        if kind == "node":
            await self._delete_node(name)
        else:
            await self.store_for(kind).delete(name)
        event = {"role": "role.deleted", "token": "token.delete", "lock": "lock.deleted"}.get(
            kind, "resource.deleted"
        )
        await self.audit.emit(event, user=by, kind=kind, name=name)

    async def _delete_node(self, name: str) -> None:
        """Out of the inventory, and its name free to join again: the identity that held
        it can no longer heartbeat (its entry is gone)."""
        released = await self.host_names.release("node", name)
        try:
            await self.nodes.delete(name)
        except NotFound:
            if not released:
                raise
