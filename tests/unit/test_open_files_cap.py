"""A listener's connection cap follows the open-files limit: a connection past it would
fail in accept (EMFILE) after the kernel took it, so it is refused up front instead."""

from __future__ import annotations

import subprocess
import sys

# In a child process: lowering the hard limit cannot be undone without privilege.
CHILD = """
import resource
from certgate.daemon.listeners import FILES_RESERVE, open_files_for
resource.setrlimit(resource.RLIMIT_NOFILE, (2048, 2048))
print(open_files_for(25000), open_files_for(2048 - FILES_RESERVE), open_files_for(10))
"""


def test_the_cap_is_lowered_to_what_the_open_files_limit_allows() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    # Lowered to the limit less the reserve; a cap the limit allows is kept as set.
    assert out == ["1792", "1792", "10"]
