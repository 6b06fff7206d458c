"""`cgctl lock`: cut an identity off, now and until the lock expires or is removed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import click

from certgate.api.codec import to_dict
from certgate.api.duration import parse_duration
from certgate.api.lock import Lock, LockSpec, LockTarget
from certgate.api.meta import Metadata
from certgate.cli.cgctl._connect import api
from certgate.errors import BadParameter

TARGETS = ("user", "role", "login", "node", "access_request", "mfa_device")


@click.command()
@click.option("--user", help="Lock this user.")
@click.option("--role", help="Lock everyone holding this role.")
@click.option("--login", help="Lock this Unix login everywhere.")
@click.option("--node", help="Lock this node: no sessions on it.")
@click.option("--access-request", "access_request", help="Lock this access request's grant.")
@click.option("--mfa-device", "mfa_device", help="Lock this MFA device.")
@click.option("--ttl", help="Lift the lock after this long (e.g. 10m). Default: never.")
@click.option("--expires", help="Lift the lock at this RFC 3339 time.")
@click.option("--message", default="", help="What the locked-out user reads.")
@click.pass_context
def lock(
    ctx: click.Context,
    user: str | None,
    role: str | None,
    login: str | None,
    node: str | None,
    access_request: str | None,
    mfa_device: str | None,
    ttl: str | None,
    expires: str | None,
    message: str,
) -> None:
    """Lock out a user, role, login, node or access request: new access is refused and
    live sessions that match end at once."""
    chosen = {
        name: value
        for name, value in zip(
            TARGETS, (user, role, login, node, access_request, mfa_device), strict=True
        )
        if value
    }
    if len(chosen) != 1:
        raise click.UsageError(
            "name exactly one target: --user, --role, --login, --node, --access-request "
            "or --mfa-device"
        )
    if ttl and expires:
        raise click.UsageError("give --ttl or --expires, not both")
    until = None
    if ttl:
        until = datetime.now(UTC) + parse_duration(ttl)
    elif expires:
        try:
            until = datetime.fromisoformat(expires)
        except ValueError as exc:
            raise BadParameter(f'invalid --expires "{expires}": use RFC 3339') from exc
        if until.tzinfo is None:
            raise BadParameter(f'--expires "{expires}" needs a time zone (e.g. Z or +02:00)')
    resource = Lock(
        metadata=Metadata(name=str(uuid.uuid4()), expires=until),
        spec=LockSpec(
            target=LockTarget.model_validate(chosen), message=message, created=datetime.now(UTC)
        ),
    )
    api(ctx).call("POST", "/resources", json={"resource": to_dict(resource)})
    target = ", ".join(f"{k}={v}" for k, v in chosen.items())
    lifetime = f" until {until.isoformat()}" if until else ""
    click.echo(f"Created a lock with name {resource.name!r} for {target}{lifetime}.")


def register(cli: click.Group) -> None:
    cli.add_command(lock)
