"""`cgsh login --insecure` trusts the proxy's certificate once, as OpenSSH trusts a host
key: the profile pins it, later calls need no --insecure, and a proxy that shows another
certificate (an impostor on its address, a rogue host with a valid join token) is refused
before anything is sent, with both fingerprints named. The proxy is reached and checked
before the password and code are asked for."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import threading
from pathlib import Path

import pexpect
from cryptography import x509

from certgate.client.proxy_trust import spki_pin
from tests.support.cluster import BIN, Cluster, User
from tests.support.net import free_port
from tests.support.tlsfiles import proxy_config, self_signed

CHANGED = "presents a different certificate than at your first login"


def _profile(user: User) -> dict[str, object]:
    data: dict[str, object] = json.loads((user.home / "profile.json").read_text())
    return data


def _pin_of(user: User) -> str:
    pin = _profile(user)["pin"]
    assert isinstance(pin, dict)
    return str(pin["sha256"])


def _restart(cluster: Cluster, *extra: str) -> None:
    cluster.stop()
    cluster.extra_args = list(extra)
    cluster.start()


def test_an_impostor_certificate_on_the_proxy_address_is_refused(workdir: Path) -> None:
    cluster = Cluster(workdir)
    cluster.start()
    try:
        alice = cluster.add_user("tofu-alice", logins="alice")
        cluster.login(alice)
        profile = _profile(alice)
        assert "insecure" not in profile  # --insecure is not remembered ...
        assert profile["pin"]["kind"] == "ca"  # type: ignore[index]
        assert cluster.cgsh(alice, "ls").returncode == 0  # ... yet no later call needs it

        # A restart gives the proxy a new key under the same cluster CA: still trusted.
        _restart(cluster)
        assert cluster.cgsh(alice, "ls").returncode == 0

        # Now something else answers on the proxy's address with its own certificate.
        cert_file, key_file = self_signed(workdir / "impostor")
        _restart(cluster, "--config", str(proxy_config(workdir, cert_file, key_file)))
        impostor = spki_pin(x509.load_pem_x509_certificate(cert_file.read_bytes()))
        for argv in (["ls"], ["recordings", "ls"], ["ssh", "alice@node-1", "true"]):
            refused = cluster.cgsh(alice, *argv, check=False)
            assert refused.returncode == 3, refused
            message = refused.stderr.strip()
            assert CHANGED in message and _pin_of(alice) in message and impostor in message
            assert "cgsh logout" in message and "Traceback" not in refused.stderr

        # Logging in again, even with --insecure, sends no password to it: refused
        # before the password is read (with none on stdin and no --otp, reading it
        # would fail with another message).
        again = cluster.cgsh(
            alice, "login", f"--proxy={cluster.proxy_addr}", f"--user={alice.name}",
            "--insecure", input="", check=False,
        )  # fmt: skip
        assert again.returncode == 3 and CHANGED in again.stderr, again
    finally:
        cluster.stop()


class _TLSServer:
    """Answers TLS on a loopback port with the given certificate, as a rogue host would
    (a tiny HTTP answer to anything that gets past the handshake)."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.requests = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    if tls.recv(65536):
                        self.requests += 1
                        body = b"[]"
                        tls.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 2\r\nConnection: close\r\n\r\n" + body
                        )
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def _pointed_at(user: User, proxy: str, home: Path) -> User:
    """A copy of `user`'s profile (keys, pin) whose proxy address is `proxy`."""
    shutil.copytree(user.home, home)
    profile = json.loads((home / "profile.json").read_text())
    profile["proxy"] = proxy
    (home / "profile.json").write_text(json.dumps(profile))
    return User(user.name, user.password, user.otp, home)


