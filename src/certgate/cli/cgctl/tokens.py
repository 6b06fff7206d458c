"""`cgctl tokens add|ls|rm`: join tokens for nodes, proxies, kube services and bots."""

from __future__ import annotations

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import FORMAT, print_json, table


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
@click.option("--ttl", default="30m", show_default=True, help="How long the token is valid.")
@FORMAT
@click.pass_context
def add(ctx: click.Context, kind: str, ttl: str, fmt: str) -> None:
    """Create a join token and print the command that uses it."""
    result = api(ctx).call("POST", "/tokens", json={"roles": [kind], "ttl": ttl})
    if fmt == "json":
        print_json(result)
        return
    click.echo(f"The invite token: {result['token']}")
    click.echo(f"This token will expire in {ttl}.\n")
    if kind != "bot":
        click.echo(f"Run this on the new {kind} host to join the cluster:\n")
        click.echo(
            f"certgate start --roles {kind} --token {result['token']} "
            f"--auth-server {result['auth_addr']} --ca-pin {result['ca_pin']}"
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
    rows = [(t["metadata"]["name"], t["spec"]["roles"], t["metadata"]["expires"]) for t in items]
    click.echo(table(["Token", "Type", "Expires"], rows))


@tokens.command("rm")
@click.argument("token")
@click.pass_context
def rm(ctx: click.Context, token: str) -> None:
    """Delete a join token."""
    api(ctx).call("DELETE", f"/resources/token/{token}")
    click.echo(f"Token {token} has been deleted.")


def register(cli: click.Group) -> None:
    cli.add_command(tokens)
