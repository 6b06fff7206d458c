"""`cgsh kube ls | login CLUSTER | credentials`: Kubernetes clusters through the proxy."""

from __future__ import annotations

import json
import sys

import click

from certgate.cli.common import FORMAT, print_json, table

# certgate.client.kube (YAML, the resource models, httpx) is imported by the commands
# that use it: `cgsh kube credentials`, which kubectl runs, needs none of it.


@click.group()
def kube() -> None:
    """Kubernetes clusters: list them, log kubectl in."""


@kube.command("ls")
@FORMAT
def ls(fmt: str) -> None:
    """The clusters your roles let you reach, with their labels; * marks the one
    kubectl's current context reaches (cgsh kube login NAME selects one)."""
    from certgate.client.kube import list_clusters, selected

    clusters = list_clusters()
    current = selected()
    if fmt == "json":
        print_json(
            [
                {"name": c.name, "labels": c.metadata.labels, "selected": c.name == current}
                for c in clusters
            ]
        )
        return
    rows = [
        [
            c.name,
            ",".join(f"{k}={v}" for k, v in sorted(c.metadata.labels.items())),
            "*" if c.name == current else "",
        ]
        for c in clusters
    ]
    click.echo(table(["Cluster", "Labels", "Selected"], rows))


@kube.command("login")
@click.argument("cluster")
def login(cluster: str) -> None:
    """Write a kubeconfig context for CLUSTER (and make it current)."""
    from certgate.client.kube import login as kube_login

    written = kube_login(cluster)
    click.echo(
        f'Logged into kubernetes cluster "{cluster}": context {written.context} in {written.path}.'
    )
    click.echo("Try: kubectl version")


@kube.command("credentials")
@click.option("--cluster", default="", help="The cluster kubectl is calling (informational).")
def credentials(cluster: str) -> None:
    """The exec credential plugin kubectl runs (written by cgsh kube login)."""
    from certgate.client.kube_credentials import credentials as current

    sys.stdout.write(json.dumps(current()) + "\n")