def test_a_rogue_host_certificate_cannot_stand_in_for_the_proxy(
    cluster: Cluster, workdir: Path
) -> None:
    # A host joined with a valid token holds a certificate from the same cluster CA.
    cluster.start_node("rogue-1", "env=dev")
    identity = cluster.workdir / "rogue-1" / "identity" / "node"
    bob = cluster.add_user("tofu-bob", logins="bob")
    cluster.login(bob)
    # A listing first: the real proxy's certificate is remembered in bob's keys, which
    # the copies below take along (a remembered certificate vouches for itself only).
    assert cluster.cgsh(bob, "ls").returncode == 0
    assert (bob.home / "keys" / "proxy_certs.json").exists()

    # The test's server would be seen: with the node's key and a self-signed
    # certificate pinned as the proxy's, the same profile gets through to it.
    rogue = _TLSServer(identity / "tls.crt", identity / "key.pem")
    try:
        refused = cluster.cgsh(
            _pointed_at(bob, f"127.0.0.1:{rogue.port}", workdir / "bob-rogue"), "ls", check=False
        )
        assert refused.returncode == 3, refused
        assert CHANGED in refused.stderr and _pin_of(bob) in refused.stderr
        assert rogue.requests == 0  # not one byte of a request reached it

        # It would have seen a request that got past the pin (the control case).
        cert_file, key_file = self_signed(workdir / "control")
        control = _TLSServer(cert_file, key_file)
        try:
            seen = _pointed_at(bob, f"127.0.0.1:{control.port}", workdir / "bob-control")
            profile = json.loads((seen.home / "profile.json").read_text())
            pinned = spki_pin(x509.load_pem_x509_certificate(cert_file.read_bytes()))
            profile["pin"] = {"kind": "spki", "sha256": pinned, "ca_pem": ""}
            (seen.home / "profile.json").write_text(json.dumps(profile))
            assert cluster.cgsh(seen, "ls", check=False).returncode == 0
            assert control.requests == 1
        finally:
            control.close()
    finally:
        rogue.close()


def test_a_self_signed_proxy_without_insecure_fails_before_any_prompt(
    cluster: Cluster, workdir: Path
) -> None:
    nobody = User("tofu-nobody", "unused", None, workdir / "nobody")  # type: ignore[arg-type]
    result = cluster.cgsh(
        nobody, "login", f"--proxy={cluster.proxy_addr}", "--user=tofu-nobody",
        input="", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"error: cannot verify the TLS certificate of https://{cluster.proxy_addr}: "
        "pass --insecure for a self-signed proxy, or check the address"
    )
    assert not (workdir / "nobody" / "profile.json").exists()


def test_login_with_no_flags_repeats_the_last_one(cluster: Cluster, workdir: Path) -> None:
    carol = cluster.add_user("tofu-carol", logins="carol")
    first = cluster.cgsh(
        carol, "login", f"--proxy=https://{cluster.proxy_addr}/", f"--user={carol.name}",
        "--insecure", f"--otp={carol.otp.next_code()}", input=carol.password + "\n",
    )  # fmt: skip
    assert f"Profile URL:        https://{cluster.proxy_addr}" in first.stdout
    again = cluster.cgsh(
        carol, "login", f"--otp={carol.otp.next_code()}", input=carol.password + "\n"
    )
    assert "Logged in as:       tofu-carol" in again.stdout
    assert f"https://{cluster.proxy_addr}" in again.stdout

    stranger = User("tofu-stranger", "unused", carol.otp, workdir / "stranger")
    result = cluster.cgsh(stranger, "login", input="", check=False)
    assert result.returncode == 3
    assert result.stderr.strip() == (
        "error: no earlier login to repeat: cgsh login --proxy=HOST:PORT --user=NAME"
    )


def test_in_a_terminal_the_prompts_come_after_the_proxy_is_checked(
    cluster: Cluster, workdir: Path
) -> None:
    frank = cluster.add_user("tofu-frank", logins="frank")
    env = {**os.environ, "CERTGATE_HOME": str(frank.home)}
    argv = ["login", f"--proxy=https://{cluster.proxy_addr}", f"--user={frank.name}"]

    # Without --insecure: the refusal, and no password prompt at all.
    child = pexpect.spawn(str(BIN / "cgsh"), argv, env=env, timeout=20)
    child.expect(pexpect.EOF)
    shown = child.before.decode()
    assert "pass --insecure" in shown and "Password" not in shown

    # With it: the prompts, then the profile (the password is not echoed).
    child = pexpect.spawn(str(BIN / "cgsh"), [*argv, "--insecure"], env=env, timeout=20)
    child.expect(f"Password for {frank.name}: ")
    child.sendline(frank.password)
    child.expect("One-time code: ")
    child.sendline(frank.otp.next_code())
    child.expect(pexpect.EOF)
    shown = child.before.decode()
    assert "Logged in as:       tofu-frank" in shown and frank.password not in shown
