"""`certgate`: the daemon (start) and its sample config (configure)."""

from __future__ import annotations

import faulthandler
import logging
import sys
from pathlib import Path

import click

from certgate.api.duration import parse_duration
from certgate.cli.common import run
from certgate.daemon import event_loop
from certgate.daemon.config import (
    SAMPLE,
    Config,
    default_data_dir,
    load_config,
    split_addresses,
)
from certgate.daemon.logs import setup_logging
from certgate.daemon.process import Daemon
from certgate.plugins.process import run_plugin
from certgate.plugins.registry import NOTIFIERS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="certgate")
def cli() -> None:
    """certgate: a certificate authority and access proxy for SSH and Kubernetes."""


@cli.command()
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="certgate.yaml to read."
)
@click.option("--roles", help="Services to run, comma-separated: auth,proxy,node,kube.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where state lives.")
@click.option("--token", help="Join token (services other than auth).")
@click.option(
    "--auth-server",
    help="HOST:PORT of the auth service to join; several as A,B (tried in turn on failure).",
)
@click.option("--ca-pin", help="sha256:... pin of the cluster CA (printed by cgctl tokens add).")
@click.option("--nodename", help="This host's name in the inventory.")
@click.option("--labels", help="Node labels, k=v,k=v.")
@click.option("--heartbeat-interval", help="How often a node announces itself (default 10s).")
@click.option(
    "--strict-lock-grace",
    help="How long a service may be cut off from auth before strict-locking roles are "
    "refused (default 30s).",
)
@click.option("--cluster-name", help="Name of a new cluster.")
@click.option("--auth-listen", help="Auth listen address (default 0.0.0.0:3025).")
@click.option("--web-listen", help="Proxy web listen address (default 0.0.0.0:3080).")
@click.option("--ssh-proxy-listen", help="Proxy SSH listen address (default 0.0.0.0:3023).")
@click.option("--ssh-listen", help="Node SSH listen address (default 0.0.0.0:3022).")
@click.option("--kubeconfig", help="Kube service: the kubeconfig whose contexts it serves.")
@click.option("--kube-cluster-name", help="Kube service: the name of its one cluster.")
@click.option("--kube-listen", help="Kube service listen address (default 0.0.0.0:3027).")
@click.option("--kube-proxy-listen", help="Proxy Kubernetes listen address (default 0.0.0.0:3026).")
@click.option("--public-addr", help="The proxy's public HOST:PORT (invite links, logins).")
@click.option("--diag-addr", help="Address of /healthz, /readyz, /metrics ('' turns it off).")
@click.option("--first-admin", default="", help="On an empty cluster, invite this admin user.")
@click.option("--debug", is_flag=True, help="JSON logs at debug level.")
def start(
    config_path: Path | None,
    roles: str | None,
    data_dir: Path | None,
    token: str | None,
    auth_server: str | None,
    ca_pin: str | None,
    nodename: str | None,
    labels: str | None,
    heartbeat_interval: str | None,
    strict_lock_grace: str | None,
    cluster_name: str | None,
    auth_listen: str | None,
    web_listen: str | None,
    ssh_proxy_listen: str | None,
    ssh_listen: str | None,
    kubeconfig: str | None,
    kube_cluster_name: str | None,
    kube_listen: str | None,
    kube_proxy_listen: str | None,
    public_addr: str | None,
    diag_addr: str | None,
    first_admin: str,
    debug: bool,
) -> None:
    """Start certgate services (all of them, on one host, by default)."""
    config = load_config(config_path)
    if roles:
        config = config.with_roles([r.strip() for r in roles.split(",") if r.strip()])
    updates: dict[str, object] = {}
    for key, value in (
        ("join_token", token),
        ("ca_pin", ca_pin),
        ("nodename", nodename),
        ("cluster_name", cluster_name),
        ("diag_addr", diag_addr),
    ):
        if value is not None:
            updates[key] = value
    if auth_server:
        updates["auth_servers"] = split_addresses(auth_server)  # A,B: fail over in order
    if debug:
        updates["debug"] = True
    config = config.model_copy(update=updates)
    config = _override_listeners(
        config, auth_listen, web_listen, ssh_proxy_listen, ssh_listen, public_addr, labels
    )
    config = _override_kube(
        config, kubeconfig, kube_cluster_name, kube_listen, kube_proxy_listen, labels
    )
    if heartbeat_interval:
        kube_cfg = config.kubernetes_service.model_copy(
            update={"heartbeat_interval": parse_duration(heartbeat_interval)}
        )
        config = config.model_copy(update={"kubernetes_service": kube_cfg})
        ssh_cfg = config.ssh_service.model_copy(
            update={"heartbeat_interval": parse_duration(heartbeat_interval)}
        )
        config = config.model_copy(update={"ssh_service": ssh_cfg})
    if strict_lock_grace:
        config = config.model_copy(update={"strict_lock_grace": parse_duration(strict_lock_grace)})
    directory = data_dir or (Path(config.data_dir) if config.data_dir else default_data_dir())
    setup_logging(config.debug)
    # A crash in native code (OpenSSL, uvloop, libpq) leaves the Python stack of every
    # thread on stderr, the log, instead of a process gone without a word.
    faulthandler.enable()
    daemon = Daemon(config, directory.resolve(), first_admin=first_admin)
    try:
        event_loop.run(daemon.run())
    except KeyboardInterrupt:
        pass
    logging.shutdown()


