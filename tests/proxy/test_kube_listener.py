"""proxy/kube_listener.py: which cluster a kubectl request names."""

from __future__ import annotations

from certgate.proxy.kube_listener import _split_target


def test_the_path_prefix_names_the_cluster_and_is_taken_off() -> None:
    assert _split_target("/k8s/prod/api/v1/pods?watch=1") == ("prod", "/api/v1/pods?watch=1")
    assert _split_target("/k8s/prod") == ("prod", "/")
    assert _split_target("/k8s/prod?timeout=32s") == ("prod", "/?timeout=32s")
    assert _split_target("/api/v1/pods") == ("", "/api/v1/pods")
