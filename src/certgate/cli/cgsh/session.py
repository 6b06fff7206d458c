"""`cgsh login|status|logout`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from certgate.cli.common import DURATION, FORMAT, print_json
from certgate.errors import NotFound

# The client modules are imported in the commands: they bring httpx and cryptography,
# which `cgsh --help` and the other subcommands do not need.
if TYPE_CHECKING:
    from certgate.client.profile import Profile


@click.command()
@click.option(
    "--proxy",
    help="The proxy: https://HOST:PORT or HOST:PORT (default: the last login's).",
)
@click.option("--user", help="Your certgate user name (default: the last login's).")
@click.option("--otp", help="The one-time code (prompted when not given).")
@click.option(
    "--ttl",
    type=DURATION,
    help="How long the certificates should last (e.g. 8h); roles may cap it.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="First login to a proxy with a self-signed certificate: trust the certificate it "
    "shows now, and only that one afterwards (it is pinned in the profile).",
)
@click.option(
    "--request-id", help="Assume this approved access request (waits while it is pending)."
)
@click.option("--request-reason", default="", help="Why, when your roles make login request.")
@click.argument("cluster", required=False)
def login(
    cluster: str | None,
    proxy: str | None,
    user: str | None,
    otp: str | None,
    ttl: str | None,
    insecure: bool,
    request_id: str | None,
    request_reason: str,
) -> None:
    """Log in with password and one-time code; keys and certificates go to ~/.certgate.

    With no flags, logs in again to the last proxy as the last user. With --proxy of
    another cluster, adds it (`cgsh status` lists every cluster); `cgsh login CLUSTER`
    switches back to one, asking for the password only when its certificates expired.
    """
    from certgate.cli.cgsh.request import assume_after_login, request_at_login
    from certgate.client.login import last_login, proxy_address, reach
    from certgate.client.login import login as do_login
    from certgate.client.profile import find_profile, switch_to

    if cluster:
        if proxy:
            raise click.UsageError("give a CLUSTER to switch to, or --proxy, not both")
        known = find_profile(cluster)
        if known is None:
            raise NotFound(
                f'no login to cluster "{cluster}" on this machine: '
                "cgsh login --proxy=HOST:PORT --user=NAME"
            )
        if not (user or ttl or request_id) and _still_valid(known):
            switch_to(known.proxy)
            _show(profile_status(), "text")
            return
        proxy, user = known.proxy, user or known.user
    if not proxy or not user:
        last = last_login()
        proxy = proxy or last.proxy
        user = user or last.user
    # The proxy is reached and its certificate checked before any secret is asked for.
    contact = reach(proxy_address(proxy), insecure)
    try:
        if sys.stdin.isatty():
            password = click.prompt(f"Password for {user}", hide_input=True)
        else:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise click.UsageError(
                    "no password on standard input: pipe it in, or run cgsh login in a terminal"
                )
        if not otp:
            if not sys.stdin.isatty():
                raise click.UsageError("pass --otp when the password comes from standard input")
            otp = click.prompt("One-time code")
        terms: dict[str, Any] = {}
        profile = do_login(contact, user, password, otp, ttl, terms)
    finally:
        contact.close()
    if request_id:
        assume_after_login(profile, request_id)
    elif terms.get("roles"):
        if terms.get("reason_required") and not request_reason.strip():
            request_reason = _reason_for(str(terms.get("prompt") or ""))
        request_at_login(profile, list(terms["roles"]), request_reason)
    _show(profile_status(), "text")


def _reason_for(prompt: str) -> str:
    """The reason the roles require for the request a login makes: asked for in a
    terminal, else the flag it needs."""
    asked = f" ({prompt})" if prompt else ""
    if not sys.stdin.isatty():
        raise click.UsageError(
            f"your roles require a reason for access requests{asked}: "
            "cgsh login --request-reason=..."
        )
    reason = str(click.prompt(f"Reason for the access request{asked}")).strip()
    if not reason:
        raise click.UsageError("your roles require a reason for access requests")
    return reason


def _still_valid(profile: Profile) -> bool:
    from certgate.client.profile import NotLoggedIn, load_profile, parked_identity

    try:
        current = profile.proxy == load_profile().proxy
    except NotLoggedIn:  # logged out of the current cluster: the parked ones remain
        current = False
    identity = profile.identity() if current else parked_identity(profile)
    return identity is not None and identity.bundle.identity.expires > datetime.now(UTC)


def other_clusters() -> list[dict[str, object]]:
    """The clusters logged in to besides the current one, for `cgsh status`."""
    from certgate.client.profile import parked_identity, parked_profiles

    found: list[dict[str, object]] = []
    for profile in parked_profiles():
        identity = parked_identity(profile)
        expires = identity.bundle.identity.expires if identity else None
        found.append(
            {
                "cluster": profile.cluster,
                "proxy": profile.proxy,
                "user": profile.user,
                "valid_until": expires.isoformat() if expires else None,
                "expired": expires is None or expires <= datetime.now(UTC),
            }
        )
    return found


def profile_status() -> dict[str, object]:
    from certgate.client.profile import load_profile

    profile = load_profile()
    bundle = profile.identity().bundle
    identity = bundle.identity
    grants: list[dict[str, Any]] = []
    if identity.request_ids:  # only then is auth asked (and its client imported)
        from certgate.client.requests import grant_status

        grants = grant_status(profile, identity.request_ids)
    return {
        "proxy": profile.proxy,
        "cluster": profile.cluster,
        "user": identity.username,
        "roles": list(identity.roles),
        "logins": list(identity.logins),
        "kubernetes_groups": bundle.kubernetes_groups,
        "kubernetes_users": bundle.kubernetes_users,
        "valid_until": identity.expires.isoformat(),
        "expired": identity.expires <= datetime.now(UTC),
        "access_requests": grants,
        "resources": list(identity.resources),
        "other_clusters": other_clusters(),
    }


def _show(status: dict[str, object], fmt: str) -> None:
    from certgate.cli.cgsh.request import describe_grant

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
    if status.get("kubernetes_users"):
        click.echo(f"  Kubernetes users:   {joined('kubernetes_users')}")
    click.echo(f"  Valid until:        {validity}")
    requests = status.get("access_requests")
    for grant in requests if isinstance(requests, list) else []:
        click.echo(f"  Access request:     {describe_grant(grant)}")
    if status.get("resources"):
        click.echo(f"  Limited to:         {joined('resources')}")
    others = status.get("other_clusters")
    for other in others if isinstance(others, list) else []:
        state = "EXPIRED" if other["expired"] else f"valid until {other['valid_until']}"
        click.echo(
            f"\n  Profile URL:        https://{other['proxy']}\n"
            f"  Cluster:            {other['cluster']} (cgsh login {other['cluster']})\n"
            f"  Logged in as:       {other['user']} [{state}]"
        )


@click.command()
@FORMAT
def status(fmt: str) -> None:
    """Show who you are logged in as, your roles and logins, and until when."""
    from certgate.client.profile import NotLoggedIn

    try:
        current = profile_status()
    except NotLoggedIn as exc:
        others = [str(o["cluster"]) for o in other_clusters()]
        if not others:
            raise
        # Logged out of the current cluster, still logged in to others: say how back.
        raise NotLoggedIn(
            f"{exc.message}; or switch to a cluster you are logged in to: "
            + ", ".join(f"cgsh login {name}" for name in others)
        ) from None
    _show(current, fmt)


@click.command()
def logout() -> None:
    """Remove your keys and certificates for the current cluster from this machine (and
    the kubeconfig contexts cgsh kube login wrote for it)."""
    from certgate.client.kube import logout as kube_logout
    from certgate.client.profile import NotLoggedIn, load_profile, remove_profile

    try:
        kube_logout(load_profile().cluster)
    except NotLoggedIn:
        pass  # no current cluster: the kubeconfig entries are other clusters'
    if remove_profile():
        click.echo("Logged out.")
    else:
        click.echo("Not logged in.")
