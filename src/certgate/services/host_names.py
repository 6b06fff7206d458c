"""Which host identity holds each service name, so a join token cannot take one over.

    /host_names/<role>/<name>   HostName: the holder's certificate issue time and expiry

A join creates the entry (create fails if present: of two racing joins one wins); it
expires with the certificate, so a name frees itself when its holder's identity could
no longer be used. Identities the auth host issues itself (its own proxy and node)
replace the entry. `cgctl rm node/NAME` deletes it: the name is free to join again,
and the old holder's heartbeats stop counting (they no longer match the entry).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from certgate.backend.base import Backend, Item
from certgate.errors import NotFound


class HostName(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    name: str
    # The holder's certificate, as it says: notBefore (whole seconds) and notAfter.
    issued: datetime
    expires: datetime
    addr: str = ""  # where the holder joined from, for the refusal message


class HostNames:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @staticmethod
    def _key(role: str, name: str) -> str:
        return f"/host_names/{role}/{name}"

    def _item(self, entry: HostName) -> Item:
        return Item(
            key=self._key(entry.role, entry.name),
            value=entry.model_dump_json().encode(),
            expires=entry.expires,
        )

    async def get(self, role: str, name: str) -> HostName | None:
        try:
            item = await self._backend.get(self._key(role, name))
        except NotFound:
            return None
        return HostName.model_validate_json(item.value)

    async def claim(self, entry: HostName) -> None:
        """Take a free name; AlreadyExists if a live identity holds it."""
        await self._backend.create(self._item(entry))

    async def replace(self, entry: HostName) -> None:
        """Take the name whoever holds it (identities the auth host issues itself)."""
        await self._backend.put(self._item(entry))

    async def release(self, role: str, name: str) -> bool:
        try:
            await self._backend.delete(self._key(role, name))
        except NotFound:
            return False
        return True
