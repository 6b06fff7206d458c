"""`cgctl tokens add|ls|rm`: join tokens for nodes, proxies, kube services and bots."""

from __future__ import annotations

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import DURATION, FORMAT, print_json, table


@click.group()
def tokens() -> None:
    """Manage join tokens."""


@tokens.command("add")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["node", "kube", "proxy", "bot"]),
    required=True,
    help="What the token lets a host join as.",
)
@click.option(
    "--ttl", type=DURATION, default="30m", show_default=True, help="How long the token is valid."
)
@click.option(
    "--uses",
    type=click.IntRange(min=1),
    help="How many joins the token allows (default: any number until it expires).",
)
@click.option("--name", "host", help="The only host name the token may join as.")
@FORMAT
@click.pass_context
def add(
    ctx: click.Context, kind: str, ttl: str, uses: int | None, host: str | None, fmt: str
) -> None:
    """Create a join token and print the command that uses it."""
    body: dict[str, object] = {"roles": [kind], "ttl": ttl}
    if uses is not None:
        body["uses"] = uses
    if host:
        body["name"] = host
    result = api(ctx).call("POST", "/tokens", json=body)
    if fmt == "json":
        print_json(result)
        return
    click.echo(f"The invite token: {result['token']}")
    limits = f", for {uses} join{'s' if uses != 1 else ''}" if uses else ""
    click.echo(f"This token will expire in {ttl}{limits}.\n")
    if kind != "bot":
        click.echo(f"Run this on the new {kind} host to join the cluster:\n")
        nodename = f" --nodename {host}" if host else ""
        click.echo(
            f"certgate start --roles {kind} --token {result['token']} "
            f"--auth-server {result['auth_addr']} --ca-pin {result['ca_pin']}{nodename}"
        )


@tokens.command("ls")
@FORMAT
@click.pass_context
def ls(ctx: click.Context, fmt: str) -> None:
    """List join tokens."""
    items = api(ctx).call("GET", "/resources/token")
    if fmt == "json":
        print_json(items)
        return
    rows = [
        (
            t["metadata"]["name"],
            t["spec"]["roles"],
            t["metadata"]["expires"],
            "any" if t["spec"].get("uses") is None else t["spec"]["uses"],
            t["spec"].get("name") or "any",
        )
        for t in items
    ]
    click.echo(table(["Token", "Type", "Expires", "Uses left", "Name"], rows))


@tokens.command("rm")
@click.argument("token")
@click.pass_context
def rm(ctx: click.Context, token: str) -> None:
    """Delete a join token."""
    api(ctx).call("DELETE", f"/resources/token/{token}")
    click.echo(f"Token {token} has been deleted.")
