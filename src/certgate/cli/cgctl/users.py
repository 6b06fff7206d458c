"""`cgctl users add|ls|rm|reset|unlock|update`."""

from __future__ import annotations

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import FORMAT, print_json, table


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@click.group()
def users() -> None:
    """Manage users."""


@users.command("add")
@click.argument("name")
@click.option("--roles", required=True, help="Roles, comma-separated (e.g. access,editor).")
@click.option("--logins", help="Unix logins the user may use, comma-separated.")
@click.option("--kubernetes-groups", help="Kubernetes groups, comma-separated.")
@click.option("--kubernetes-users", help="Kubernetes users, comma-separated.")
@click.pass_context
def add(
    ctx: click.Context,
    name: str,
    roles: str,
    logins: str | None,
    kubernetes_groups: str | None,
    kubernetes_users: str | None,
) -> None:
    """Create a user and print the invite link (valid for 1 hour)."""
    traits = {
        key: values
        for key, values in (
            ("logins", _split(logins)),
            ("kubernetes_groups", _split(kubernetes_groups)),
            ("kubernetes_users", _split(kubernetes_users)),
        )
        if values
    }
    result = api(ctx).call(
        "POST", "/users", json={"name": name, "roles": _split(roles), "traits": traits}
    )
    click.echo(f'User "{name}" has been created but needs a password and a one-time code.')
    click.echo("Share this link with them; it is valid for 1 hour:\n")
    click.echo(result["invite_url"])


@users.command("ls")
@FORMAT
@click.pass_context
def ls(ctx: click.Context, fmt: str) -> None:
    """List users."""
    items = api(ctx).call("GET", "/resources/user")
    if fmt == "json":
        print_json(items)
        return
    rows = [
        (
            u["metadata"]["name"],
            u["spec"]["roles"],
            u["spec"]["traits"].get("logins", []),
            "active" if u["status"]["active"] else "invited",
        )
        for u in items
    ]
    click.echo(table(["User", "Roles", "Logins", "Status"], rows))


@users.command("rm")
@click.argument("name")
@click.pass_context
def rm(ctx: click.Context, name: str) -> None:
    """Delete a user and cut the certificates they hold, everywhere."""
    api(ctx).call("DELETE", f"/resources/user/{name}")
    click.echo(f'User "{name}" has been deleted.')


@users.command("reset")
@click.argument("name")
@click.pass_context
def reset(ctx: click.Context, name: str) -> None:
    """Clear a user's password and one-time code; print a new invite link."""
    result = api(ctx).call("POST", f"/users/{name}/reset")
    click.echo(f'User "{name}" has been reset. Share this link (valid for 1 hour):\n')
    click.echo(result["invite_url"])


@users.command("update")
@click.argument("name")
@click.option("--set-roles", help="The user's roles from now on, comma-separated.")
@click.option("--set-logins", help="The user's Unix logins from now on, comma-separated.")
@click.option("--set-kubernetes-groups", help="The user's Kubernetes groups, comma-separated.")
@click.option("--set-kubernetes-users", help="The user's Kubernetes users, comma-separated.")
@click.pass_context
def update(
    ctx: click.Context,
    name: str,
    set_roles: str | None,
    set_logins: str | None,
    set_kubernetes_groups: str | None,
    set_kubernetes_users: str | None,
) -> None:
    """Change a user's roles or traits. Taking anything away cuts the certificates the
    user holds now, everywhere (live sessions too); a new `cgsh login` works at once."""
    body: dict[str, object] = {}
    if set_roles is not None:
        body["roles"] = _split(set_roles)
    traits = {
        key: _split(value)
        for key, value in (
            ("logins", set_logins),
            ("kubernetes_groups", set_kubernetes_groups),
            ("kubernetes_users", set_kubernetes_users),
        )
        if value is not None
    }
    if traits:
        body["traits"] = traits
    if not body:
        raise click.UsageError("give at least one of --set-roles, --set-logins, --set-kubernetes-*")
    user = api(ctx).call("PATCH", f"/users/{name}", json=body)
    click.echo(
        f'User "{name}" has been updated: roles {", ".join(user["spec"]["roles"]) or "(none)"}.'
    )


@users.command("unlock")
@click.argument("name")
@click.pass_context
def unlock(ctx: click.Context, name: str) -> None:
    """Lift the lockout that repeated failed logins put on a user name."""
    api(ctx).call("POST", f"/users/{name}/unlock")
    click.echo(f'User "{name}" may log in again.')
