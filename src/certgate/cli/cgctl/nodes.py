"""`cgctl nodes ls`: every node of the inventory, certgate nodes and agentless sshds."""

from __future__ import annotations

from typing import Any

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import FORMAT, print_json, table


@click.group()
def nodes() -> None:
    """List the node inventory (add agentless OpenSSH servers with cgctl create)."""


@nodes.command("ls")
@FORMAT
@click.pass_context
def ls(ctx: click.Context, fmt: str) -> None:
    """List all nodes with their kind, address and labels."""
    items: list[dict[str, Any]] = api(ctx).call("GET", "/resources/node")
    items.sort(key=lambda n: n["metadata"]["name"])
    if fmt == "json":
        print_json(items)
        return
    rows = [
        (
            n["metadata"]["name"],
            n["spec"].get("sub_kind") or "node",
            n["spec"]["addr"],
            n["metadata"].get("labels", {}),
        )
        for n in items
    ]
    click.echo(table(["Node", "Kind", "Address", "Labels"], rows))
