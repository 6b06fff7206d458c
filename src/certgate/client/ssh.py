"""SSH for cgsh: an OpenSSH client config for the cluster, access checks, node lists.

cgsh runs the system's OpenSSH `ssh`/`scp` with a generated config, so the data path is
OpenSSH's C code end to end and every ssh option works. Before it does, it asks the
proxy whether the login is allowed and the node answers, so a refusal reads as a reason
rather than "Permission denied (publickey)".

    Host certgate-proxy.<cluster>          -> the jump host itself (HostName, port 3023)
    Host *.<cluster> <node names>          -> ProxyJump through that alias
    both: IdentityFile, CertificateFile, UserKnownHostsFile with the host CA
"""

from __future__ import annotations

import getpass
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from certgate.client.cluster import connect_profile
from certgate.client.names import did_you_mean
from certgate.client.profile import Profile, home
from certgate.client.proxy_client import connect_proxy
from certgate.errors import BadParameter, CertgateError, NotFound


class NodeRow(NamedTuple):
    """What `cgsh ls` prints of a node and `cgsh ssh` matches names against."""

    name: str
    hostname: str
    addr: str
    labels: dict[str, str]


def list_nodes(profile: Profile, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Nodes the user's roles can reach as full resources (`cgsh ls --format=json`),
    optionally only those with all `labels`, sorted by name."""
    nodes: list[dict[str, Any]] = _my_nodes(profile, {})
    wanted = labels or {}
    chosen = [
        n for n in nodes if all(n["metadata"]["labels"].get(k) == v for k, v in wanted.items())
    ]
    return sorted(chosen, key=lambda n: n["metadata"]["name"])


def list_node_rows(profile: Profile, labels: dict[str, str] | None = None) -> list[NodeRow]:
    """The same nodes as list_nodes, as rows of what `cgsh ls` prints.

    Asked for in auth's brief form: at 10,000 nodes the full answer was ~2.5 MB to
    decode for three columns (see auth/http_nodes.py). An auth from before that form
    ignores the parameter and sends full nodes, which are cut down here."""
    answer = _my_nodes(profile, {"form": "brief"})
    if isinstance(answer, list):  # full resources from an older auth
        rows = [
            NodeRow(
                n["metadata"]["name"],
                n["spec"].get("hostname", ""),
                n["spec"]["addr"],
                n["metadata"]["labels"],
            )
            for n in answer
        ]
    else:
        columns = answer["columns"]
        pick = itemgetter(*(columns.index(c) for c in NodeRow._fields))
        rows = list(map(NodeRow._make, map(pick, answer["rows"])))
    wanted = (labels or {}).items()
    if wanted:
        rows = [r for r in rows if all(r.labels.get(k) == v for k, v in wanted)]
    rows.sort(key=lambda r: r.name)
    return rows


def _my_nodes(profile: Profile, params: dict[str, str]) -> Any:
    cluster = connect_profile(profile)
    try:
        return cluster.call("GET", "/my/nodes", params=params or None)
    finally:
        cluster.close()


def check_access(profile: Profile, node: str, login: str) -> dict[str, Any]:
    client = connect_proxy(profile)
    try:
        answer: dict[str, Any] = client.call(
            "GET", "/v1/ssh/check", params={"node": node, "login": login}
        )
    except NotFound as exc:
        if exc.message != f'node "{node}" not found':
            raise
        raise NotFound(exc.message + _nearest_node(profile, node)) from None
    finally:
        client.close()
    found: dict[str, Any] = answer["node"]
    return found


def _nearest_node(profile: Profile, typed: str) -> str:
    """`; did you mean "x"?` among the nodes this user can reach (only those: a hint
    must not name a node the user's roles hide)."""
    try:
        nodes = list_node_rows(profile)
    except CertgateError:
        return ""
    names = {n.name for n in nodes} | {n.hostname for n in nodes if n.hostname}
    return did_you_mean(names, typed)


def split_target(target: str, login: str | None) -> tuple[str, str]:
    """`[LOGIN@]NODE` plus `-l LOGIN` -> (login, node); the default login is yours."""
    user, at, node = target.rpartition("@")
    if not node:
        raise BadParameter(f'"{target}": name a node, like ubuntu@web-1')
    chosen = login or (user if at else "") or getpass.getuser()
    return chosen, node


def _proxy_host_port(profile: Profile) -> tuple[str, str]:
    addr = profile.ssh_proxy or profile.proxy.rsplit(":", 1)[0] + ":3023"
    host, _, port = addr.rpartition(":")
    return host, port


def jump_alias(profile: Profile) -> str:
    """The name the config gives the proxy's SSH port: never the proxy's own host name,
    so `ssh localhost` (or `ssh proxy-host`) is not captured when the proxy is there."""
    return f"certgate-proxy.{profile.cluster}"


def openssh_config(profile: Profile, node_names: list[str]) -> str:
    keys = profile.keys_dir
    host, port = _proxy_host_port(profile)
    jump_user = "certgate"  # the jump host takes any name; the node checks the login
    alias = jump_alias(profile)
    # Negated: the alias ends in .<cluster> too, and must not jump through itself.
    patterns = " ".join([f"*.{profile.cluster}", f"!{alias}", *node_names])
    common = (
        f"    UserKnownHostsFile {keys / 'known_hosts'}\n"
        f"    IdentityFile {keys / 'key'}\n"
        f"    CertificateFile {keys / 'key-cert.pub'}\n"
        "    IdentitiesOnly yes\n"
        "    StrictHostKeyChecking yes\n"
        "    CheckHostIP no\n"
        "    HashKnownHosts no\n"
    )
    return (
        f"# certgate cluster {profile.cluster} through {profile.proxy}, for {profile.user}.\n"
        "# Made by `cgsh config`; certificates renew with `cgsh login`.\n"
        f"Host {alias}\n"
        f"    HostName {host}\n"
        f"    Port {port}\n"
        f"{common}"
        f"Host {patterns}\n"
        f"    ProxyJump {jump_user}@{alias}\n"
        f"{common}"
    )


def write_config(profile: Profile, node_names: list[str]) -> Path:
    path = home() / "ssh_config"
    path.write_text(openssh_config(profile, node_names))
    return path
