"""`cgsh`: the user's tool. One module per noun; this one names them.

Subcommands are imported on first use (cli/lazy.py): `cgsh ls` does not pay for the
modules of `cgsh kube` or `cgsh play`.
"""

from __future__ import annotations

import click

from certgate.cli.common import run
from certgate.cli.completion import completion_command
from certgate.cli.lazy import LazyGroup

_PACKAGE = "certgate.cli.cgsh"
COMMANDS = {
    "login": f"{_PACKAGE}.session:login",
    "status": f"{_PACKAGE}.session:status",
    "logout": f"{_PACKAGE}.session:logout",
    "ls": f"{_PACKAGE}.ssh:ls",
    "ssh": f"{_PACKAGE}.ssh:ssh",
    "scp": f"{_PACKAGE}.ssh:scp",
    "config": f"{_PACKAGE}.ssh:config",
    "recordings": f"{_PACKAGE}.recordings:recordings",
    "play": f"{_PACKAGE}.recordings:play_command",
    "sessions": f"{_PACKAGE}.sessions:sessions",
    "join": f"{_PACKAGE}.sessions:join",
    "request": f"{_PACKAGE}.request:request",
    "kube": f"{_PACKAGE}.kube:kube",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="cgsh")
def cli() -> None:
    """Log in to a certgate cluster and reach its servers."""


cli.add_command(completion_command("cgsh"))

main = run(cli)
