"""`cgctl lock`: cut an identity off, now and until the lock expires or is removed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import DURATION
from certgate.errors import BadParameter, NotFound

if TYPE_CHECKING:
    from certgate.client.cluster import ClusterAPI

TARGETS = ("user", "role", "login", "node", "access_request", "mfa_device")
# Targets whose existence the cluster can confirm; a login or an MFA device is not a
# stored resource, so a lock on one is taken as given.
CHECKED = ("user", "role", "node")


@click.command()
@click.option("--user", help="Lock this user.")
@click.option("--role", help="Lock everyone holding this role.")
@click.option("--login", help="Lock this Unix login everywhere.")
@click.option("--node", help="Lock this node: no sessions on it.")
@click.option("--access-request", "access_request", help="Lock this access request's grant.")
@click.option("--mfa-device", "mfa_device", help="Lock this MFA device.")
@click.option(
    "--ttl", type=DURATION, help="Lift the lock after this long (e.g. 10m). Default: never."
)
@click.option("--expires", help="Lift the lock at this RFC 3339 time.")
@click.option("--message", default="", help="What the locked-out user reads.")
@click.option(
    "--force",
    is_flag=True,
    help="Lock a user, role or node that does not exist (yet): no check that it does.",
)
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
    force: bool,
) -> None:
    """Lock out a user, role, login, node or access request: new access is refused and
    live sessions that match end at once."""
    # The resource models (pydantic) only when a lock is made, not for `cgctl --help`.
    from certgate.api.codec import to_dict
    from certgate.api.duration import parse_duration
    from certgate.api.lock import Lock, LockSpec, LockTarget
    from certgate.api.meta import Metadata

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
        if until <= datetime.now(UTC):
            raise BadParameter(f'--expires "{expires}" has passed: give a time in the future')
    LockTarget.model_validate(chosen)  # names checked before any of them goes in a URL
    cluster = api(ctx)
    if not force:
        chosen = _checked_targets(cluster, chosen)
    resource = Lock(
        metadata=Metadata(name=str(uuid.uuid4()), expires=until),
        spec=LockSpec(
            target=LockTarget.model_validate(chosen), message=message, created=datetime.now(UTC)
        ),
    )
    cluster.call("POST", "/resources", json={"resource": to_dict(resource)})
    target = ", ".join(f"{k}={v}" for k, v in chosen.items())
    lifetime = f" until {until.isoformat()}" if until else ""
    click.echo(f"Created a lock with name {resource.name!r} for {target}{lifetime}.")


def _checked_targets(cluster: ClusterAPI, chosen: dict[str, str]) -> dict[str, str]:
    """The target as the cluster names it, or NotFound: a typo would otherwise lock
    nobody and look like it worked. An access request id may be any unique prefix."""
    from certgate.client.resources import require, resolve

    ((kind, name),) = chosen.items()
    if kind == "access_request":
        return {kind: resolve(cluster, kind, name)}
    if kind in CHECKED:
        try:
            require(cluster, kind, name)
        except NotFound as exc:
            raise NotFound(f"{exc.message} (--force locks it anyway)") from None
    return chosen
