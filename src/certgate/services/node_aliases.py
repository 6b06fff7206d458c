"""Which node answers to a host name or address: the strings users type to reach a
node, by node, so auth can refuse a join or heartbeat that would take another's.

    "web-1"     -> {web-1: name}
    "db1.corp"  -> {web-1: hostname}
    "10.0.0.5"  -> {web-1: address, web-2: address}   (two nodes on one machine)

Kept by auth's mirror of `/nodes/` (services/prefix_mirror.py): each stored node
changes it as the watch delivers it, so a join or a heartbeat looks a string up in
memory instead of reading and decoding every node (10,000 of them). Strings are
compared as clients compare host names (api/host_names.host_key).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from certgate.api.host_names import addr_host, host_key
from certgate.backend.base import Item

NAME = "name"
HOSTNAME = "hostname"
ADDRESS = "address"


@dataclass(frozen=True)
class _Node:
    name: str
    # (what, host key) pairs: the name, the hostname, the address's host.
    aliases: tuple[tuple[str, str], ...]
    agentless: bool
    expires: datetime | None


class NodeAliases:
    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}  # by item key
        self._by_alias: dict[str, dict[str, _Node]] = {}  # host key -> item key -> node
        self._agentless: set[str] = set()  # names of agentless nodes

    # fed by the mirror ----------------------------------------------------------------

    def reset(self, items: Iterable[Item]) -> None:
        self._nodes.clear()
        self._by_alias.clear()
        self._agentless.clear()
        for item in items:
            self.put(item)

    def put(self, item: Item) -> None:
        node = _parse(item)
        before = self._nodes.get(item.key)
        if before == node:
            return
        if before is not None:
            self._unindex(item.key, before)
        if node is not None:
            self._nodes[item.key] = node
            if node.agentless:
                self._agentless.add(node.name)
            for _, alias in node.aliases:
                self._by_alias.setdefault(alias, {})[item.key] = node

    def delete(self, key: str) -> None:
        before = self._nodes.get(key)
        if before is not None:
            self._unindex(key, before)

    def _unindex(self, key: str, node: _Node) -> None:
        del self._nodes[key]
        self._agentless.discard(node.name)
        for _, alias in node.aliases:
            held = self._by_alias.get(alias)
            if held is not None:
                held.pop(key, None)
                if not held:
                    del self._by_alias[alias]

    # asked by auth --------------------------------------------------------------------

    def owners(self, value: str, now: datetime) -> dict[str, set[str]]:
        """The live nodes `value` names, each with how: name, hostname, address."""
        key = host_key(value)
        found: dict[str, set[str]] = {}
        for node in self._by_alias.get(key, {}).values():
            if node.expires is None or node.expires > now:
                found[node.name] = {what for what, alias in node.aliases if alias == key}
        return found

    def is_agentless(self, name: str) -> bool:
        """Whether node `name` is an agentless node (its record is an admin's)."""
        return name in self._agentless


def _parse(item: Item) -> _Node | None:
    try:
        document = json.loads(item.value)
        name = str(document["metadata"]["name"])
        spec = document.get("spec") or {}
        hostname = str(spec.get("hostname") or "")
        addr = str(spec.get("addr") or "")
        agentless = spec.get("sub_kind") == "openssh"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a bad item is refused where it is read; it names nothing here
    aliases = [(NAME, host_key(name))]
    if hostname:
        aliases.append((HOSTNAME, host_key(hostname)))
    if addr:
        aliases.append((ADDRESS, host_key(addr_host(addr))))
    return _Node(name, tuple(aliases), agentless, item.expires)
