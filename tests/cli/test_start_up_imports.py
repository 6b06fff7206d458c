"""cgsh and cgctl start without the heavy libraries a command may not need.

Every `cgsh`/`cgctl` run, kubectl's `cgsh kube credentials` among them, used to import
httpx, cryptography, pydantic, yaml and every subcommand module before doing anything
(about a third of a second). Now the group names its subcommands (cli/lazy.py) and each
module imports its client code inside the commands. These tests run the real entry points
in a fresh interpreter and look at `sys.modules`: a regression guard, not a timing.
"""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from certgate.cli import cgctl, cgsh

HEAVY = ("httpx", "cryptography", "pydantic", "yaml", "asyncssh", "aiohttp", "certgate.client")


def _loaded_after(prog: str, *argv: str) -> list[str]:
    """The HEAVY modules in `sys.modules` once `prog argv...` has run (its own exit)."""
    probe = (
        "import sys\n"
        f"sys.argv = [{prog!r}, *{list(argv)!r}]\n"
        f"from certgate.cli.{prog} import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"loaded = [h for h in {HEAVY!r} if any(m == h or m.startswith(h + '.') "
        "for m in sys.modules)]\n"
        "print(' '.join(loaded), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stderr.strip().splitlines()[-1].split() if out.stderr.strip() else []


@pytest.mark.parametrize("prog", ["cgsh", "cgctl"])
@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["completion", "bash"]])
def test_help_version_and_completion_import_none_of_them(prog: str, argv: list[str]) -> None:
    assert _loaded_after(prog, *argv) == []


def test_zsh_completion_of_every_subcommand_imports_none_of_them() -> None:
    # zsh asks each subcommand for its short help: every subcommand module is imported.
    env_probe = (
        "import os, sys\n"
        "os.environ.update(_CGSH_COMPLETE='zsh_complete', COMP_WORDS='cgsh ', COMP_CWORD='1')\n"
        "from certgate.cli.cgsh import cli\n"
        "try:\n"
        "    cli(prog_name='cgsh')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'certgate.cli.cgsh.kube' in sys.modules\n"
        f"print([h for h in {HEAVY!r} if h in sys.modules], file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", env_probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "kube" in out.stdout  # the completion named the subcommands
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_kubectls_credential_plugin_imports_none_of_them() -> None:
    # It reads files only: the lean client.kube_credentials module, nothing else.
    assert _loaded_after("cgsh", "kube", "credentials") == ["certgate.client"]


def test_the_probe_sees_them_when_a_command_needs_them() -> None:
    # The control: a command that talks to the cluster imports the client and httpx,
    # so the tests above would see a heavy import that crept back into start-up.
    loaded = _loaded_after("cgsh", "ls")
    assert {"httpx", "certgate.client"} <= set(loaded)


@pytest.mark.parametrize("group", [cgsh.cli, cgctl.cli], ids=["cgsh", "cgctl"])
def test_every_named_subcommand_is_the_command_of_that_name(group: click.Group) -> None:
    ctx = click.Context(group)
    names = group.list_commands(ctx)
    assert "completion" in names
    for name in names:
        command = group.get_command(ctx, name)
        assert isinstance(command, click.Command)
        assert command.name == name
