"""`cgsh completion SHELL` and `cgctl completion SHELL`: click's own shell completion
script, printed so it can be sourced (`eval "$(cgsh completion bash)"`)."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")


def completion_command(prog: str) -> click.Command:
    @click.command("completion")
    @click.argument("shell", type=click.Choice(SHELLS))
    @click.pass_context
    def completion(ctx: click.Context, shell: str) -> None:
        """Print the shell completion script for SHELL (bash, zsh or fish)."""
        kind = get_completion_class(shell)
        assert kind is not None  # every one of SHELLS is built into click
        root = ctx.find_root().command
        var = f"_{prog.upper()}_COMPLETE"
        click.echo(kind(root, {}, prog, var).source())

    return completion
