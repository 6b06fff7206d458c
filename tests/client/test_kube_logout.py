"""`cgsh logout` removes the kubeconfig entries `cgsh kube login` wrote for the cluster
logged out of, and keeps those of other certgate clusters and everything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from certgate.client.kube import logout


def _entry(cluster: str, name: str) -> dict[str, str]:
    return {"entry": f"certgate-{cluster}-{name}", "context": f"{cluster}-{name}"}


def test_logout_of_one_cluster_keeps_the_other_clusters_contexts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTGATE_HOME", str(tmp_path / "certgate"))
    written = [
        {**_entry("prod", "k8s"), "cluster": "prod"},
        # A cluster whose name starts like the other's: not taken for it.
        {**_entry("prod-eu", "k8s"), "cluster": "prod-eu"},
    ]
    config = {
        "clusters": [{"name": e["entry"], "cluster": {}} for e in written]
        + [{"name": "mine", "cluster": {}}],
        "users": [{"name": e["entry"], "user": {}} for e in written],
        "contexts": [{"name": e["context"], "context": {}} for e in written],
        "current-context": "prod-k8s",
    }
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    (tmp_path / "certgate").mkdir()
    note = tmp_path / "certgate" / "kube.json"
    note.write_text(json.dumps({str(kubeconfig): written}))

    assert logout("prod") == 1
    left = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in left["contexts"]] == ["prod-eu-k8s"]
    assert [c["name"] for c in left["clusters"]] == ["certgate-prod-eu-k8s", "mine"]
    assert left["current-context"] == ""
    # The other cluster's entries are still remembered, so its own logout finds them.
    assert json.loads(note.read_text()) == {str(kubeconfig): [written[1]]}
    assert logout("prod-eu") == 1
    assert yaml.safe_load(kubeconfig.read_text())["contexts"] == []
    assert not note.exists()
