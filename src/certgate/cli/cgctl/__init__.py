"""`cgctl`: the admin tool. One module per noun; this one names them.

Subcommands are imported on first use (cli/lazy.py): `cgctl users ls` does not pay for
the resource models `cgctl create` needs.
"""

from __future__ import annotations

from pathlib import Path

import click

from certgate.cli.common import run
from certgate.cli.completion import completion_command
from certgate.cli.lazy import LazyGroup

_PACKAGE = "certgate.cli.cgctl"
COMMANDS = {
    "status": f"{_PACKAGE}.status:status",
    "users": f"{_PACKAGE}.users:users",
    "tokens": f"{_PACKAGE}.tokens:tokens",
    "create": f"{_PACKAGE}.resources:create",
    "get": f"{_PACKAGE}.resources:get",
    "rm": f"{_PACKAGE}.resources:rm",
    "auth": f"{_PACKAGE}.authority:auth",
    "audit": f"{_PACKAGE}.audit:audit",
    "lock": f"{_PACKAGE}.locks:lock",
    "nodes": f"{_PACKAGE}.nodes:nodes",
    "requests": f"{_PACKAGE}.requests:requests",
    "access": f"{_PACKAGE}.access:access",
    "activity": f"{_PACKAGE}.access:activity",
}

# Names people reach for that are no cgctl command, and what does that here.
HINTS = {
    "locks": "cgctl get lock lists them, cgctl lock makes one, cgctl rm lock/NAME lifts one",
    "unlock": "cgctl rm lock/NAME lifts a lock (cgctl get lock lists them)",
    "roles": "cgctl get roles lists them, cgctl create -f FILE makes or changes one",
    "recordings": "recordings are cgsh's: cgsh recordings ls, cgsh play ID",
    "sessions": "live sessions are cgsh's: cgsh sessions ls, cgsh join ID",
}

# Options of cgctl itself that people also type after the subcommand
# (`cgctl users ls --data-dir ./data`); no subcommand has options of these names.
GLOBAL_OPTIONS = ("--data-dir", "--config")


class AdminGroup(LazyGroup):
    """Takes the global options wherever they appear, before any `--`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))


def hoist_global_options(args: list[str]) -> list[str]:
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_OPTIONS and i + 1 < len(args):
            front.extend(args[i : i + 2])
            i += 2
            continue
        if arg.startswith(tuple(f"{name}=" for name in GLOBAL_OPTIONS)):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


@click.group(
    cls=AdminGroup,
    lazy=COMMANDS,
    hints=HINTS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar="CERTGATE_DATA_DIR",
    help="The auth server's data dir (its admin identity). Default: the standard data "
    "dir if it has one, else your cgsh login.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="certgate.yaml of the auth server (its data_dir is used).",
)
@click.version_option("0.1.0", prog_name="cgctl")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, config_path: Path | None) -> None:
    """Administer a certgate cluster: users, roles, tokens, locks, audit."""
    if config_path and not data_dir:
        data_dir = _data_dir_from_config(config_path)
    ctx.obj = data_dir


def _data_dir_from_config(path: Path) -> Path | None:
    import yaml  # only with --config: most commands never read YAML

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from exc
    value = data.get("data_dir") if isinstance(data, dict) else None
    return Path(value) if value else None


cli.add_command(completion_command("cgctl"))

main = run(cli)
