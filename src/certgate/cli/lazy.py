"""A click group that imports a subcommand's module only when that subcommand is used.

Every cgsh/cgctl run used to import all of its subcommand modules, and through them
httpx, cryptography and the pydantic resource models, before doing anything: about a
third of a second, paid again by every `cgsh ls` and every `cgsh kube credentials`
kubectl runs. With this group, `cgsh ls` imports only the module that holds `ls`.

    LazyGroup(commands={"ls": "certgate.cli.cgsh.ssh:ls", ...})
        list_commands  the names, sorted (nothing imported: bash completion, usage)
        get_command    imports "module:attribute" the first time NAME is asked for

`--help` and zsh/fish completion still ask every listed command for its short help,
so they import every module: the subcommand modules keep their own heavy imports
inside the functions that need them, so that stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

import click


class LazyGroup(click.Group):
    """A group whose subcommands are named up front and imported on first use.

    A name that is no command gets the command it most likely meant, or for a name
    people expect (`cgctl locks`) what does that here (`hints`)."""

    def __init__(
        self,
        *args: Any,
        lazy: Mapping[str, str] | None = None,
        hints: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})
        self._hints = dict(hints or {})

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        # Not while completing a word (resilient parsing): click gives up quietly there.
        unknown = args and not name.startswith("-") and self.get_command(ctx, name) is None
        if unknown and not ctx.resilient_parsing:
            hint = self._hints.get(name)
            if hint is None:
                close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
                hint = f"did you mean {ctx.command_path} {close[0]}?" if close else None
            if hint is not None:
                ctx.fail(f"No such command {name!r}: {hint}")
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self._lazy.get(cmd_name)
        if target is not None and cmd_name not in self.commands:
            self.add_command(_load(target, cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


def _load(target: str, name: str) -> click.Command:
    module_name, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    # A wrong table entry is our bug, found by the test that runs every `--help`.
    if not isinstance(command, click.Command):
        raise TypeError(f"{target} (command {name!r}) is not a click command")
    return command
