"""`cgsh`: the user's tool. One module per noun; this one wires them together."""

from __future__ import annotations

import click

from certgate.cli.cgsh import kube, recordings, request, session, sessions, ssh
from certgate.cli.common import run
from certgate.cli.completion import completion_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="cgsh")
def cli() -> None:
    """Log in to a certgate cluster and reach its servers."""


session.register(cli)
ssh.register(cli)
recordings.register(cli)
sessions.register(cli)
request.register(cli)
kube.register(cli)

cli.add_command(completion_command("cgsh"))

main = run(cli)
