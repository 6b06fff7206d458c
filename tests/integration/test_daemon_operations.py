"""Operating the daemon: health, metrics, clean shutdown, readable start-up errors,
and a separate proxy that joins with a token."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import yaml

from certgate.daemon.config import Config
from tests.support.cluster import BIN, Cluster, run
from tests.support.net import free_port


def test_health_readiness_and_metrics(cluster: Cluster) -> None:
    assert cluster.diag("/healthz")[0] == 200
    status, body = cluster.diag("/readyz")
    assert status == 200 and '"ready"' in body
    user = cluster.add_user("metrics-user")
    cluster.login(user)
    status, metrics = cluster.diag("/metrics")
    assert status == 200
    assert re.search(r"^certgate_logins_total [1-9]", metrics, re.M)
    assert re.search(r"^certgate_certificates_issued_total [1-9]", metrics, re.M)
    assert 'certgate_http_requests_total{service="auth",status="200"}' in metrics
    assert "certgate_errors_total" in metrics


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    c.start()
    started = time.monotonic()
    assert c.stop() == 0
    assert time.monotonic() - started < 20  # generous for a loaded machine
    assert "shutting down" in c.log.read_text()
    assert "Traceback" not in c.log.read_text()


def start_once(*args: str) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "certgate"), "start", *args], check=False)


def test_a_port_in_use_is_named(tmp_path: Path, cluster: Cluster) -> None:
    result = start_once(
        "--data-dir", str(tmp_path / "d"), "--roles", "auth", "--diag-addr", "",
        "--auth-listen", cluster.auth_addr,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().endswith(
        f"error: cannot listen on {cluster.auth_addr} for auth: the address is already in use"
    )
    assert "Traceback" not in result.stderr


def test_config_problems_are_one_line(tmp_path: Path) -> None:
    missing = start_once("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith(f"error: cannot read config {tmp_path}/nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("auth_service:\n  listen_addr: [1, 2]\n")
    result = start_once("--config", str(bad))
    assert result.returncode == 2
    assert "auth_service.listen_addr: must be a string" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("auth_service: {\n")
    assert "invalid YAML" in start_once("--config", str(broken)).stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("auth_servce: {}\n")
    assert "auth_servce: unknown field" in start_once("--config", str(unknown)).stderr


def test_an_unwritable_data_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = start_once("--data-dir", str(blocker / "data"), "--diag-addr", "")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: cannot write the data dir {blocker}/data: Not a directory"
    )


def test_configure_prints_a_config_that_starts(tmp_path: Path) -> None:
    text = run([str(BIN / "certgate"), "configure"]).stdout
    data = yaml.safe_load(text)
    assert data["version"] == "v1"
    assert set(data) >= {"auth_service", "proxy_service", "ssh_service", "kubernetes_service"}
    # Every option of the config schema is in the sample, and the sample is valid.
    assert _keys(Config.model_validate(data).model_dump()) == _keys(data)
    # ... and says the defaults: a config made from it behaves as no config does.
    assert Config.model_validate(data) == Config()
    data["data_dir"] = str(tmp_path / "data")
    data["diag_addr"] = f"127.0.0.1:{free_port()}"
    data["auth_service"]["listen_addr"] = f"127.0.0.1:{free_port()}"
    # Behind a balancer this host cannot reach itself through: cgctl here still works.
    data["auth_service"]["advertise_addr"] = "auth-balancer.invalid:3025"
    # Every port a free one: the defaults may be taken (another cluster on this host, or
    # a test running beside this one).
    for key in ("web_listen_addr", "ssh_listen_addr", "kube_listen_addr"):
        data["proxy_service"][key] = f"127.0.0.1:{free_port()}"
    data["ssh_service"]["enabled"] = False
    config = tmp_path / "certgate.yaml"
    config.write_text(yaml.safe_dump(data))
    process = subprocess.Popen(
        [str(BIN / "certgate"), "start", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline and not (tmp_path / "data" / "admin" / "auth_addr").exists()
        ):
            time.sleep(0.1)
        assert (tmp_path / "data" / "admin" / "auth_addr").exists()
        users = run([str(BIN / "cgctl"), "--data-dir", str(tmp_path / "data"), "users", "ls"])
        assert users.returncode == 0, users.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def _keys(tree: object, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict) or not tree or prefix.endswith("labels"):
        return {prefix}
    return {k for key, value in tree.items() for k in _keys(value, f"{prefix}.{key}")}


def test_every_command_has_help() -> None:
    for tool, commands in (
        ("certgate", [["start"], ["configure"]]),
        ("cgctl", [["users", "add"], ["users", "ls"], ["tokens", "add"], ["create"], ["get"],
                   ["rm"], ["auth", "export"], ["audit", "ls"]]),
        ("cgsh", [["login"], ["status"], ["logout"]]),
    ):  # fmt: skip
        assert "Usage:" in run([str(BIN / tool), "--help"]).stdout
        for command in commands:
            assert "Usage:" in run([str(BIN / tool), *command, "--help"]).stdout


def _proxy_join_command(cluster: Cluster, kind: str) -> tuple[str, list[str]]:
    out = cluster.cgctl("tokens", "add", f"--type={kind}", "--ttl=5m").stdout
    line = next(line for line in out.splitlines() if line.startswith("certgate start"))
    token = line.split("--token ")[1].split()[0]
    return token, line.split()[2:]


def test_a_separate_proxy_joins_with_a_token(cluster: Cluster, tmp_path: Path) -> None:
    _token, args = _proxy_join_command(cluster, "proxy")
    assert args[:2] == ["--roles", "proxy"]
    web = f"127.0.0.1:{free_port()}"
    log = tmp_path / "proxy.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(BIN / "certgate"), "start", *args, "--data-dir", str(tmp_path / "proxy-data"),
             "--web-listen", web, "--public-addr", web, "--diag-addr", "", "--nodename", "proxy-2"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        user = cluster.add_user("via-second-proxy")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "proxy web listening" not in log.read_text():
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        result = cluster.cgsh(
            user, "login", f"--proxy={web}", f"--user={user.name}", "--insecure",
            f"--otp={user.otp.next_code()}", input=user.password + "\n",
        )  # fmt: skip
        assert "Logged in as:       via-second-proxy" in result.stdout
        assert (tmp_path / "proxy-data" / "identity" / "proxy" / "tls.crt").exists()
        joins = cluster.cgctl("audit", "ls", "--event=join", "--format=json").stdout
        assert '"name": "proxy-2"' in joins
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


def test_join_refusals(cluster: Cluster, tmp_path: Path) -> None:
    def join(args: list[str], name: str) -> subprocess.CompletedProcess[str]:
        return start_once(
            *args, "--data-dir", str(tmp_path / name), "--diag-addr", "",
            "--web-listen", f"127.0.0.1:{free_port()}",
        )  # fmt: skip

    _token, args = _proxy_join_command(cluster, "node")
    args[1] = "proxy"  # a node token used to join as a proxy
    wrong_role = join(args, "wrong-role")
    assert wrong_role.returncode == 3
    assert 'this join token does not allow the role "proxy"' in wrong_role.stderr

    token, args = _proxy_join_command(cluster, "proxy")
    cluster.cgctl("tokens", "rm", token)
    removed = join(args, "removed")
    assert removed.returncode == 3
    assert "the join token is unknown or expired" in removed.stderr

    token, args = _proxy_join_command(cluster, "proxy")
    pin_at = args.index("--ca-pin") + 1
    args[pin_at] = "sha256:" + "0" * 64
    bad_pin = join(args, "bad-pin")
    assert bad_pin.returncode == 3
    assert "does not match --ca-pin" in bad_pin.stderr
    for result in (wrong_role, removed, bad_pin):
        assert "Traceback" not in result.stderr


def test_a_service_with_no_auth_to_reach_says_so(tmp_path: Path) -> None:
    result = start_once("--data-dir", str(tmp_path / "d"), "--roles", "node", "--diag-addr", "")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: this process runs no auth service: give --auth-server HOST:PORT (and --token"
        " to join the cluster)"
    )


def test_a_signal_stops_a_service_still_waiting_for_auth(cluster: Cluster) -> None:
    """A node whose auth is away waits for it as it starts (up to minutes); SIGTERM or
    Ctrl-C then ends it, as it does once started. Before, the signal waited for the
    start to finish, and an operator had to kill -9 it."""
    node, _ = cluster.start_node("waits-for-auth", "env=sig")
    node.send_signal(signal.SIGTERM)
    assert node.wait(timeout=15) == 0
    log = cluster.workdir / "waits-for-auth-again.log"
    with log.open("wb") as log_file:
        again = subprocess.Popen(
            [str(BIN / "certgate"), "start", "--roles", "node", "--nodename", "waits-for-auth",
             "--auth-server", f"127.0.0.1:{free_port()}",  # nothing listens there
             "--data-dir", str(cluster.workdir / "waits-for-auth"),
             "--ssh-listen", f"127.0.0.1:{free_port()}", "--diag-addr", ""],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        time.sleep(2)
        assert again.poll() is None, log.read_text()  # still waiting for auth
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=10) == 0
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
    assert "stopped while starting" in log.read_text()
    assert "Traceback" not in log.read_text()


def test_a_bad_name_is_refused_before_anything_starts(tmp_path: Path) -> None:
    rule = "must be 1 to 253 characters, start with a letter or digit and hold only"
    for flag, value in (("--nodename", "a/b"), ("--first-admin", "bad!name")):
        result = start_once("--data-dir", str(tmp_path / "d"), flag, value, "--diag-addr", "")
        assert result.returncode == 2
        assert result.stderr.startswith(f'error: invalid {flag} "{value}": {rule}')
        assert "listening" not in result.stderr  # before, every service started first
