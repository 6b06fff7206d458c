"""The asyncssh shims: pinned version, hook shapes, and that they fire when they should.

If an asyncssh upgrade fails here, read certgate/node/certcapture.py's docstring, check
the wrapped internals in the new release, then bump ASYNCSSH_PINNED.
"""

from __future__ import annotations

import base64
import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncssh
import pytest
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE
from asyncssh.encryption import BasicEncryption, ChachaEncryption, GCMEncryption
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from certgate.api.identity import Identity
from certgate.auth.ca import CASigner
from certgate.errors import AccessDenied
from certgate.node.sshd import NodeSSHServer
from certgate.srv import certcapture
from certgate.srv.server_options import certificate_server_options
from certgate.srv.session import SessionPolicy

from .conftest import Authorities


def test_asyncssh_is_the_version_the_shims_were_checked_against() -> None:
    assert asyncssh.__version__ == certcapture.ASYNCSSH_PINNED, (
        f"asyncssh is now {asyncssh.__version__}: re-read the internals that "
        "certgate/node/certcapture.py wraps, then bump ASYNCSSH_PINNED"
    )


def test_wrapped_hooks_still_have_their_shape() -> None:
    certcapture.check_compatible()


def test_asyncssh_still_routes_auth_and_agent_requests_through_the_hooks() -> None:
    # Public-key auth must go through conn.validate_public_key with the signed data...
    auth_start = inspect.getsource(asyncssh.auth._ServerPublicKeyAuth._start)
    assert "self._conn.validate_public_key(self._username, key_data," in auth_start
    # ...which must verify the signature itself before answering True for it.
    validate = inspect.getsource(asyncssh.SSHServerConnection.validate_public_key)
    assert "key.verify(String(self._session_id) + msg, signature)" in validate
    assert "_validate_client_certificate" in validate
    # Agent forwarding requests must go through conn.create_agent_listener.
    agent_req = inspect.getsource(asyncssh.channel.SSHServerChannel._finish_agent_req_request)
    assert "self._conn.create_agent_listener()" in agent_req


def test_check_compatible_fails_loudly_when_a_hook_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def validate_public_key(self: Any, username: str, key_data: bytes) -> bool:
        return False

    monkeypatch.setattr(asyncssh.SSHServerConnection, "validate_public_key", validate_public_key)
    with pytest.raises(certcapture.ShimError, match="broke certgate's certificate capture"):
        certcapture.check_compatible()


