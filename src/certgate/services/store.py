"""A typed view of one key prefix: resources in, resources out, revisions kept.

`ResourceStore(backend, "/roles/", Role)` stores each role as JSON under
`/roles/<name>`; reads set `metadata.revision` from the backend so a later `update`
is conditional on it (a lost race raises CompareFailed instead of overwriting).

Every read still goes to the backend, but a revision names one stored value for good
(revisions are never reused), so the resource decoded for a key at a revision is kept
and handed out again while the backend answers with that revision: a hot read (the
user and roles behind every certificate) skips parsing and validating the JSON.
Resources are frozen models, so sharing one is safe.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel

from certgate.api.meta import Metadata
from certgate.api.names import shown
from certgate.backend.base import Backend, Item
from certgate.errors import AlreadyExists, NotFound

T = TypeVar("T", bound=BaseModel)
log = logging.getLogger("certgate.store")
# Told of each stored item a reader skipped because it does not decode.
SkipCallback = Callable[[Item, Exception], None]


# Decoded resources kept per store (the most recently decoded keys).
DECODED_CACHE_SIZE = 1024


class ResourceStore(Generic[T]):
    def __init__(
        self,
        backend: Backend,
        prefix: str,
        model: type[T],
        noun: str,
        cache_size: int = DECODED_CACHE_SIZE,
    ) -> None:
        self._backend = backend
        self._prefix = prefix
        self._model = model
        self._noun = noun
        self._cache_size = cache_size
        self._decoded: dict[str, T] = {}

    @property
    def prefix(self) -> str:
        return self._prefix

    def key(self, name: str) -> str:
        return self._prefix + name

    def decode(self, item: Item) -> T:
        cached = self._decoded.get(item.key)
        if cached is not None and _metadata(cached).revision == item.revision:
            return cached
        resource = self._model.model_validate_json(item.value)
        meta = _metadata(resource).model_copy(update={"revision": item.revision})
        resource = resource.model_copy(update={"metadata": meta})
        if item.revision > 0 and self._cache_size > 0:
            self._decoded.pop(item.key, None)
            if len(self._decoded) >= self._cache_size:
                del self._decoded[next(iter(self._decoded))]  # the least recently decoded
            self._decoded[item.key] = resource
        return resource

    def encode(self, resource: T) -> Item:
        """The item `resource` is stored as (for writes of several kinds in one
        transaction, `Backend.write_many`)."""
        return self._encode(resource)

    def _encode(self, resource: T) -> Item:
        meta = _metadata(resource)
        clean = resource  # stored without its revision (a copy only when it has one)
        if meta.revision:
            unrevised = meta.model_copy(update={"revision": 0})
            clean = resource.model_copy(update={"metadata": unrevised})
        return Item(
            key=self.key(meta.name),
            value=clean.model_dump_json().encode(),
            expires=meta.expires,
        )

    async def get(self, name: str) -> T:
        try:
            return self.decode(await self._backend.get(self.key(name)))
        except NotFound:
            raise NotFound(f'{self._noun} "{name}" not found') from None

    async def get_many(self, names: Sequence[str]) -> list[T]:
        """The named resources, read together (one snapshot); NotFound names the first
        one missing."""
        items = await self._backend.get_many([self.key(name) for name in names])
        found = {item.key: item for item in items}
        for name in names:
            if self.key(name) not in found:
                raise NotFound(f'{self._noun} "{name}" not found')
        return [self.decode(found[self.key(name)]) for name in names]

    async def list(self) -> list[T]:
        return [self.decode(item) for item in await self._backend.range(self._prefix)]

    async def list_readable(self, on_skip: SkipCallback | None = None) -> builtins.list[T]:
        """Like `list`, but an item that no longer decodes is logged and left out.

        For views that must keep going (watch snapshots, the lock cache): one item
        written by an older version, or straight into the store, must not hide every
        other lock from them.
        """
        items = await self._backend.range(self._prefix)
        found = (self.decode_or_skip(item, on_skip) for item in items)
        return [resource for resource in found if resource is not None]

    def decode_or_skip(self, item: Item, on_skip: SkipCallback | None = None) -> T | None:
        """`item` decoded, or None (logged, and passed to `on_skip`) if it does not."""
        try:
            return self.decode(item)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            if on_skip is not None:
                on_skip(item, exc)
            log.error(
                "skipping stored %s %s: it does not decode: %s", self._noun, shown(item.key), exc
            )
            return None

    async def create(self, resource: T) -> T:
        try:
            item = await self._backend.create(self._encode(resource))
        except AlreadyExists:
            name = _metadata(resource).name
            raise AlreadyExists(f'{self._noun} "{name}" already exists') from None
        return self.decode(item)

    async def upsert(self, resource: T) -> T:
        return self.decode(await self._backend.put(self._encode(resource)))

    async def update(self, resource: T) -> T:
        """Write `resource` only if nobody changed it since it was read."""
        expected = _metadata(resource).revision
        return self.decode(await self._backend.compare_and_swap(self._encode(resource), expected))

    async def delete(self, name: str) -> None:
        try:
            await self._backend.delete(self.key(name))
        except NotFound:
            raise NotFound(f'{self._noun} "{name}" not found') from None


def _metadata(resource: BaseModel) -> Metadata:
    meta = getattr(resource, "metadata", None)
    assert isinstance(meta, Metadata), "resources carry metadata"
    return meta
