"""`cgctl auth export`: the cluster's CA public keys for OpenSSH."""

from __future__ import annotations

import click

from certgate.cli.cgctl._connect import api


@click.group("auth")
def auth() -> None:
    """Certificate authority operations."""


@auth.command("export")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["user", "host", "tls-user", "tls-host"]),
    default="user",
    show_default=True,
    help="user: a TrustedUserCAKeys line for sshd; host: a known_hosts @cert-authority "
    "line; tls-*: the X.509 CA certificate.",
)
@click.pass_context
def export(ctx: click.Context, kind: str) -> None:
    """Print a CA's public key in the form OpenSSH (or TLS) expects."""
    click.echo(api(ctx).call("GET", f"/authorities/{kind}/export"), nl=False)


def register(cli: click.Group) -> None:
    cli.add_command(auth)