class FakeConnection:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[tuple[str, bytes, bytes, bytes]] = []
        self.listeners = 0

    async def validate_public_key(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        self.calls.append((username, key_data, msg, signature))
        return self.answer

    async def create_agent_listener(self) -> bool:
        self.listeners += 1
        return True

    def get_agent_path(self) -> str:
        return "/tmp/asyncssh-x/agent"


async def test_capture_fires_only_for_validated_signed_requests() -> None:
    seen: list[tuple[str, bytes]] = []

    async def on_verified(login: str, key_data: bytes) -> bool:
        seen.append((login, key_data))
        return login == "good"

    conn = FakeConnection(answer=True)
    certcapture.install_certificate_capture(conn, on_verified)
    # A probe without a signature is answered by asyncssh alone.
    assert await conn.validate_public_key("good", b"cert", b"", b"") is True
    assert seen == []
    # A signed request asyncssh accepted reaches us, and our answer is final.
    assert await conn.validate_public_key("good", b"cert", b"msg", b"sig") is True
    assert await conn.validate_public_key("bad", b"cert", b"msg", b"sig") is False
    assert seen == [("good", b"cert"), ("bad", b"cert")]

    rejecting = FakeConnection(answer=False)
    certcapture.install_certificate_capture(rejecting, on_verified)
    assert await rejecting.validate_public_key("good", b"cert", b"msg", b"sig") is False
    assert len(seen) == 2  # asyncssh's refusal never reaches us


async def test_agent_guard_vetoes_and_reports_the_socket() -> None:
    created: list[str] = []
    conn = FakeConnection(answer=True)
    allowed = False
    certcapture.guard_agent_forwarding(conn, lambda: allowed, created.append)
    assert await conn.create_agent_listener() is False
    assert conn.listeners == 0
    allowed = True
    assert await conn.create_agent_listener() is True
    assert created == ["/tmp/asyncssh-x/agent"]


def test_certificate_text_round_trips(authorities: Authorities) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    now = datetime.now(UTC)
    cert = authorities.user.sign_user_ssh(
        public.decode(),
        Identity(username="u", logins=("root",)),
        now,
        now + timedelta(minutes=5),
        permit_port_forwarding=False,
        permit_agent_forwarding=False,
    )
    kind, blob = cert.split()[:2]
    assert certcapture.certificate_text(base64.b64decode(blob)) == f"{kind} {blob}"
    with pytest.raises(ValueError):
        certcapture.certificate_text(b"\x00")


Authorize = Callable[[Identity, str, str], Awaitable[SessionPolicy]]


async def _allow(identity: Identity, login: str, client_addr: str) -> SessionPolicy:
    return SessionPolicy()


async def _start_node(
    authorities: Authorities, authorize: Authorize, user_ca_lines: Callable[[], list[str]]
) -> tuple[NodeSSHServer, int]:
    host_key = ed25519.Ed25519PrivateKey.generate()
    host_public = host_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    host_cert = authorities.host.sign_host_ssh(
        host_public.decode(), "node-cc", ["127.0.0.1"], datetime.now(UTC) + timedelta(hours=1)
    )
    server = NodeSSHServer(
        host_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        host_cert,
        user_ca_lines,
        authorize,
        None,
        "node-cc",
    )
    return server, await server.start("127.0.0.1", 0)


def _client_key(
    ca: CASigner, identity: Identity, valid: timedelta = timedelta(hours=1)
) -> tuple[Any, Any]:
    user_key = ec.generate_private_key(ec.SECP256R1())
    public = user_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    now = datetime.now(UTC)
    cert = ca.sign_user_ssh(
        public.decode(),
        identity,
        now - timedelta(minutes=1),
        now + valid,
        permit_port_forwarding=False,
        permit_agent_forwarding=False,
    )
    private = user_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return asyncssh.import_private_key(private), asyncssh.import_certificate(cert)


async def _login(port: int, keys: list[tuple[Any, Any]]) -> None:
    async with asyncssh.connect(
        "127.0.0.1",
        port,
        username="root",
        client_keys=keys,
        known_hosts=None,
        agent_path=None,
        config=None,
        encryption_algs=["aes128-gcm@openssh.com"],
    ):
        pass


async def test_asyncssh_client_login_hands_the_certificate_identity_to_the_authorizer(
    authorities: Authorities,
) -> None:
    """End to end inside one process: the authorizer sees what the certificate says."""
    seen: list[tuple[Identity, str, str]] = []

    async def authorize(identity: Identity, login: str, client_addr: str) -> SessionPolicy:
        seen.append((identity, login, client_addr))
        if "blocked" in identity.roles:
            raise AccessDenied("blocked")
        return SessionPolicy()

    server, port = await _start_node(authorities, authorize, lambda: authorities.user_ca_lines)
    try:
        identity = Identity(
            username="carol",
            roles=("dev", "ops"),
            traits={"team": ["infra"]},
            logins=("root",),
        )
        await _login(port, [_client_key(authorities.user, identity)])
        assert len(seen) == 1
        got, got_login, client_addr = seen[0]
        assert (got.username, got.roles, got.traits, got.logins) == (
            "carol",
            ("dev", "ops"),
            {"team": ["infra"]},
            ("root",),
        )
        assert got_login == "root" and client_addr.startswith("127.0.0.1:")

        # A refusal by the authorizer is a failed login.
        blocked = Identity(username="dave", roles=("blocked",), logins=("root",))
        with pytest.raises(asyncssh.PermissionDenied):
            await _login(port, [_client_key(authorities.user, blocked)])
        assert [identity.username for identity, _, _ in seen] == ["carol", "dave"]
    finally:
        await server.close()


async def test_a_trusted_certificate_is_parsed_once_and_still_checked_every_time(
    authorities: Authorities, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[bytes] = []
    decode = certcapture.decode_ssh_certificate

    def counting_decode(key_data: bytes) -> Any:
        parsed.append(key_data)
        return decode(key_data)

    monkeypatch.setattr(certcapture, "decode_ssh_certificate", counting_decode)
    certcapture.TRUSTED_CERTIFICATES.clear()
    trusted = list(authorities.user_ca_lines)
    server, port = await _start_node(authorities, _allow, lambda: trusted)
    erin = Identity(username="erin", roles=("dev",), logins=("root",))
    try:
        # Two connections, each a probe and a signed request: parsed once.
        keys = [_client_key(authorities.user, erin)]
        cert = keys[0][1].public_data
        await _login(port, keys)
        await _login(port, keys)
        assert parsed.count(cert) == 1

        # A stranger's certificate is refused every time and never kept.
        stranger = [_client_key(authorities.other, erin)]
        for _ in range(2):
            with pytest.raises(asyncssh.PermissionDenied):
                await _login(port, stranger)
        assert parsed.count(stranger[0][1].public_data) == 2
        assert certcapture.TRUSTED_CERTIFICATES.get(stranger[0][1].public_data) is None

        # A kept certificate past its end is refused: validity is checked every time.
        class Later:
            @staticmethod
            def time() -> float:
                return datetime.now(UTC).timestamp() + 2 * 3600

        with monkeypatch.context() as later:
            later.setattr(asyncssh.public_key, "time", Later)
            with pytest.raises(asyncssh.PermissionDenied):
                await _login(port, keys)

        # So is one whose CA the node no longer trusts (a rotation, say).
        trusted[:] = [authorities.other.public_key_text]
        with pytest.raises(asyncssh.PermissionDenied):
            await _login(port, keys)
        assert parsed.count(cert) == 1  # refused from the kept parse, not parsed again
    finally:
        await server.close()


# The attributes SSHServerConnection.reload_config() sets from the options it rebuilds.
_RELOADED = (
    "host_based_auth", "public_key_auth", "kbdint_auth", "password_auth",
    "authorized_client_keys", "allow_pty", "x11_forwarding", "agent_forwarding",
    "rekey_bytes", "rekey_seconds", "keepalive_count_max", "keepalive_interval",
)  # fmt: skip


def test_the_skipped_config_reload_would_rebuild_the_same_options() -> None:
    """What skip_config_reload saves is a rebuild of what the connection already has:
    certgate's servers load no config file, so there is no Match block to apply."""
    reload = inspect.getsource(asyncssh.SSHServerConnection.reload_config)
    for name in _RELOADED:
        assert f"= options.{name}" in reload, f"reload_config no longer sets {name}"
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    options = asyncssh.SSHServerConnectionOptions(
        server_host_keys=[host_key], **certificate_server_options(agent_forwarding=True)
    )
    rebuilt = asyncssh.SSHServerConnectionOptions(
        options=options, reload=True, accept_addr="127.0.0.1", accept_port=3022,
        username="alice", client_host="127.0.0.1", client_addr="127.0.0.1",
    )  # fmt: skip
    assert not options.config.loaded
    for name in _RELOADED:
        if name == "authorized_client_keys":
            # () before, None (no AuthorizedKeysFile) after: asyncssh tests either for
            # truth, and our begin_auth sets the CA list right after the reload anyway.
            assert not rebuilt.authorized_client_keys and not options.authorized_client_keys
            continue
        assert getattr(rebuilt, name) == getattr(options, name), name


class _Options:
    def __init__(self, loaded: bool) -> None:
        self.config = type("Config", (), {"loaded": loaded})()


class _ReloadingConnection:
    def __init__(self, loaded: bool, rdns: bool = False) -> None:
        self._options = _Options(loaded)
        self._rdns_lookup = rdns
        self.reloads = 0

    async def reload_config(self) -> None:
        self.reloads += 1


async def test_config_reload_is_skipped_only_without_a_config_file_or_reverse_dns() -> None:
    plain = _ReloadingConnection(loaded=False)
    assert certcapture.skip_config_reload(plain)
    await plain.reload_config()
    assert plain.reloads == 0
    for kept in (_ReloadingConnection(loaded=True), _ReloadingConnection(False, rdns=True)):
        assert not certcapture.skip_config_reload(kept)
        await kept.reload_config()
        assert kept.reloads == 1  # the same call does reach asyncssh's reload here


def test_a_certificate_is_decoded_once_and_a_malformed_one_never_kept(
    authorities: Authorities,
) -> None:
    user_key = ed25519.Ed25519PrivateKey.generate()
    public = user_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    now = datetime.now(UTC)
    identity = Identity(username="carol", roles=("dev",), logins=("carol",), expires=now)
    cert = authorities.user.sign_user_ssh(
        public.decode(), identity, now - timedelta(minutes=1), now + timedelta(hours=1),
        permit_port_forwarding=False, permit_agent_forwarding=False,
    )  # fmt: skip
    blob = base64.b64decode(cert.split()[1])
    first = certcapture.certificate_identity(blob)
    assert (first.username, first.roles, first.logins) == ("carol", ("dev",), ("carol",))
    assert certcapture.certificate_identity(blob) is first
    with pytest.raises(ValueError):
        certcapture.certificate_identity(b"\x00")
    with pytest.raises(ValueError):
        certcapture.certificate_identity(b"\x00")  # raised again, not remembered


def test_asyncssh_still_sends_the_filler_the_shim_drops() -> None:
    send = inspect.getsource(asyncssh.connection.SSHConnection.send_packet)
    assert "self.send_packet(MSG_IGNORE, String(b''))" in send


class _Sender:
    def __init__(self, encryption: Any) -> None:
        self._send_encryption = encryption
        self.sent: list[tuple[int, tuple[bytes, ...]]] = []

    def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
        self.sent.append((pkttype, args))


@pytest.mark.parametrize("aead", [GCMEncryption, ChachaEncryption])
def test_the_filler_is_dropped_only_under_an_aead_cipher(aead: type) -> None:
    empty = b"\x00\x00\x00\x00"
    for encryption, dropped in (
        (aead.__new__(aead), True),
        (BasicEncryption.__new__(BasicEncryption), False),
        (None, False),
    ):
        conn = _Sender(encryption)
        certcapture.skip_ignore_packets(conn)
        conn.send_packet(MSG_IGNORE, empty)
        conn.send_packet(MSG_IGNORE, b"\x00\x00\x00\x01x")  # not filler
        conn.send_packet(MSG_CHANNEL_DATA, b"payload")
        expected = [] if dropped else [(MSG_IGNORE, (empty,))]
        assert conn.sent == [
            *expected,
            (MSG_IGNORE, (b"\x00\x00\x00\x01x",)),
            (MSG_CHANNEL_DATA, (b"payload",)),
        ]
