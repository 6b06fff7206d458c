"""Auth API route for the nodes a user can reach: `cgsh ls`, `cgsh ssh`, the web UI.

    GET /v1/my/nodes               every node the caller's roles reach, as full node
                                   resources (`cgsh ls --format=json`, the web UI)
    GET /v1/my/nodes?form=brief    the same nodes as rows of only what `cgsh ls` prints
                                   and `cgsh ssh` matches names against:
                                   {"columns": ["name", "hostname", "addr", "labels"],
                                    "rows": [["web-1", "web-1.example", "10.0.0.5:3022",
                                              {"env": "dev"}], ...]}

At 10,000 nodes the full answer is ~2.5 MB: auth encrypted it twice (to the proxy in
its process, then the proxy to the user) and cgsh decoded all of it to print three
columns. The brief answer is about a quarter of that. cgsh sorts either.

Each node's encoding in either form is kept per revision: encoding 10,000 nodes per
call cost a third of a second of auth's core, where only the nodes that beat since the
last call changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from certgate.api.codec import to_dict
from certgate.api.identity import Identity
from certgate.api.node import Node
from certgate.auth import permissions as perm
from certgate.auth.core import NODES_DECODED
from certgate.errors import BadParameter

if TYPE_CHECKING:
    from certgate.auth.http import AuthAPI

BRIEF_COLUMNS = ("name", "hostname", "addr", "labels")
FORMS = ("full", "brief")


def add_node_routes(api: AuthAPI, router: web.UrlDispatcher) -> None:
    routes = NodeRoutes(api)
    router.add_get("/v1/my/nodes", api._handler(perm.SELF, "read", routes.my_nodes))


class EncodingMemo:
    """Each node's encoding, made again only when the node's revision changed."""

    def __init__(self, encode: Callable[[Node], bytes], capacity: int = NODES_DECODED) -> None:
        self._encode = encode
        self._capacity = capacity
        self._kept: dict[str, tuple[int, bytes]] = {}

    def __call__(self, node: Node) -> bytes:
        name, revision = node.metadata.name, node.metadata.revision
        kept = self._kept.get(name)
        if kept is not None and kept[0] == revision:
            return kept[1]
        encoded = self._encode(node)
        if name not in self._kept and len(self._kept) >= self._capacity:
            del self._kept[next(iter(self._kept))]  # the oldest
        self._kept[name] = (revision, encoded)
        return encoded


def full_json(node: Node) -> bytes:
    return json.dumps(to_dict(node)).encode()


def brief_json(node: Node) -> bytes:
    """A row of BRIEF_COLUMNS, in that order."""
    spec = node.spec
    return json.dumps([node.metadata.name, spec.hostname, spec.addr, node.metadata.labels]).encode()


_BRIEF_HEAD = b'{"columns": ' + json.dumps(list(BRIEF_COLUMNS)).encode() + b', "rows": ['


class NodeRoutes:
    def __init__(self, api: AuthAPI) -> None:
        self._server = api.server
        self._full = EncodingMemo(full_json)
        self._brief = EncodingMemo(brief_json)

    async def my_nodes(self, request: web.Request, caller: Identity | None) -> Any:
        assert caller is not None
        form = request.query.get("form", "full")
        if form not in FORMS:
            raise BadParameter(f"form must be one of: {', '.join(FORMS)}")
        nodes = await self._server.nodes_for(caller)
        if form == "brief":
            body = _BRIEF_HEAD + b", ".join(map(self._brief, nodes)) + b"]}"
        else:
            body = b"[" + b", ".join(map(self._full, nodes)) + b"]"
        return web.Response(body=body, content_type="application/json")
