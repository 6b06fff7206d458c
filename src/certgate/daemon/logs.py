"""Daemon logs: readable lines by default, one JSON object per line with --debug."""

from __future__ import annotations

import json
import logging
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if debug:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Third-party libraries are chatty at debug level; keep them at warnings.
    for noisy in ("asyncssh", "aiohttp.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# The data dir holds private keys, the store and recordings; the audit log names users,
# client addresses and command lines. Only the daemon's own user may read any of it.
DATA_DIR_MODE = 0o700
AUDIT_LOG_MODE = 0o600


def audit_log_path(data_dir: Path) -> Path:
    return data_dir / "log" / "events.log"


def secure_data_dir(data_dir: Path) -> None:
    """Create the data dir owner-only, and tighten one left looser (saying so)."""
    data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    log_file = audit_log_path(data_dir)
    for path, mode in (
        (data_dir, DATA_DIR_MODE),
        (log_file.parent, DATA_DIR_MODE),
        (log_file, AUDIT_LOG_MODE),
    ):
        _tighten(path, mode)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(path.lstat().st_mode) or current & ~mode == 0:
        return  # a link is not ours to change; a stricter mode is kept
    path.chmod(current & mode)
    logging.getLogger("certgate").warning(
        "%s was readable by others (mode %04o): tightened to %04o", path, current, current & mode
    )
