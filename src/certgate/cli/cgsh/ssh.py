"""`cgsh ls|ssh|scp|config`: reach nodes through the proxy with OpenSSH."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import click

from certgate.cli.common import FORMAT, print_json, table
from certgate.errors import AccessDenied, BadParameter, NotFound

# The client modules are imported in the commands: they bring httpx and cryptography,
# which `cgsh --help` does not need, and `cgsh ls` needs no access-request code.
if TYPE_CHECKING:
    from certgate.client.profile import Profile


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f'"{pair}": filter nodes with key=value', param_hint="LABELS")
        labels[key] = value
    return labels


def _shown(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


@click.command("ls")
@click.argument("labels", nargs=-1)
@click.option("-v", "--verbose", is_flag=True, help="Show each node's id and hostname too.")
@FORMAT
def ls(labels: tuple[str, ...], verbose: bool, fmt: str) -> None:
    """List the nodes you can reach, optionally only those with labels k=v."""
    # This process ends once it printed: the cyclic collector would only walk, several
    # times over while they are decoded, the objects of 10,000 nodes that all live until
    # then (a third of the decoding and printing time; nothing here makes cycles to free).
    gc.disable()
    from certgate.client.profile import load_profile
    from certgate.client.ssh import list_node_rows, list_nodes

    if fmt == "json":
        print_json(list_nodes(load_profile(), _labels(labels)))
        return
    nodes = list_node_rows(load_profile(), _labels(labels))
    if verbose:
        # The id tells apart nodes that share an address or a hostname: `cgsh ssh ID`.
        wide = [(n.name, n.hostname, n.addr, n.labels) for n in nodes]
        click.echo(table(["Node ID", "Hostname", "Address", "Labels"], wide))
        return
    rows = [(n.name, n.addr, n.labels) for n in nodes]
    click.echo(table(["Node", "Address", "Labels"], rows))


def openssh_binary(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise BadParameter(f"{tool} (OpenSSH client) is not installed: install openssh-client")
    return path


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-l", "login", help="Log in as this Unix user.")
@click.option("-L", "local_forwards", multiple=True, help="Local port forward (as ssh -L).")
@click.option("-R", "remote_forwards", multiple=True, help="Remote port forward (as ssh -R).")
@click.option("-N", "no_command", is_flag=True, help="Run no command (forwarding only).")
@click.option("-A", "agent", is_flag=True, help="Forward your ssh agent (if roles allow).")
@click.option("-t", "force_tty", is_flag=True, help="Force a terminal.")
@click.option("-T", "no_tty", is_flag=True, help="No terminal.")
@click.argument("target")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(
    login: str | None,
    local_forwards: tuple[str, ...],
    remote_forwards: tuple[str, ...],
    no_command: bool,
    agent: bool,
    force_tty: bool,
    no_tty: bool,
    target: str,
    command: tuple[str, ...],
) -> None:
    """Open a shell or run COMMAND on a node: [LOGIN@]NODE, or LOGIN@k=v for every
    node with that label."""
    from certgate.client.profile import load_profile
    from certgate.client.ssh import check_access, split_target, write_config

    if target.startswith("-"):
        # An option cgsh does not know lands here (the command's own options, after the
        # target, pass through as they are).
        raise click.UsageError(
            f"no such option: {target} (cgsh ssh takes -l, -L, -R, -N, -A, -t and -T; "
            "for any other, use ssh itself with the config from cgsh config)"
        )
    profile = load_profile()
    user, node = split_target(target, login)
    options: list[str] = []
    for spec in local_forwards:
        options += ["-L", spec]
    for spec in remote_forwards:
        options += ["-R", spec]
    for flag, on in (("-N", no_command), ("-A", agent), ("-t", force_tty), ("-T", no_tty)):
        if on:
            options.append(flag)
    if "=" in node:
        sys.exit(_run_on_matching(profile, user, _labels((node,)), options, command))
    try:
        found = check_access(profile, node, user)
    except (AccessDenied, NotFound) as exc:
        from certgate.client.requests import with_request_hint

        raise with_request_hint(profile, node, user, exc) from None
    name = found["metadata"]["name"]
    config = write_config(profile, [name])
    argv = [openssh_binary("ssh"), "-F", str(config), *options, "-l", user, name, *command]
    os.execv(argv[0], argv)


def _run_on_matching(
    profile: Profile,
    user: str,
    labels: dict[str, str],
    options: list[str],
    command: tuple[str, ...],
) -> int:
    from certgate.client.ssh import check_access, list_node_rows, write_config

    if not command:
        raise click.UsageError("give a command to run on every matching node")
    nodes = [n.name for n in list_node_rows(profile, labels)]
    if not nodes:
        raise BadParameter(f"no node you can reach has labels {_shown(labels)}")
    config = write_config(profile, nodes)
    worst = 0
    for name in nodes:
        check_access(profile, name, user)
        result = subprocess.run(
            [openssh_binary("ssh"), "-F", str(config), *options, "-T", "-l", user, name, *command],
            capture_output=True, text=True,
        )  # fmt: skip
        for line in result.stdout.splitlines():
            click.echo(f"[{name}] {line}")
        for line in result.stderr.splitlines():
            click.echo(f"[{name}] {line}", err=True)
        worst = max(worst, result.returncode)
    return worst


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-r", "recursive", is_flag=True, help="Copy directories recursively.")
@click.argument("paths", nargs=-1, required=True)
def scp(recursive: bool, paths: tuple[str, ...]) -> None:
    """Copy files to or from nodes: cgsh scp [-r] SRC... DST (remote: LOGIN@NODE:PATH)."""
    if len(paths) < 2:
        raise click.UsageError("give at least one source and a destination")
    from certgate.client.profile import load_profile
    from certgate.client.ssh import check_access, split_target, write_config

    profile = load_profile()
    nodes: list[str] = []
    for path in paths:
        remote, colon, _ = path.partition(":")
        if colon and "/" not in remote:
            login, node = split_target(remote, None)
            nodes.append(check_access(profile, node, login)["metadata"]["name"])
    if not nodes:
        raise click.UsageError("one side must be remote: LOGIN@NODE:PATH")
    config = write_config(profile, nodes)
    argv = [openssh_binary("scp"), "-F", str(config), "-q"]
    if recursive:
        argv.append("-r")
    argv += list(paths)
    os.execv(argv[0], argv)


@click.command()
def config() -> None:
    """Print an OpenSSH client config: then plain ssh, scp, sftp and rsync work."""
    from certgate.client.profile import load_profile
    from certgate.client.ssh import list_node_rows, openssh_config

    profile = load_profile()
    names = [n.name for n in list_node_rows(profile)]
    click.echo(openssh_config(profile, names), nl=False)
