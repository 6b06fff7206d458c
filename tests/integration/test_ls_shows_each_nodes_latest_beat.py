"""`cgsh ls` shows each node as its latest heartbeat left it, though auth keeps every
node's encoding between calls (re-encoding 10,000 nodes per call cost a third of a
second of its core)."""

from __future__ import annotations

import json
from typing import Any

from tests.support.cluster import Cluster
from tests.support.wait import eventually


def test_ls_follows_a_node_from_beat_to_beat(cluster: Cluster) -> None:
    user = cluster.add_user("ls-lee", roles="access")
    cluster.login(user)
    cluster.start_node("ls-node", "env=dev")

    def listed() -> Any:
        nodes = json.loads(cluster.cgsh(user, "ls", "--format=json").stdout)
        return next((n for n in nodes if n["metadata"]["name"] == "ls-node"), None)

    first = eventually(listed)
    # It beats every second: a later listing shows a later expiry (a new revision).
    later = eventually(
        lambda: (n := listed())["metadata"]["expires"] != first["metadata"]["expires"] and n
    )
    assert later["metadata"]["revision"] > first["metadata"]["revision"]
    assert later["spec"] == first["spec"]