def _override_listeners(
    config: Config,
    auth_listen: str | None,
    web_listen: str | None,
    ssh_proxy_listen: str | None,
    ssh_listen: str | None,
    public_addr: str | None,
    labels: str | None,
) -> Config:
    auth = config.auth_service
    proxy = config.proxy_service
    ssh = config.ssh_service
    if auth_listen:
        auth = auth.model_copy(update={"listen_addr": auth_listen})
    if web_listen:
        proxy = proxy.model_copy(update={"web_listen_addr": web_listen})
    if ssh_proxy_listen:
        proxy = proxy.model_copy(update={"ssh_listen_addr": ssh_proxy_listen})
    if public_addr:
        proxy = proxy.model_copy(update={"public_addr": public_addr})
    if ssh_listen:
        ssh = ssh.model_copy(update={"listen_addr": ssh_listen})
    if labels:
        ssh = ssh.model_copy(update={"labels": parse_labels(labels)})
    return config.model_copy(
        update={"auth_service": auth, "proxy_service": proxy, "ssh_service": ssh}
    )


def _override_kube(
    config: Config,
    kubeconfig: str | None,
    cluster_name: str | None,
    listen: str | None,
    proxy_listen: str | None,
    labels: str | None,
) -> Config:
    kube = config.kubernetes_service
    updates: dict[str, object] = {}
    if kubeconfig:
        updates["kubeconfig_file"] = kubeconfig
    if cluster_name:
        updates["kube_cluster_name"] = cluster_name
    if listen:
        updates["listen_addr"] = listen
    if labels:
        updates["labels"] = parse_labels(labels)
    proxy = config.proxy_service
    if proxy_listen is not None:
        proxy = proxy.model_copy(update={"kube_listen_addr": proxy_listen})
    return config.model_copy(
        update={"kubernetes_service": kube.model_copy(update=updates), "proxy_service": proxy}
    )


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f'label "{part}" must be key=value', param_hint="--labels")
        labels[key.strip()] = value.strip()
    return labels


@cli.command()
def configure() -> None:
    """Print a commented certgate.yaml with every option and its default."""
    sys.stdout.write(SAMPLE)


@cli.command()
@click.argument("name", type=click.Choice(sorted(NOTIFIERS)))
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The plugin's YAML config (docs/plugins.md).",
)
@click.option("--debug", is_flag=True, help="JSON logs at debug level.")
def plugin(name: str, config_path: Path, debug: bool) -> None:
    """Notify a chat or a webhook of access requests: slack, mattermost or webhook."""
    setup_logging(debug)
    run_plugin(name, config_path)
    logging.shutdown()


main = run(cli)
