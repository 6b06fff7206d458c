"""Output that cannot be written (a full disk) is one line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv", [["cgctl", "--help"], ["certgate", "configure"], ["cgsh", "--help"]]
)
def test_a_full_disk_is_one_line(argv: list[str]) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == "error: No space left on device\n"
