"""kube/kubeconfig.py: every context a cluster, credentials from data or files."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from certgate.errors import BadParameter
from certgate.kube.kubeconfig import in_cluster, load_kubeconfig


def write(tmp_path: Path, contexts: list[str]) -> Path:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n").decode()
    (tmp_path / "token").write_text("file-token\n")
    config = {
        "clusters": [
            {"name": f"c-{n}", "cluster": {"server": f"https://{n}.example:6443/base",
                                           "certificate-authority-data": ca}}
            for n in contexts
        ],
        "users": [{"name": "u", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": n, "context": {"cluster": f"c-{n}", "user": "u"}} for n in contexts],
    }  # fmt: skip
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    return path


def test_every_context_is_a_cluster_named_after_it(tmp_path: Path) -> None:
    upstreams = load_kubeconfig(write(tmp_path, ["east", "west"]))
    assert [u.name for u in upstreams] == ["east", "west"]
    east = upstreams[0]
    assert (east.host, east.port, east.base_path) == ("east.example", 6443, "/base")
    assert east.bearer() == "file-token"
    assert east.ca_pem.startswith("-----BEGIN CERTIFICATE-----")


def test_a_name_applies_to_one_context_only(tmp_path: Path) -> None:
    assert [u.name for u in load_kubeconfig(write(tmp_path, ["one"]), "prod")] == ["prod"]
    with pytest.raises(BadParameter, match="2 contexts"):
        load_kubeconfig(write(tmp_path, ["a", "b"]), "prod")


def test_unusable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(BadParameter, match="cannot read kubeconfig"):
        load_kubeconfig(tmp_path / "missing")
    (tmp_path / "bad").write_text("contexts: []\n")
    with pytest.raises(BadParameter, match="no contexts"):
        load_kubeconfig(tmp_path / "bad")


def test_in_cluster_needs_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(BadParameter, match="not running in a Kubernetes pod"):
        in_cluster("")


def test_in_cluster_reads_the_pods_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certgate.kube import kubeconfig

    (tmp_path / "token").write_text("sa-token-1\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nca\n")
    monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_DIR", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    upstream = in_cluster("prod")
    assert (upstream.name, upstream.host, upstream.port) == ("prod", "10.0.0.1", 443)
    assert upstream.host_header == "10.0.0.1"
    assert upstream.bearer() == "sa-token-1"
    # The kubelet rotates the token file: it is read again at each use.
    (tmp_path / "token").write_text("sa-token-2\n")
    assert upstream.bearer() == "sa-token-2"
    assert in_cluster("").name == "in-cluster"
