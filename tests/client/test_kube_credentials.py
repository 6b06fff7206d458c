"""The exec credential plugin as kubectl runs it: the stanza `cgsh kube login` writes,
executed the way kubectl executes it (command, args, env)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from certgate.client.kube_credentials import (
    CREDENTIAL_FILE,
    exec_credential,
    plugin_exec,
    write_credential,
)


def _keys(home: Path, cert: str, expires: str = "2030-01-01T00:00:00+00:00") -> Path:
    keys = home / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    bundle = {"tls_cert": cert, "identity": {"expires": expires}}
    (keys / "bundle.json").write_text(json.dumps(bundle))
    (keys / "key.pem").write_text("KEY\n")
    return keys


def _run_plugin(home: Path) -> subprocess.CompletedProcess[str]:
    stanza = plugin_exec("dev", home)
    env = {**os.environ, **{e["name"]: e["value"] for e in stanza["env"]}}
    return subprocess.run(
        [stanza["command"], *stanza["args"]], capture_output=True, text=True, env=env, timeout=30
    )


def test_fast_path_prints_the_credential_written_with_the_keys(tmp_path: Path) -> None:
    keys = _keys(tmp_path, "CERT-1")
    write_credential(keys)
    assert (keys / CREDENTIAL_FILE).stat().st_mode & 0o777 == 0o600
    result = _run_plugin(tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == exec_credential(keys)
    assert printed["status"]["clientCertificateData"] == "CERT-1"
    assert printed["status"]["expirationTimestamp"] == "2030-01-01T00:00:00Z"

    # New keys (a grant assumed) rewrite it: the next kubectl call presents them.
    _keys(tmp_path, "CERT-2")
    write_credential(keys)
    assert json.loads(_run_plugin(tmp_path).stdout)["status"]["clientCertificateData"] == "CERT-2"


def test_without_the_file_the_python_plugin_answers(tmp_path: Path) -> None:
    # A login saved before the fast path existed: the slow path reads the keys.
    _keys(tmp_path, "CERT-OLD")
    result = _run_plugin(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"]["clientCertificateData"] == "CERT-OLD"


def test_logged_out_says_so_in_one_line(tmp_path: Path) -> None:
    result = _run_plugin(tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: not logged in: run cgsh login (kubectl needs a certgate login)\n"
    )


def test_an_expired_certificate_is_never_handed_to_kubectl(tmp_path: Path) -> None:
    # Written while valid, then left to expire: kubectl must not present it (the proxy
    # would refuse it in the handshake with a bare TLS error); the plugin says what to do.
    keys = _keys(tmp_path, "CERT-OLD", expires="2001-02-03T04:05:06+00:00")
    write_credential(keys)
    assert (keys / CREDENTIAL_FILE).exists()
    result = _run_plugin(tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: your certificate expired at 2001-02-03 04:05:06 UTC: run cgsh login\n"
    )
    # Control: the same files with a future expiry are printed.
    _keys(tmp_path, "CERT-NEW")
    write_credential(keys)
    assert json.loads(_run_plugin(tmp_path).stdout)["status"]["clientCertificateData"] == "CERT-NEW"
