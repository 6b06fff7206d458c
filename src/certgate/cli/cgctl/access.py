"""`cgctl access ls` (who has access to what, now) and `cgctl activity` (recent days)."""

from __future__ import annotations

import csv
import io

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import print_json, table
from certgate.client.access import AccessClient, AccessEntry

CSV_COLUMNS = (
    "user",
    "node",
    "hostname",
    "login",
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
@click.option("--role", default="", help="Only users holding this role (standing or granted).")
@click.option("--label", "labels", multiple=True, help="Only nodes with this label (k=v).")
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
    ctx: click.Context, user: str, node: str, role: str, labels: tuple[str, ...], fmt: str
) -> None:
    """One row per user, node and login some role allows there: how it is held
    (standing, request ID until T) or why it is refused now (locked by L, denied by R)."""
    entries = AccessClient(api(ctx)).list(user=user, node=node, role=role, labels=labels)
    if fmt == "json":
        print_json([e.raw for e in entries])
    elif fmt == "csv":
        click.echo(to_csv(entries), nl=False)
    else:
        rows = [
            (e.user, e.node, e.login, e.describe_how(), ",".join(e.allowed_by)) for e in entries
        ]
        click.echo(table(["User", "Node", "Login", "How", "Allowed by"], rows))


def to_csv(entries: list[AccessEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        writer.writerow(
            (
                e.user,
                e.node,
                e.hostname,
                e.login,
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
    result = AccessClient(api(ctx)).activity(days)
    if fmt == "json":
        print_json({"days": result.days, "series": result.series})
        return
    kinds = list(result.series)
    rows = [(day, *(result.series[k][i] for k in kinds)) for i, day in enumerate(result.days)]
    click.echo(table(["Day", *(k.replace("_", " ").title() for k in kinds)], rows))


def register(cli: click.Group) -> None:
    cli.add_command(access)
    cli.add_command(activity)
