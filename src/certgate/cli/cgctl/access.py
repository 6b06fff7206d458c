"""`cgctl access ls` (who has access to what, now) and `cgctl activity` (recent days)."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import print_json, table

if TYPE_CHECKING:
    from certgate.client.access import AccessEntry

CSV_COLUMNS = (
    "kind",
    "user",
    "node",
    "hostname",
    "login",
    "kube_cluster",
    "kubernetes_groups",
    "kubernetes_users",
    "allowed",
    "how",
    "request_id",
    "until",
    "lock",
    "allowed_by",
    "denied_by",
    "reason",
)


@click.group()
def access() -> None:
    """Who has access to what, right now."""


@access.command("ls")
@click.option("--user", default="", help="Only this user.")
@click.option("--node", default="", help="Only this node (id or hostname).")
@click.option("--kube-cluster", default="", help="Only this Kubernetes cluster.")
@click.option(
    "--kind",
    type=click.Choice(["node", "kube_cluster"]),
    default=None,
    help="Only nodes or only Kubernetes clusters.",
)
@click.option("--role", default="", help="Only users holding this role (standing or granted).")
@click.option(
    "--label", "labels", multiple=True, help="Only nodes and clusters with this label (k=v)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "csv"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.pass_context
def ls(
    ctx: click.Context,
    user: str,
    node: str,
    kube_cluster: str,
    kind: str | None,
    role: str,
    labels: tuple[str, ...],
    fmt: str,
) -> None:
    """One row per user, node and login some role allows there, and per user and
    Kubernetes cluster some role's kubernetes_labels match: how it is held (standing,
    request ID until T) or why it is refused now (locked by L, denied by R)."""
    from certgate.client.access import AccessClient

    entries = AccessClient(api(ctx)).list(
        user=user, node=node, role=role, labels=labels, kube_cluster=kube_cluster, kind=kind or ""
    )
    if fmt == "json":
        print_json([e.raw for e in entries])
    elif fmt == "csv":
        click.echo(to_csv(entries), nl=False)
    else:
        rows = [
            (e.user, e.kind, e.name, e.describe_as(), e.describe_how(), ",".join(e.allowed_by))
            for e in entries
        ]
        click.echo(table(["User", "Kind", "Name", "Login / groups", "How", "Allowed by"], rows))


def to_csv(entries: list[AccessEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        kube = e.kind == "kube_cluster"
        writer.writerow(
            (
                e.kind,
                e.user,
                e.node,
                e.hostname,
                e.login,
                e.name if kube else "",
                ";".join(e.kubernetes_groups),
                ";".join(e.kubernetes_users),
                "true" if e.allowed else "false",
                e.how,
                e.request_id,
                e.until or "",
                e.lock,
                ";".join(e.allowed_by),
                ";".join(e.denied_by),
                e.reason,
            )
        )
    return out.getvalue()


@click.command()
@click.option("--days", default=7, show_default=True, help="How many days, today included.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.pass_context
def activity(ctx: click.Context, days: int, fmt: str) -> None:
    """Sessions, logins and refusals per day (from the audit log)."""
    from certgate.client.access import AccessClient

    result = AccessClient(api(ctx)).activity(days)
    if fmt == "json":
        print_json({"days": result.days, "series": result.series})
        return
    kinds = list(result.series)
    rows = [(day, *(result.series[k][i] for k in kinds)) for i, day in enumerate(result.days)]
    click.echo(table(["Day", *(k.replace("_", " ").title() for k in kinds)], rows))
