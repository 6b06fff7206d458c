"""What `cgsh kube` does: list clusters, write kubeconfig contexts, hand kubectl its
certificate through the exec credential plugin.

    cgsh kube login NAME ──▶ $KUBECONFIG (first file) or ~/.kube/config, mode 0600:
        cluster  certgate-<cluster>-NAME   server https://PROXY:3026/k8s/NAME
        user     certgate-<cluster>-NAME   exec: the credential plugin (kube_credentials.py)
        context  <cluster>-NAME            (made current)
      and a note of what it wrote in $CERTGATE_HOME/kube.json, so `cgsh logout` removes
      exactly that and nothing else.

    kubectl ──runs──▶ the plugin ──▶ ExecCredential (client.authentication.k8s.io/v1)
        with the certificate and key of the current login, read at every call: a renewed
        login or an approved request counts on the next kubectl call. `cgsh kube
        credentials` prints the same.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from certgate.api.codec import from_dict
from certgate.api.kube_cluster import PROXY_PATH_PREFIX, KubeCluster
from certgate.atomic_files import write_atomic
from certgate.client.cluster import connect_profile
from certgate.client.kube_credentials import plugin_exec
from certgate.client.names import did_you_mean
from certgate.client.profile import Profile, home, load_profile
from certgate.client.proxy_client import ProxyClient
from certgate.errors import BadParameter, NotFound


def list_clusters() -> list[KubeCluster]:
    """The clusters the user's roles reach (auth decides, from the current roles)."""
    api = connect_profile()
    try:
        items = api.call("GET", "/my/kube_clusters")
    finally:
        api.close()
    clusters = [c for c in (from_dict(item) for item in items) if isinstance(c, KubeCluster)]
    return sorted(clusters, key=lambda c: c.name)


def kubeconfig_path() -> Path:
    value = os.environ.get("KUBECONFIG", "")
    first = next((p for p in value.split(os.pathsep) if p), "")
    return Path(first) if first else Path.home() / ".kube" / "config"


@dataclass(frozen=True)
class Written:
    path: Path
    context: str


def login(name: str) -> Written:
    profile = load_profile()
    reachable = [c.name for c in list_clusters()]
    if name not in reachable:
        hint = did_you_mean(reachable, name) or ": see cgsh kube ls"
        raise NotFound(f'kubernetes cluster "{name}" not found{hint}')
    kube_addr = _kube_addr(profile)
    entry = f"certgate-{profile.cluster}-{name}"
    context = f"{profile.cluster}-{name}"
    cluster: dict[str, Any] = {"server": f"https://{kube_addr}{PROXY_PATH_PREFIX}{name}"}
    # The kube listener presents the proxy's host certificate from the cluster's CA,
    # whatever certificate the web port has: kubectl verifies it against that CA.
    host_ca = profile.identity().bundle.tls_cas[:1]
    cluster["certificate-authority-data"] = base64.b64encode("".join(host_ca).encode()).decode()
    user = {"exec": plugin_exec(name, home())}
    path = kubeconfig_path()
    config = _load(path)
    _put(config, "clusters", entry, "cluster", cluster)
    _put(config, "users", entry, "user", user)
    _put(config, "contexts", context, "context", {"cluster": entry, "user": entry})
    config["current-context"] = context
    _save(path, config)
    _remember(path, entry, context, profile.cluster)
    return Written(path, context)


def selected() -> str | None:
    """The cluster kubectl's current context reaches through cgsh's entries, if any
    (`cgsh kube ls` marks it)."""
    profile = load_profile()
    try:
        config = _load(kubeconfig_path())
    except BadParameter:
        return None  # an unreadable kubeconfig selects nothing; login says why
    current = config.get("current-context") or ""
    prefix = f"{profile.cluster}-"
    if not isinstance(current, str) or not current.startswith(prefix):
        return None
    name = current[len(prefix) :]
    entry = f"certgate-{profile.cluster}-{name}"
    for context in config.get("contexts") or []:
        if isinstance(context, dict) and context.get("name") == current:
            inner = context.get("context") or {}
            if isinstance(inner, dict) and inner.get("user") == entry:
                return name
    return None


def logout(cluster: str) -> int:
    """Remove the entries `login` wrote for `cluster` (a certgate cluster: other
    clusters' entries, and everything cgsh did not write, stay); how many contexts were
    removed."""
    note = home() / "kube.json"
    try:
        written = json.loads(note.read_text())
    except (OSError, ValueError):
        return 0
    removed = 0
    kept: dict[str, list[dict[str, str]]] = {}
    for path_text, entries in written.items():
        ours = [e for e in entries if _written_for(e, cluster)]
        if len(ours) < len(entries):
            kept[path_text] = [e for e in entries if not _written_for(e, cluster)]
        path = Path(path_text)
        if not ours or not path.exists():
            continue
        config = _load(path)
        for entry in ours:
            removed += _drop(config, "contexts", entry["context"])
            _drop(config, "clusters", entry["entry"])
            _drop(config, "users", entry["entry"])
            if config.get("current-context") == entry["context"]:
                config["current-context"] = ""
        _save(path, config)
    if kept:
        note.write_text(json.dumps(kept, indent=2) + "\n")
    else:
        note.unlink(missing_ok=True)
    return removed


def _written_for(entry: dict[str, str], cluster: str) -> bool:
    # Notes from before entries named their cluster: by the entry's name alone.
    return entry.get("cluster", cluster) == cluster and entry["entry"].startswith(
        f"certgate-{cluster}-"
    )


# ---- helpers ---------------------------------------------------------------------------


def _kube_addr(profile: Profile) -> str:
    client = ProxyClient(profile.proxy, profile.pin)  # checked against the login's pin
    try:
        ping = client.call("GET", "/v1/ping")
    finally:
        client.close()
    addr = str(ping.get("kube_addr", ""))
    if not addr:
        raise BadParameter("this proxy does not serve Kubernetes (no kube_listen_addr)")
    return addr


def _load(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        data = None
    except (OSError, yaml.YAMLError) as exc:
        raise BadParameter(f"cannot read kubeconfig {path}: {exc}") from exc
    if data is None:
        data = {"apiVersion": "v1", "kind": "Config", "preferences": {}}
    if not isinstance(data, dict):
        raise BadParameter(f"kubeconfig {path} is not a mapping")
    return data


def _save(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(config, default_flow_style=False, sort_keys=False))


def _put(config: dict[str, Any], key: str, name: str, inner: str, value: Any) -> None:
    items = [
        i for i in (config.get(key) or []) if not (isinstance(i, dict) and i.get("name") == name)
    ]
    items.append({"name": name, inner: value})
    config[key] = items


def _drop(config: dict[str, Any], key: str, name: str) -> int:
    items = config.get(key) or []
    kept = [i for i in items if not (isinstance(i, dict) and i.get("name") == name)]
    config[key] = kept
    return len(items) - len(kept)


def _remember(path: Path, entry: str, context: str, cluster: str) -> None:
    note = home() / "kube.json"
    try:
        written = json.loads(note.read_text())
    except (OSError, ValueError):
        written = {}
    entries = [e for e in written.get(str(path), []) if e.get("context") != context]
    entries.append({"entry": entry, "context": context, "cluster": cluster})
    written[str(path)] = entries
    home().mkdir(parents=True, exist_ok=True)
    note.write_text(json.dumps(written, indent=2) + "\n")
