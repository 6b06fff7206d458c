"""The exec credential plugin kubectl runs before its calls, kept lean on purpose.

kubectl starts it for every command, so its cost is part of every command's latency.
Two paths, both written into the kubeconfig by `cgsh kube login` (`plugin_exec`):

    /bin/sh -c 'unexpired && cat $CERTGATE_HOME/keys/kube-credential.json || exec python -m ...'
      fast: the ExecCredential was written next to the keys when they were saved
            (`write_credential`, called by every writer of the profile's keys), so a
            renewed login or an approved access request counts on the next call; its
            expiry (Unix seconds) beside it, so an expired one is never handed out
      slow: no such file or an expired certificate (a login older than this file, or
            none): this module, which imports only the standard library and says "not
            logged in" or "your certificate expired at ...: run cgsh login" when it must

Starting Python costs tens of milliseconds, `sh` + `cat` a few: that difference is most of
what certgate added to a `kubectl get` (bench/kube_proxy.py).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from certgate.atomic_files import write_atomic
from certgate.client.expiry import expired_message
from certgate.errors import AccessDenied

EXEC_API_VERSION = "client.authentication.k8s.io/v1"
CREDENTIAL_FILE = "kube-credential.json"
EXPIRES_FILE = "kube-credential.expires"
# $0 is the Python to fall back on; the rest of the arguments go to the slow path. `read`
# is a builtin, so the fast path costs the shell, `date` and `cat`.
_FAST_PATH = (
    f'read -r until 2>/dev/null < "$CERTGATE_HOME/keys/{EXPIRES_FILE}"'
    ' && [ "$(date +%s)" -lt "$until" ]'
    f' && cat "$CERTGATE_HOME/keys/{CREDENTIAL_FILE}" 2>/dev/null'
    ' || exec "$0" -m certgate.client.kube_credentials "$@"'
)


def _home() -> Path:
    return Path(os.environ.get("CERTGATE_HOME") or Path.home() / ".certgate")


def exec_credential(keys: Path | None = None) -> dict[str, Any]:
    """The ExecCredential from the keys in `keys` (the profile's by default), or
    OSError/ValueError/KeyError when there is no usable login."""
    keys = keys or _home() / "keys"
    bundle = json.loads((keys / "bundle.json").read_text())
    status: dict[str, Any] = {
        "clientCertificateData": bundle["tls_cert"],
        "clientKeyData": (keys / "key.pem").read_text(),
    }
    expires = _expiry(bundle)
    if expires is not None:
        # RFC 3339 in UTC, as kubectl parses it; it asks again once this passes.
        status["expirationTimestamp"] = expires.isoformat().replace("+00:00", "Z")
    return {"apiVersion": EXEC_API_VERSION, "kind": "ExecCredential", "status": status}


def credentials() -> dict[str, Any]:
    """The ExecCredential kubectl reads from `cgsh kube credentials`."""
    try:
        return exec_credential()
    except (OSError, ValueError, KeyError):
        raise AccessDenied(
            "not logged in: run cgsh login (kubectl needs a certgate login)"
        ) from None


def _expiry(bundle: dict[str, Any]) -> datetime | None:
    text = str(bundle.get("identity", {}).get("expires", ""))
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def _expired(keys: Path) -> datetime | None:
    """When the saved certificate expired, if it has."""
    expires = _expiry(json.loads((keys / "bundle.json").read_text()))
    return expires if expires is not None and expires <= datetime.now(UTC) else None


def write_credential(keys: Path) -> None:
    """Write the ExecCredential of the keys just saved in `keys` for the fast path
    (private: it holds the key). Atomic, so kubectl never reads half a file."""
    text = json.dumps(exec_credential(keys)) + "\n"
    write_atomic(keys / CREDENTIAL_FILE, text)
    expires = _expiry(json.loads((keys / "bundle.json").read_text()))
    until = str(int(expires.timestamp())) if expires is not None else "0"
    write_atomic(keys / EXPIRES_FILE, until + "\n")


def plugin_exec(cluster: str, home: Path) -> dict[str, Any]:
    """The kubeconfig `user.exec` stanza that runs this plugin."""
    return {
        "apiVersion": EXEC_API_VERSION,
        "command": "/bin/sh",
        "args": ["-c", _FAST_PATH, sys.executable, f"--cluster={cluster}"],
        "env": [{"name": "CERTGATE_HOME", "value": str(home)}],
        "interactiveMode": "Never",
        "provideClusterInfo": False,
    }


def main() -> int:
    try:
        expired = _expired(_home() / "keys")
        if expired is not None:
            sys.stderr.write(f"error: {expired_message(expired)}\n")
            return 1
        credential = exec_credential()
    except (OSError, ValueError, KeyError):
        sys.stderr.write("error: not logged in: run cgsh login (kubectl needs a certgate login)\n")
        return 1
    sys.stdout.write(json.dumps(credential) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
