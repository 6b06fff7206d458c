"""A name that is no command says what was likely meant, or where that lives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("tool", "argv", "said"),
    [
        ("cgctl", ["locks", "ls"], "No such command 'locks': cgctl get lock lists them"),
        ("cgctl", ["roles"], "No such command 'roles': cgctl get roles lists them"),
        ("cgctl", ["unlock", "--user=bob"], "No such command 'unlock': cgctl rm lock/NAME lifts"),
        ("cgctl", ["tokns", "ls"], "No such command 'tokns': did you mean cgctl tokens?"),
        ("cgsh", ["lss"], "No such command 'lss': did you mean cgsh ls?"),
        ("cgctl", ["xyzzy"], "No such command 'xyzzy'."),
    ],
)
def test_an_unknown_command_says_what_was_meant(
    tool: str, argv: list[str], said: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(BIN / tool), *argv],
        capture_output=True, text=True, timeout=60,
        env={"CERTGATE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"Error: {said}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
