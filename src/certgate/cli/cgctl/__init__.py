"""`cgctl`: the admin tool. One module per noun; this one wires them together."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from certgate.cli.cgctl import (
    access,
    audit,
    authority,
    locks,
    nodes,
    requests,
    resources,
    status,
    tokens,
    users,
)
from certgate.cli.common import run
from certgate.cli.completion import completion_command

# Options of cgctl itself that people also type after the subcommand
# (`cgctl users ls --data-dir ./data`); no subcommand has options of these names.
GLOBAL_OPTIONS = ("--data-dir", "--config")


class AdminGroup(click.Group):
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


@click.group(cls=AdminGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--config") from exc
    value = data.get("data_dir") if isinstance(data, dict) else None
    return Path(value) if value else None


for module in (status, users, tokens, resources, authority, audit, locks, nodes, requests, access):
    module.register(cli)

cli.add_command(completion_command("cgctl"))

main = run(cli)
