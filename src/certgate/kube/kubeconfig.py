"""How the kube service reaches API servers: a kubeconfig file, or the pod it runs in.

    load_kubeconfig(path, name="")  -> [Upstream]   one per context, named after it
                                                    (or `name` when there is one context)
    in_cluster(name)                -> Upstream      the pod's service account token + CA

An Upstream holds the API server's address and the credentials certgate itself
authenticates with (the kube service needs `impersonate`; see docs/kubernetes.md).
"""

from __future__ import annotations

import base64
import functools
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from certgate.errors import BadParameter
from certgate.transport import client_context

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Upstream:
    name: str
    host: str
    port: int
    base_path: str  # a server URL's path, kept in front of every request
    ca_pem: str
    insecure: bool
    cert_pem: str = ""
    key_pem: str = ""
    token: str = ""
    token_file: str = ""  # re-read on use: service account tokens are rotated

    @functools.cached_property
    def _context(self) -> ssl.SSLContext:
        return client_context(
            [self.ca_pem] if self.ca_pem else [],
            self.cert_pem or None,
            self.key_pem or None,
            insecure=self.insecure,
        )

    def tls_context(self) -> ssl.SSLContext:
        """Built once: loading certificates costs more than a connection."""
        return self._context

    def bearer(self) -> str:
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError:
                return self.token
        return self.token

    @property
    def host_header(self) -> str:
        return self.host if self.port == 443 else f"{self.host}:{self.port}"


def load_kubeconfig(path: Path, name: str = "") -> list[Upstream]:
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BadParameter(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BadParameter(f"kubeconfig {path}: invalid YAML") from exc
    if not isinstance(data, dict):
        raise BadParameter(f"kubeconfig {path}: expected a mapping")
    base = path.parent
    clusters = _named(data, "clusters", "cluster")
    users = _named(data, "users", "user")
    contexts = _named(data, "contexts", "context")
    if not contexts:
        raise BadParameter(f"kubeconfig {path} has no contexts")
    if name and len(contexts) > 1:
        raise BadParameter(
            f"kubeconfig {path} has {len(contexts)} contexts: a cluster name applies to one "
            "(each context becomes a cluster named after it without one)"
        )
    upstreams = []
    for context_name, context in contexts.items():
        cluster = clusters.get(str(context.get("cluster", "")))
        if cluster is None:
            raise BadParameter(f'kubeconfig {path}: context "{context_name}" names no cluster')
        user = users.get(str(context.get("user", "")), {})
        upstreams.append(_upstream(name or context_name, cluster, user, base))
    return upstreams


def in_cluster(name: str) -> Upstream:
    """The API server of the pod this runs in (KUBERNETES_SERVICE_HOST/PORT)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise BadParameter(
            "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set): "
            "give the kube service a kubeconfig"
        )
    token_file = SERVICE_ACCOUNT_DIR / "token"
    try:
        ca_pem = (SERVICE_ACCOUNT_DIR / "ca.crt").read_text()
        token = token_file.read_text().strip()
    except OSError as exc:
        raise BadParameter(f"cannot read the pod's service account: {exc}") from exc
    return Upstream(
        name=name or "in-cluster",
        host=host,
        port=int(port),
        base_path="",
        ca_pem=ca_pem,
        insecure=False,
        token=token,
        token_file=str(token_file),
    )


def _named(data: dict[str, Any], key: str, inner: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for entry in data.get(key) or []:
        if isinstance(entry, dict) and "name" in entry and isinstance(entry.get(inner), dict):
            out[str(entry["name"])] = entry[inner]
    return out


def _upstream(name: str, cluster: dict[str, Any], user: dict[str, Any], base: Path) -> Upstream:
    server = str(cluster.get("server", ""))
    url = urlsplit(server)
    if url.scheme != "https" or not url.hostname:
        raise BadParameter(f'kubeconfig cluster "{name}": server must be an https:// URL')
    if "exec" in user or "auth-provider" in user:
        raise BadParameter(
            f'kubeconfig user of "{name}": exec and auth-provider credentials are not '
            "supported; use a token or a client certificate"
        )
    token = str(user.get("token", ""))
    token_file = str(user.get("tokenFile", ""))
    if token_file and not token:
        token = _read(token_file, base, name).strip()
    return Upstream(
        name=name,
        host=url.hostname,
        port=url.port or 443,
        base_path=url.path.rstrip("/"),
        ca_pem=_data_or_file(cluster, "certificate-authority", base, name),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        cert_pem=_data_or_file(user, "client-certificate", base, name),
        key_pem=_data_or_file(user, "client-key", base, name),
        token=token,
        token_file=str(base / token_file) if token_file else "",
    )


def _data_or_file(section: dict[str, Any], key: str, base: Path, name: str) -> str:
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data)).decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadParameter(f'kubeconfig "{name}": {key}-data is not base64 PEM') from exc
    file = section.get(key)
    return _read(str(file), base, name) if file else ""


def _read(file: str, base: Path, name: str) -> str:
    path = Path(file) if Path(file).is_absolute() else base / file
    try:
        return path.read_text()
    except OSError as exc:
        raise BadParameter(f'kubeconfig "{name}": cannot read {path}: {exc.strerror}') from exc
