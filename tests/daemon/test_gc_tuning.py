"""A started daemon process leaves what start-up built out of the collector's walks and
collects young garbage later; a stopping one does not collect at all (at 10,000 nodes
auth spent 13-30 % of its samples in the collector)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from certgate.daemon import gc_tuning
assert gc.get_freeze_count() == 0 and gc.get_threshold()[0] == 700
kept = [{"i": i} for i in range(1000)]
gc_tuning.settle_after_start()
assert gc.get_freeze_count() >= 1000, gc.get_freeze_count()
assert gc.get_threshold()[0] == gc_tuning.YOUNG_THRESHOLD
assert gc.isenabled()
gc_tuning.stop_collecting()
assert not gc.isenabled()
"""


def test_settled_then_stopped() -> None:
    # In a process of its own: the test runner's collector is left as it is.
    subprocess.run([sys.executable, "-c", PROBE], check=True, timeout=60)
