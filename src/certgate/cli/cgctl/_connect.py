"""The connection every cgctl command uses (admin identity or cgsh profile)."""

from __future__ import annotations

from pathlib import Path

import click

from certgate.client.cluster import ClusterAPI, connect


def api(ctx: click.Context) -> ClusterAPI:
    root = ctx.find_root()
    data_dir: Path | None = root.obj
    cluster = connect(data_dir)
    ctx.call_on_close(cluster.close)
    return cluster
