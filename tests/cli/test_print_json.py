"""`--format=json` prints the same document at a terminal and piped: indented for a
person, one line for a script (json's C encoder; indenting makes json use its slower
pure-Python one). Keys sorted either way, so scripts can diff outputs."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

DATA = {"b": [1, {"y": "é", "x": None}], "a": "text"}
PROBE = f"from certgate.cli.common import print_json\nprint_json({DATA!r})\n"


def test_piped_is_one_line_of_the_same_sorted_json() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    assert out == json.dumps(DATA, sort_keys=True) + "\n"
    assert out.count("\n") == 1


def test_at_a_terminal_it_is_indented() -> None:
    leader, follower = pty.openpty()
    try:
        try:
            subprocess.run([sys.executable, "-c", PROBE], stdout=follower, check=True, timeout=60)
        finally:
            os.close(follower)  # so the read below ends once the output is read
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    assert shown == json.dumps(DATA, indent=2, sort_keys=True) + "\n"
    assert json.loads(shown) == DATA
