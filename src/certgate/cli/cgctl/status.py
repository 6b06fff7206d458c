"""`cgctl status`: the cluster at a glance."""

from __future__ import annotations

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import FORMAT, print_json


@click.command()
@FORMAT
@click.pass_context
def status(ctx: click.Context, fmt: str) -> None:
    """Cluster name, version, CA fingerprints and pins, counts of nodes, users, live
    sessions and locks."""
    from certgate.client.status import cluster_status

    found = cluster_status(api(ctx))
    if fmt == "json":
        print_json(found.as_json())
        return
    click.echo(f"Cluster:  {found.cluster_name}")
    click.echo(f"Version:  {found.version}")
    click.echo(f"Proxy:    {found.proxy_addr}")
    click.echo("CA keys:")
    for key in found.authorities:
        click.echo(f"  {key.type:<9} {key.fingerprint}")
    counts = ", ".join(f"{n} {what}" for what, n in found.counts.items())
    click.echo(f"Counts:   {counts}")
