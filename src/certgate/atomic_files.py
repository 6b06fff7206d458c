"""Files written whole or not at all (keys, certificates, kubeconfigs, cgsh's profile).

    write_atomic(path, data, mode=0o600)   private unless a mode says otherwise

Written beside the target under a name of this process's own, then renamed over it: a
reader (kubectl, another cgsh) never sees half a file, and two cgsh commands writing
the same file at once do not write into one temporary file. The mode is set on the
temporary file before the rename, whatever the umask.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
