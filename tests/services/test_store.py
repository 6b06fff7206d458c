"""Resources as stored (services/store.py): without their revision, whatever they carry;
read back with the store's."""

from __future__ import annotations

import json
from pathlib import Path

from certgate.api.meta import Metadata
from certgate.api.node import Node, NodeSpec
from certgate.backend.sqlite import SQLiteBackend
from certgate.clock import FakeClock
from certgate.services.store import ResourceStore


def node(revision: int) -> Node:
    return Node(
        metadata=Metadata(name="db-1", labels={"env": "prod"}, revision=revision),
        spec=NodeSpec(addr="10.0.0.1:3022", hostname="db-1"),
    )


async def test_a_resource_is_stored_without_its_revision_and_read_with_the_stores(
    tmp_path: Path,
) -> None:
    backend = await SQLiteBackend.open(tmp_path / "store.db", FakeClock())
    try:
        nodes = ResourceStore(backend, "/nodes/", Node, "node")
        for revision in (0, 41):  # a fresh resource, and one read back earlier
            item = nodes.encode(node(revision))
            assert json.loads(item.value)["metadata"]["revision"] == 0
            assert json.loads(item.value)["metadata"]["labels"] == {"env": "prod"}
            stored = await nodes.upsert(node(revision))
            assert stored.metadata.revision > 0
            assert stored.metadata.revision != 41
            assert stored.spec == node(0).spec
    finally:
        await backend.close()
