"""`cgctl audit ls`: search the audit log."""

from __future__ import annotations

from typing import Any

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import FORMAT, print_json, table


@click.group()
def audit() -> None:
    """The audit log."""


@audit.command("ls")
@click.option("--since", help="Events after this: a duration ago (1h) or RFC 3339 time.")
@click.option("--until", help="Events before this: a duration ago or RFC 3339 time.")
@click.option("--event", help="Event types, comma-separated (user.login,session.start).")
@click.option("--user", help="Only events of this user.")
@click.option("--node", help="Only events on this node.")
@click.option("--limit", default=100, show_default=True, help="At most this many events.")
@click.option("--cursor", help="Continue a listing from where the last page stopped.")
@FORMAT
@click.pass_context
def ls(
    ctx: click.Context,
    since: str | None,
    until: str | None,
    event: str | None,
    user: str | None,
    node: str | None,
    limit: int,
    cursor: str | None,
    fmt: str,
) -> None:
    """List audit events, newest first.

    When more events match than --limit, the command for the next page is printed on
    stderr (same filters, plus --cursor).
    """
    from certgate.client.times import parse_since  # the duration parser brings pydantic

    params = {
        k: v
        for k, v in {
            "since": parse_since(since),
            "until": parse_since(until),
            "event": event,
            "user": user,
            "node": node,
            "limit": str(limit),
            "cursor": cursor,
        }.items()
        if v
    }
    result = api(ctx).call("GET", "/events", params=params)
    events = result["events"]
    next_cursor = result.get("cursor")
    if fmt == "json":
        print_json(events)
    else:
        _print_table(events)
    if next_cursor:
        # The same filters, with --since/--until pinned to the times this page used.
        shown = {k: v for k, v in params.items() if k != "cursor"}
        options = " ".join(f"--{k}={v}" for k, v in shown.items())
        click.echo(f"more events: cgctl audit ls {options} --cursor={next_cursor}", err=True)


def _print_table(events: list[dict[str, Any]]) -> None:
    skip = {"event", "code", "time", "uid", "user"}
    rows = [
        (
            e["time"][:19].replace("T", " "),
            e["event"],
            e.get("user", ""),
            " ".join(f"{k}={v}" for k, v in sorted(e.items()) if k not in skip),
        )
        for e in events
    ]
    click.echo(table(["Time", "Event", "User", "Details"], rows))
