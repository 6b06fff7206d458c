"""The exec credential plugin kubectl runs before its calls, kept lean on purpose.

kubectl starts it for every command (`cgsh kube login` writes
`python -m certgate.client.kube_credentials` into the kubeconfig, the same thing as
`cgsh kube credentials`), so it imports only the standard library: loading cgsh's
whole command line costs more than the call it serves. It prints an ExecCredential
(`client.authentication.k8s.io/v1`) with the certificate and key of the current login,
read at every call, so a renewed login or an approved access request counts at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def _home() -> Path:
    return Path(os.environ.get("CERTGATE_HOME") or Path.home() / ".certgate")


def exec_credential() -> dict[str, Any]:
    """The ExecCredential, or OSError/ValueError/KeyError when there is no usable login."""
    keys = _home() / "keys"
    bundle = json.loads((keys / "bundle.json").read_text())
    status: dict[str, Any] = {
        "clientCertificateData": bundle["tls_cert"],
        "clientKeyData": (keys / "key.pem").read_text(),
    }
    expires = str(bundle.get("identity", {}).get("expires", ""))
    if expires:
        # RFC 3339 in UTC, as kubectl parses it; it asks again once this passes.
        status["expirationTimestamp"] = expires.replace("+00:00", "Z")
    return {"apiVersion": EXEC_API_VERSION, "kind": "ExecCredential", "status": status}


def main() -> int:
    try:
        credential = exec_credential()
    except (OSError, ValueError, KeyError):
        sys.stderr.write("error: not logged in: run cgsh login (kubectl needs a certgate login)\n")
        return 1
    sys.stdout.write(json.dumps(credential) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
