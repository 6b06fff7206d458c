"""`cgsh sessions ls` and `cgsh join ID`: live sessions, watched or shared."""

from __future__ import annotations

import os
from datetime import datetime

import click

from certgate.cli.cgsh.ssh import openssh_binary
from certgate.cli.common import FORMAT, print_json, table

# The client modules (httpx, cryptography) are imported in the commands that use them.


@click.group()
def sessions() -> None:
    """Live sessions."""


@sessions.command("ls")
@click.option("--node", help="Only sessions on this node.")
@FORMAT
def ls(node: str | None, fmt: str) -> None:
    """List live terminal sessions: yours, those you may join, or all if your roles allow."""
    from certgate.client.cluster import connect_profile
    from certgate.client.sessions import describe_participants, list_sessions

    api = connect_profile()
    try:
        found = list_sessions(api, node)
    finally:
        api.close()
    if fmt == "json":
        print_json(found)
        return
    rows = [
        (
            s["id"],
            s["user"],
            s["login"],
            s["node"],
            datetime.fromisoformat(s["started"]).strftime("%Y-%m-%d %H:%M:%S"),
            describe_participants(s),
            ",".join(s["join_modes"]),
        )
        for s in found
    ]
    click.echo(table(["ID", "User", "Login", "Node", "Started", "Joined", "You may join"], rows))


@click.command("join")
@click.argument("session_id", metavar="ID")
@click.option(
    "--mode",
    type=click.Choice(["observer", "peer"]),
    default="observer",
    show_default=True,
    help="observer: watch, read-only (Ctrl-C leaves); peer: type into the session too.",
)
def join(session_id: str, mode: str) -> None:
    """Join a live session (see `cgsh sessions ls`) as your roles' join_sessions allow.

    Everyone in the session sees who joined and how; joins are audited.
    """
    from certgate.client.cluster import connect_profile
    from certgate.client.profile import load_profile
    from certgate.client.sessions import join_target
    from certgate.client.ssh import jump_alias, write_config

    profile = load_profile()
    api = connect_profile(profile)
    try:
        target = join_target(api, session_id, mode)
    finally:
        api.close()
    # A Kubernetes session has no node: the proxy's SSH port relays it.
    host = jump_alias(profile) if target.at_proxy else target.node
    config = write_config(profile, [] if target.at_proxy else [host])
    argv = [openssh_binary("ssh"), "-F", str(config), "-t", "-l", target.login, host]
    os.execv(argv[0], argv)
