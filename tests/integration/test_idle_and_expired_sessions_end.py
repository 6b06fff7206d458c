"""A security officer's roles: idle shells close by themselves, a session does not outlive
the certificate it began with, and a role that requires per-session MFA (not built yet)
refuses sessions rather than run them without it. The same on a certgate node and on an
agentless OpenSSH node served by the proxy: one session monitor, one authorizer. Someone
who joins another's session is held to their own roles' idle timeout and expiry too."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.support.cluster import BIN, Cluster, User
from tests.support.sshd import run_sshd
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgid"
AGENTLESS = "agentless-idle"
ROLES = f"""\
kind: role
metadata: {{name: idle-dev}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
  options: {{client_idle_timeout: 3s}}
---
kind: role
metadata: {{name: expiring-dev}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
  options: {{disconnect_expired_cert: true}}
---
kind: role
metadata: {{name: plain-dev}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
---
kind: role
metadata: {{name: idle-pair}}
spec:
  allow: {{join_sessions: [{{roles: [plain-dev], kinds: [ssh], modes: [peer]}}]}}
  options: {{client_idle_timeout: 3s}}
---
kind: role
metadata: {{name: expiring-pair}}
spec:
  allow: {{join_sessions: [{{roles: [plain-dev], kinds: [ssh], modes: [peer]}}]}}
  options: {{disconnect_expired_cert: true}}
"""
MFA_ROLE = f"""\
kind: role
metadata: {{name: mfa-dev}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
  options: {{require_session_mfa: true}}
"""
MFA_REFUSAL = 'role "mfa-dev" requires per-session MFA, which this cluster does not support yet'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(tmp_path_factory.mktemp("monitor"), roles="auth,proxy,node")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLES)
    etc = c.workdir / "openssh"
    key = etc / "certgate_host"
    c.cgctl(
        "auth", "sign", f"--host={AGENTLESS}", "--principals=127.0.0.1", "--ttl=1h",
        "--format=openssh", f"--out={key}",
    )  # fmt: skip
    with run_sshd(
        etc,
        c.cgctl("auth", "export", "--type=user").stdout,
        host_key=key,
        host_cert=(etc / "certgate_host-cert.pub").read_text(),
    ) as sshd:
        c.cgctl(
            "create", "-f", "-",
            input=f"""\
kind: node
metadata: {{name: {AGENTLESS}, labels: {{env: agentless}}}}
spec: {{sub_kind: openssh, addr: "127.0.0.1:{sshd.port}"}}
""",
        )  # fmt: skip
        yield c
    c.stop()


def logged_in(cluster: Cluster, name: str, roles: str, *login_args: str) -> tuple[User, Path]:
    user = cluster.add_user(name, roles=roles)
    cluster.login(user, *login_args)
    config = user.home / "openssh_config"

    def ready() -> str:
        text = cluster.cgsh(user, "config").stdout
        return text if "node-1" in text and AGENTLESS in text else ""

    config.write_text(eventually(ready))
    return user, config


def shell(config: Path, target: str) -> pexpect.spawn:
    child = pexpect.spawn("ssh", ["-F", str(config), "-tt", target], timeout=15, encoding="utf-8")
    child.sendline("echo READY-$((40+2))")
    child.expect("READY-42")
    return child


def events(cluster: Cluster, *filters: str) -> list[dict[str, Any]]:
    out = cluster.cgctl("audit", "ls", "--format=json", "--limit=500", *filters).stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


@pytest.mark.parametrize("node", ["node-1", AGENTLESS])
def test_an_idle_shell_is_closed_with_the_reason(cluster: Cluster, node: str) -> None:
    name = f"idle-{node.split('-')[0]}"
    _, config = logged_in(cluster, name, "idle-dev")
    live = shell(config, f"{LOGIN}@{node}")
    # Typing keeps it open past the timeout...
    for _ in range(4):
        time.sleep(1)
        live.sendline("echo TYPED-$((1+1))")
        live.expect("TYPED-2")
    # ...then three quiet seconds end it, with one line saying why.
    quiet = time.monotonic()
    live.expect(r"certgate: session ended: no input for 3s \(client_idle_timeout of your roles\)")
    live.expect(pexpect.EOF)
    assert 3 <= time.monotonic() - quiet < 30  # not early; the upper bound is generous
    ended = eventually(
        lambda: [e for e in events(cluster, "--event=session.end", f"--user={name}")]
    )
    assert ended[0]["reason"] == "idle timeout"


@pytest.mark.parametrize("node", ["node-1", AGENTLESS])
def test_a_session_ends_when_its_certificate_expires(cluster: Cluster, node: str) -> None:
    name = f"exp-{node.split('-')[0]}"
    _, config = logged_in(cluster, name, "expiring-dev", "--ttl=12s")
    live = shell(config, f"{LOGIN}@{node}")
    live.expect(r"your certificate expired at .* \(disconnect_expired_cert of your roles\)", 30)
    live.expect(pexpect.EOF)
    ended = eventually(
        lambda: [e for e in events(cluster, "--event=session.end", f"--user={name}")]
    )
    assert ended[0]["reason"] == "certificate expired"


def joined(user: User, session_id: str) -> Any:
    """`cgsh join ID --mode=peer` as `user`, once it has joined."""
    view = pexpect.spawn(
        str(BIN / "cgsh"),
        ["join", session_id, "--mode=peer"],
        env={**os.environ, "CERTGATE_HOME": str(user.home), "TERM": "xterm"},
        timeout=15,
        encoding="utf-8",
    )
    view.expect(f"joined session {session_id} as peer")
    return view


@pytest.mark.parametrize("node", ["node-1", AGENTLESS])
def test_joiners_are_cut_by_their_own_idle_timeout_and_certificate_expiry(
    cluster: Cluster, node: str
) -> None:
    where = node.split("-")[0]
    owner, config = logged_in(cluster, f"host-{where}", "plain-dev")
    live = shell(config, f"{LOGIN}@{node}")
    listed = eventually(
        lambda: [
            s
            for s in json.loads(cluster.cgsh(owner, "sessions", "ls", "--format=json").stdout)
            if s["node"] == node
        ]
    )
    session_id = listed[0]["id"]
    idler = cluster.add_user(f"idler-{where}", roles="idle-pair")
    cluster.login(idler)
    late = cluster.add_user(f"expiring-{where}", roles="expiring-pair")
    cluster.login(late, "--ttl=12s")
    # The idle joiner joins last: from then on it must type within 3 s.
    expiring = joined(late, session_id)
    idle = joined(idler, session_id)
    # A peer's typing is input: it keeps the idle joiner in past its timeout...
    for n in range(4):
        time.sleep(1)
        idle.send(f"echo PEER-{n}-$((1+1))\r")
        idle.expect(f"PEER-{n}-2")
    # ...then three quiet seconds end its view, with one line saying why.
    idle.expect(r"certgate: session ended: no input for 3s \(client_idle_timeout of your roles\)")
    idle.expect(pexpect.EOF)
    # The other joiner's certificate runs out (its view would otherwise last: no idle
    # timeout, and the owner's roles set no expiry).
    expiring.expect(r"your certificate expired at .* \(disconnect_expired_cert of your roles\)", 30)
    expiring.expect(pexpect.EOF)
    # The session itself goes on: the owner's roles set neither.
    live.sendline("echo OWNER-$((2+3))")
    live.expect("OWNER-5")
    live.sendline("exit")
    live.expect(pexpect.EOF)


def test_require_session_mfa_refuses_sessions_until_it_exists(cluster: Cluster) -> None:
    created = cluster.cgctl("create", "-f", "-", input=MFA_ROLE)
    assert "require_session_mfa is not yet available" in created.stderr
    user, config = logged_in(cluster, "mfa-user", "mfa-dev")
    for node in ("node-1", AGENTLESS):
        through_cgsh = cluster.cgsh(user, "ssh", f"{LOGIN}@{node}", "id", check=False)
        assert through_cgsh.returncode == 3
        assert through_cgsh.stderr.strip() == (
            f"error: access denied to {LOGIN}@{node}: {MFA_REFUSAL}"
        )
        stock = subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", f"{LOGIN}@{node}", "id"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert stock.returncode == 255 and "Permission denied" in stock.stderr
    # Each node's refusal is audited twice: by the proxy's pre-check that cgsh asks, and
    # where stock ssh was refused at login (the node; the proxy for the agentless node).
    refused = eventually(
        lambda: (
            found
            if len(found := events(cluster, "--event=session.rejected", "--user=mfa-user")) >= 4
            else None
        )
    )
    reasons = {(e["node"], e["reason"]) for e in refused}
    for node in ("node-1", AGENTLESS):
        assert (node, f"access denied: {MFA_REFUSAL}") in reasons
        assert (node, f"access denied to {LOGIN}@{node}: {MFA_REFUSAL}") in reasons
    assert {e["server"] for e in refused} == {"node-1", "proxy"}
    assert not events(cluster, "--event=session.start", "--user=mfa-user")
