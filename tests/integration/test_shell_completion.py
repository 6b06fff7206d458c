"""Shell completion for cgsh and cgctl: scripts for bash, zsh and fish, and a real bash
that sources one completes subcommands."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.cluster import BIN, run


@pytest.mark.parametrize("prog", ["cgsh", "cgctl"])
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_a_completion_script_for_each_shell(prog: str, shell: str) -> None:
    script = run([str(BIN / prog), "completion", shell]).stdout
    assert f"_{prog.upper()}_COMPLETE" in script
    assert f"_{prog}_completion" in script
    checker = shutil.which(shell)
    if checker and shell != "fish":  # `fish -n` also exists, but fish may not be installed
        subprocess.run([checker, "-n"], input=script, text=True, check=True)


@pytest.mark.parametrize(
    ("prog", "typed", "expected"),
    [("cgsh", "lo", {"login", "logout"}), ("cgctl", "us", {"users"})],
)
def test_bash_completes_subcommands(prog: str, typed: str, expected: set[str]) -> None:
    program = f"""
        export PATH="{BIN}:$PATH"
        source <({prog} completion bash)
        COMP_WORDS=({prog} {typed}); COMP_CWORD=1
        _{prog}_completion {prog}
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    assert expected <= set(out.stdout.split()), out
