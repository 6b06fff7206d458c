"""Nodes: SSH servers in the inventory, either certgate nodes or agentless OpenSSH."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from certgate.api.meta import Metadata, Model
from certgate.api.names import Text


class NodeSpec(Model):
    addr: Text
    hostname: Text = ""
    # "" is a certgate node (it heartbeats itself); "openssh" an agentless sshd
    # registered by an admin.
    sub_kind: Literal["", "openssh"] = ""


class Node(Model):
    """metadata.name is the node's id; metadata.labels its labels."""

    kind: Literal["node"] = "node"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: NodeSpec = Field()

    @property
    def name(self) -> str:
        return self.metadata.name
