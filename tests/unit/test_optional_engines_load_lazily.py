"""An SQLite cluster with directory recordings starts without PostgreSQL's or S3's client
libraries: they are imported only when the config names them (a newcomer's `make run`
must not depend on them, and start-up does not pay for them)."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("psycopg", "psycopg_pool", "boto3")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_daemon_and_the_clis_do_not_import_them() -> None:
    code = (
        "import certgate.cli.certgate, certgate.cli.cgctl, certgate.cli.cgsh\n"
        "import certgate.daemon.process\n"
    )
    assert _loaded_after(code) == []


def test_naming_them_in_the_config_imports_them() -> None:
    # The control: the registries do load them when asked, so the test above can fail.
    code = (
        "from certgate.backend import registry\n"
        "registry._conninfo({'conn_string': 'postgresql://x@127.0.0.1/db'})\n"
        "from certgate.recording.registry import open_recording_store\n"
        "open_recording_store('s3://bucket/prefix?region=us-east-1', None)\n"
    )
    assert set(_loaded_after(code)) >= {"psycopg", "boto3"}
