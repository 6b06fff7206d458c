"""The connection every cgctl command uses (admin identity or cgsh profile)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from certgate.client.cluster import ClusterAPI


def api(ctx: click.Context) -> ClusterAPI:
    # Imported here, not above: httpx and cryptography come with it, and `cgctl --help`
    # (which imports every cgctl module) never connects.
    from certgate.client.cluster import connect

    root = ctx.find_root()
    data_dir: Path | None = root.obj
    cluster = connect(data_dir)
    ctx.call_on_close(cluster.close)
    return cluster
