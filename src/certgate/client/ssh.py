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
from pathlib import Path
from typing import Any

from certgate.client.cluster import connect_profile
from certgate.client.names import did_you_mean
from certgate.client.profile import Profile, home
from certgate.client.proxy_client import connect_proxy
from certgate.errors import BadParameter, CertgateError, NotFound


def list_nodes(profile: Profile, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Nodes the user's roles can reach, optionally only those with all `labels`."""
    cluster = connect_profile(profile)
    try:
        nodes: list[dict[str, Any]] = cluster.call("GET", "/my/nodes")
    finally:
        cluster.close()
    wanted = labels or {}
    chosen = [
        n for n in nodes if all(n["metadata"]["labels"].get(k) == v for k, v in wanted.items())
    ]
    return sorted(chosen, key=lambda n: n["metadata"]["name"])


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
        nodes = list_nodes(profile)
    except CertgateError:
        return ""
    names = {n["metadata"]["name"] for n in nodes} | {
        n["spec"]["hostname"] for n in nodes if n["spec"].get("hostname")
    }
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
