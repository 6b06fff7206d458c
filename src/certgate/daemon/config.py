"""The daemon's configuration: `certgate.yaml` (DESIGN §1), then flags on top."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from certgate.api.codec import describe_validation_error, yaml_problem
from certgate.api.duration import Duration
from certgate.errors import BadParameter

SERVICE_ROLES = ("auth", "proxy", "node", "kube")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageTLS(_Section):
    """TLS to the postgres store (libpq's sslrootcert, sslcert, sslkey, sslmode)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Empty: verify-full when ca_file is set, else what conn_string says.
    mode: Literal["", "disable", "prefer", "require", "verify-ca", "verify-full"] = ""


class Storage(_Section):
    type: Literal["sqlite", "postgres"] = "sqlite"
    conn_string: str = ""
    tls: StorageTLS = Field(default_factory=StorageTLS)
    # postgres: connections each auth process keeps to the store. Heartbeats are written
    # in batches (one connection per batch) and names and nodes are served from memory,
    # so few are busy at once; writes take turns on one counter row anyway, and more
    # connections only add waiting transactions (docs/deployment.md).
    pool_size: int = Field(default=10, ge=1, le=1000)


class Recordings(_Section):
    uri: str = "file://"


class AuthService(_Section):
    enabled: bool = True
    listen_addr: str = "0.0.0.0:3025"
    # The address other services dial; defaults to listen_addr with 0.0.0.0 -> 127.0.0.1.
    advertise_addr: str = ""
    storage: Storage = Field(default_factory=Storage)
    recordings: Recordings = Field(default_factory=Recordings)
    # Processes serving the auth API (this one and workers-1 more, sharing the port and
    # the store); 0 means one per core. See certgate.daemon.auth_workers.
    workers: int = Field(default=1, ge=0, le=256)


class TLSFiles(_Section):
    cert_file: str = ""
    key_file: str = ""


def _longer_than_zero(value: timedelta) -> timedelta:
    """A timeout or lifetime of the config: zero would mean at once, never what is meant."""
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


class ProxyService(_Section):
    enabled: bool = True
    public_addr: str = "localhost:3080"
    web_listen_addr: str = "0.0.0.0:3080"
    ssh_listen_addr: str = "0.0.0.0:3023"
    kube_listen_addr: str = "0.0.0.0:3026"
    tls: TLSFiles = Field(default_factory=TLSFiles)
    # A browser session ends after this long without a page or a keystroke in its
    # web terminal.
    web_idle_timeout: Duration = timedelta(minutes=30)

    _positive = field_validator("web_idle_timeout")(_longer_than_zero)


class SSHService(_Section):
    enabled: bool = True
    listen_addr: str = "0.0.0.0:3022"
    advertise_addr: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    # How often the node announces itself; it leaves `cgsh ls` within two of these.
    heartbeat_interval: Duration = timedelta(seconds=10)


class KubernetesService(_Section):
    enabled: bool = False
    listen_addr: str = "0.0.0.0:3027"
    advertise_addr: str = ""
    # Every context becomes a cluster named after it; empty: in-cluster (the pod's
    # service account).
    kubeconfig_file: str = ""
    # The cluster's name when the kubeconfig has one context (or in-cluster).
    kube_cluster_name: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    heartbeat_interval: Duration = timedelta(seconds=10)


class HTTPLimits(_Section):
    """What one client may hold on each HTTPS listener (auth 3025, proxy web 3080, proxy
    kube 3026; a kube service's 3027 keeps these defaults)."""

    # Connections open at once per listener, counting those still in the TLS handshake;
    # past it new ones are closed at once. Every node holds two on auth (its watch
    # stream and a keep-alive one for heartbeats): 25,000 fits 10,000 nodes and their
    # proxies. An idle TLS connection costs auth about 20 KiB (docs/deployment.md).
    max_connections: int = Field(default=25_000, ge=1, le=1_000_000)
    # A connection with no complete request for this long is closed (idle keep-alive,
    # or headers sent a byte at a time). Above the heartbeat interval, so a node's
    # keep-alive connection lasts from one heartbeat to the next: a new mTLS handshake
    # per heartbeat costs auth more than the open connection does.
    idle_timeout: Duration = timedelta(seconds=60)
    # A connection's first byte, its wait for a handshake slot and its TLS handshake must
    # all come within this, counted from the accept.
    handshake_timeout: Duration = timedelta(seconds=10)
    # TLS handshakes in progress at once per listener; the rest wait, ClientHello unread
    # (no CPU), first come first served. Enough to keep a core busy while some wait for
    # their client's next flight; few enough that each finishes well within
    # handshake_timeout when thousands of nodes connect at once (an auth restart).
    handshakes_at_once: int = Field(default=64, ge=1, le=100_000)

    _positive = field_validator("idle_timeout", "handshake_timeout")(_longer_than_zero)


class Config(_Section):
    version: Literal["v1"] = "v1"
    cluster_name: str = ""
    nodename: str = ""
    data_dir: str = ""
    # Off unless asked for (as in Teleport): a fixed port would stop a second cluster
    # on the same host (`make run` twice, tests) with "address in use".
    diag_addr: str = ""
    auth_servers: list[str] = Field(default_factory=list)
    join_token: str = ""
    ca_pin: str = ""
    debug: bool = False
    # Roles with `locking_mode: strict`: how long a proxy or node may be cut off from
    # auth (and so from new locks) before it refuses their holders and ends their sessions.
    strict_lock_grace: Duration = timedelta(seconds=30)
    http_limits: HTTPLimits = Field(default_factory=HTTPLimits)
    auth_service: AuthService = Field(default_factory=AuthService)
    proxy_service: ProxyService = Field(default_factory=ProxyService)
    ssh_service: SSHService = Field(default_factory=SSHService)
    kubernetes_service: KubernetesService = Field(default_factory=KubernetesService)

    def roles(self) -> list[str]:
        enabled = {
            "auth": self.auth_service.enabled,
            "proxy": self.proxy_service.enabled,
            "node": self.ssh_service.enabled,
            "kube": self.kubernetes_service.enabled,
        }
        return [role for role in SERVICE_ROLES if enabled[role]]

    def with_roles(self, roles: list[str]) -> Config:
        unknown = [r for r in roles if r not in SERVICE_ROLES]
        if unknown:
            raise BadParameter(
                f'unknown role "{unknown[0]}": choose from {", ".join(SERVICE_ROLES)}'
            )
        return self.model_copy(
            update={
                "auth_service": self.auth_service.model_copy(update={"enabled": "auth" in roles}),
                "proxy_service": self.proxy_service.model_copy(
                    update={"enabled": "proxy" in roles}
                ),
                "ssh_service": self.ssh_service.model_copy(update={"enabled": "node" in roles}),
                "kubernetes_service": self.kubernetes_service.model_copy(
                    update={"enabled": "kube" in roles}
                ),
            }
        )


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/certgate")
    return Path.home() / ".local" / "share" / "certgate"


def load_config(path: Path | None) -> Config:
    """The config at `path` (or all defaults); a one-line BadParameter for any problem."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadParameter(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BadParameter(f"config {path}: invalid YAML{yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise BadParameter(f"config {path}: expected a mapping of settings")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise BadParameter(describe_validation_error("config", str(path), exc)) from exc


def split_addr(addr: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `[::1]:port`, `host` -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or "]" in port:
        return addr.strip("[]"), default_port
    if not port.isdigit():
        raise BadParameter(f'invalid address "{addr}": the port must be a number')
    return host.strip("[]"), int(port)


def split_addresses(text: str) -> list[str]:
    """`--auth-server A,B` as addresses, in order, without repeats."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def dial_addr(listen_addr: str, default_port: int) -> str:
    """The address to dial a service listening on `listen_addr` from this host."""
    host, port = split_addr(listen_addr, default_port)
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


SAMPLE = """\
# certgate.yaml — every option with its default. `certgate start --config certgate.yaml`.
version: v1
# Name of this cluster; appears in certificates. Default: this host's name.
cluster_name: ""
# Name of this host in the inventory. Default: this host's name.
nodename: ""
# Where state lives. Default: /var/lib/certgate as root, ~/.local/share/certgate otherwise.
data_dir: ""
# /healthz, /readyz and /metrics (Prometheus). Empty (the default): off.
diag_addr: ""             # e.g. 127.0.0.1:3434
# For services other than auth: where auth is, and the join token (`cgctl tokens add`).
auth_servers: []          # e.g. ["auth-1.example.com:3025", "auth-2.example.com:3025"]:
                          # tried in turn (sticky to one that works), or one balancer
join_token: ""
ca_pin: ""                # sha256:... printed by `cgctl tokens add`; pins the cluster CA
debug: false              # JSON logs at debug level
strict_lock_grace: 30s    # locking_mode strict: refuse after this long cut off from auth
http_limits:              # per HTTPS listener (auth, proxy web); see docs/operations.md
  max_connections: 25000  # open at once, TLS handshakes included; more are closed at once
  idle_timeout: 60s       # no complete request for this long (idle or half-sent): closed;
                          # keep it above the nodes' heartbeat_interval
  handshake_timeout: 10s  # first byte, wait for a handshake slot and the TLS handshake:
                          # all within this of the accept, or the connection is closed
  handshakes_at_once: 64  # TLS handshakes in progress at once; the rest wait their turn

auth_service:
  enabled: true
  listen_addr: 0.0.0.0:3025
  advertise_addr: ""      # what other services dial; default: listen_addr on this host
  storage:
    type: sqlite          # or postgres: several auth servers share one store (HA)
    conn_string: ""       # postgres only: "postgresql://certgate@db.example.com/certgate"
    tls:                  # postgres only; a ca_file alone means sslmode verify-full
      ca_file: ""
      cert_file: ""       # client certificate and key, for `cert` authentication
      key_file: ""
      mode: ""            # disable, prefer, require, verify-ca, verify-full
    pool_size: 10         # postgres only: store connections per auth process
  recordings:
    uri: "file://"        # default <data_dir>/recordings; or an S3-compatible bucket:
                          # "s3://bucket/prefix?endpoint=https://s3.example.com&region=r1"
  workers: 1              # processes serving the auth API on one port (0: one per core);
                          # more than 1 signs more certificates per second on more cores

proxy_service:
  enabled: true
  public_addr: localhost:3080   # what users type and what invite links point to
  web_listen_addr: 0.0.0.0:3080
  ssh_listen_addr: 0.0.0.0:3023
  kube_listen_addr: 0.0.0.0:3026
  tls:                    # empty: a certificate from the cluster's host CA (--insecure)
    cert_file: ""
    key_file: ""
  web_idle_timeout: 30m   # a browser session ends after this long unused (pages, terminal)

ssh_service:
  enabled: true
  listen_addr: 0.0.0.0:3022
  advertise_addr: ""      # what the proxy dials; default: listen_addr on this host
  labels: {}              # e.g. {env: prod, team: db}: what roles' node_labels match
  heartbeat_interval: 10s # the node leaves `cgsh ls` within two intervals of stopping

kubernetes_service:
  enabled: false
  listen_addr: 0.0.0.0:3027
  advertise_addr: ""      # what the proxy dials; default: listen_addr on this host
  kubeconfig_file: ""     # every context becomes a cluster; empty: in-cluster (pod's account)
  kube_cluster_name: ""   # the name of the one cluster (one context, or in-cluster)
  labels: {}              # matched by roles' kubernetes_labels
  heartbeat_interval: 10s
"""
