"""`cgsh ssh` with an ssh option it does not take says so, rather than looking for a
node named after the option (`error: node "-p" not found`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CGSH = str(Path(sys.executable).parent / "cgsh")


@pytest.mark.parametrize(
    ("argv", "unknown"),
    [(["-p", "2222", "root@web-1"], "-p"), (["-t", "-o", "X=y", "web-1"], "-o")],
)
def test_an_unknown_option_is_a_usage_error(argv: list[str], unknown: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [CGSH, "ssh", *argv],
        capture_output=True, text=True, timeout=60,
        env={"CERTGATE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"no such option: {unknown} " in result.stderr
    assert "cgsh config" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_commands_own_options_still_pass_through(tmp_path: Path) -> None:
    # After the target, `-la` is the command's: cgsh gets as far as the login check.
    result = subprocess.run(
        [CGSH, "ssh", "root@web-1", "ls", "-la"],
        capture_output=True, text=True, timeout=60,
        env={"CERTGATE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert "no such option" not in result.stderr
    assert "not logged in" in result.stderr
