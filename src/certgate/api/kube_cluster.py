"""Kubernetes clusters in the inventory: announced by the kube service that reaches them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from certgate.api.meta import Metadata, Model

# kubectl reaches cluster NAME at https://PROXY:3026/k8s/NAME (cgsh kube login writes it).
PROXY_PATH_PREFIX = "/k8s/"


class KubeClusterSpec(Model):
    # Where the proxy dials the kube service that forwards to this cluster (HOST:PORT).
    addr: str
    # The kube service's name (its host identity); several clusters may share one.
    service: str = ""


class KubeCluster(Model):
    """metadata.name is the cluster's name (what `cgsh kube login` takes); metadata.labels
    are matched by roles' kubernetes_labels."""

    kind: Literal["kube_cluster"] = "kube_cluster"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: KubeClusterSpec = Field()

    @property
    def name(self) -> str:
        return self.metadata.name
