"""`cgsh login|status|logout`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from certgate.cli.common import FORMAT, print_json
from certgate.client.kube import logout as kube_logout
from certgate.client.login import login as do_login
from certgate.client.profile import load_profile, remove_profile


@click.command()
@click.option("--proxy", required=True, help="The proxy's HOST:PORT (e.g. proxy.example.com:3080).")
@click.option("--user", required=True, help="Your certgate user name.")
@click.option("--otp", help="The one-time code (prompted when not given).")
@click.option("--ttl", help="How long the certificates should last (e.g. 8h); roles may cap it.")
@click.option("--insecure", is_flag=True, help="Do not verify the proxy's TLS certificate.")
def login(proxy: str, user: str, otp: str | None, ttl: str | None, insecure: bool) -> None:
    """Log in with password and one-time code; keys and certificates go to ~/.certgate."""
    if sys.stdin.isatty():
        password = click.prompt(f"Password for {user}", hide_input=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not otp:
        if not sys.stdin.isatty():
            raise click.UsageError("pass --otp when the password comes from standard input")
        otp = click.prompt("One-time code")
    do_login(proxy, user, password, otp, insecure, ttl)
    _show(profile_status(), "text")


def profile_status() -> dict[str, object]:
    profile = load_profile()
    identity = profile.identity().bundle.identity
    return {
        "proxy": profile.proxy,
        "cluster": profile.cluster,
        "user": identity.username,
        "roles": list(identity.roles),
        "logins": list(identity.logins),
        "kubernetes_groups": identity.traits.get("kubernetes_groups", []),
        "valid_until": identity.expires.isoformat(),
        "expired": identity.expires <= datetime.now(UTC),
    }


def _show(status: dict[str, object], fmt: str) -> None:
    if fmt == "json":
        print_json(status)
        return
    expires = datetime.fromisoformat(str(status["valid_until"]))
    left = expires - datetime.now(UTC)
    if left.total_seconds() > 0:
        hours, rest = divmod(int(left.total_seconds()), 3600)
        validity = f"{expires:%Y-%m-%d %H:%M:%S %Z} [valid for {hours}h{rest // 60}m]"
    else:
        validity = f"{expires:%Y-%m-%d %H:%M:%S %Z} [EXPIRED: run cgsh login]"

    def joined(key: str) -> str:
        value = status[key]
        return ", ".join(str(v) for v in value) if isinstance(value, list) and value else "-"

    click.echo(f"> Profile URL:        https://{status['proxy']}")
    click.echo(f"  Cluster:            {status['cluster']}")
    click.echo(f"  Logged in as:       {status['user']}")
    click.echo(f"  Roles:              {joined('roles')}")
    click.echo(f"  Logins:             {joined('logins')}")
    click.echo(f"  Kubernetes groups:  {joined('kubernetes_groups')}")
    click.echo(f"  Valid until:        {validity}")


@click.command()
@FORMAT
def status(fmt: str) -> None:
    """Show who you are logged in as, your roles and logins, and until when."""
    _show(profile_status(), fmt)


@click.command()
def logout() -> None:
    """Remove your keys and certificates from this machine (and the kubeconfig
    contexts cgsh kube login wrote)."""
    kube_logout()
    if remove_profile():
        click.echo("Logged out.")
    else:
        click.echo("Not logged in.")


def register(cli: click.Group) -> None:
    cli.add_command(login)
    cli.add_command(status)
    cli.add_command(logout)
