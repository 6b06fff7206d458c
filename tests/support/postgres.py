"""A throwaway PostgreSQL server for the tests: one per test session, on a free port.

PostgreSQL refuses to run as root, so when the tests run as root (CI, this machine) the
server runs as a dedicated unprivileged user, `certgate-test`, made here if missing.
The cluster lives in a temporary directory owned by that user and is removed at the end.

It serves TLS too, from a throwaway CA, so the TLS options of `storage` can be tested:

    host   all all          127.0.0.1/32 trust   every test database, TLS or not
    hostssl all certgate_tls 127.0.0.1/32 cert    user certgate_tls: TLS + client cert only

Each test gets a fresh store, a schema of its own (`create_schema()`); `storage(schema)`
is the `storage` config section that reaches it.
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.net import free_port
from tests.support.unix import ensure_account

TEST_USER = "certgate-test"
SUPERUSER = "certgate"
TLS_USER = "certgate_tls"
# The one database of the session; each test store is a schema in it.
DATABASE = "certgate_tests"


def bin_dir() -> Path:
    """Where Debian's `postgresql` put initdb and pg_ctl (the newest version installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL is not installed: run scripts/test-deps.sh as root")


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA the server's certificate does not chain to


@dataclass
class PostgresServer:
    root: Path
    port: int
    tls: TLSFiles
    _run_as: dict[str, Any]

    def restart(self) -> None:
        """Stop the server (every connection drops) and start it again. "fast", not
        "immediate": with synchronous_commit off, a crash would lose the last commits."""
        _run(
            [str(bin_dir() / "pg_ctl"), "restart", "-w", "-t", "60", "-m", "fast",
             "-D", str(self.root / "data"), "-l", str(self.root / "postgres.log")],
            self._run_as,
        )  # fmt: skip

    @property
    def admin_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"

    def conninfo(self, schema: str, user: str = SUPERUSER) -> str:
        """Where a store in `schema` lives (tables go to the first schema on the path)."""
        return (
            f"host=127.0.0.1 port={self.port} user={user} dbname={DATABASE}"
            f" options=-csearch_path={schema}"
        )

    def storage(self, schema: str) -> dict[str, Any]:
        return {"type": "postgres", "conn_string": self.conninfo(schema), "poll_interval": 0.05}

    def create_schema(self) -> str:
        """A fresh, empty store: a schema of its own (far quicker to make than a database)."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.sql(name, f'CREATE SCHEMA "{name}"')
        return name

    def drop_schema(self, name: str) -> None:
        self.sql(name, f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def sql(self, schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; its rows (empty when it returns none)."""
        with psycopg.connect(self.conninfo(schema), autocommit=True) as conn:
            cursor = conn.execute(query.encode(), params or None)
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        subprocess.run(
            [str(bin_dir() / "pg_ctl"), "stop", "-D", str(self.root / "data"), "-m", "immediate"],
            check=False,
            capture_output=True,
            cwd="/",
            **self._run_as,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start as an unprivileged user; returns once it accepts connections."""
    run_as: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="certgate-pg-"))
    if os.geteuid() == 0:
        account = _ensure_test_user()
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data = root / "data"
    tls = _write_tls(root, run_as)
    port = free_port()
    try:
        _run(
            [str(bin_dir() / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            run_as,
        )  # fmt: skip
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"hostnossl all {TLS_USER} 127.0.0.1/32 reject\n"
            f"hostssl all {TLS_USER} 127.0.0.1/32 cert\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        options = " ".join(
            [
                f"-p {port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={root}",
                # A throwaway cluster: durability buys nothing, speed does.
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                "-c max_connections=300",
                "-c ssl=on",
                f"-c ssl_cert_file={root / 'server.crt'} -c ssl_key_file={root / 'server.key'}",
                f"-c ssl_ca_file={tls.ca}",
            ]
        )
        _run(
            [str(bin_dir() / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data),
             "-l", str(root / "postgres.log"), "-o", options],
            run_as,
        )  # fmt: skip
    except BaseException:
        log = root / "postgres.log"
        detail = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL:\n{detail}") from None
    server = PostgresServer(root, port, tls, run_as)
    with psycopg.connect(server.admin_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {TLS_USER} LOGIN SUPERUSER")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    return server


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


def _run(argv: list[str], run_as: dict[str, Any]) -> None:
    # cwd: the unprivileged user may not be allowed into the directory pytest runs in.
    result = subprocess.run(argv, capture_output=True, text=True, cwd="/", **run_as)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stdout}{result.stderr}")


def _ensure_test_user() -> pwd.struct_passwd:
    return ensure_account(
        TEST_USER, ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    )


def _write_tls(root: Path, run_as: dict[str, Any]) -> TLSFiles:
    """A CA, the server's certificate for 127.0.0.1, a client certificate for TLS_USER."""
    ca_key, ca_cert = _ca("certgate test postgres CA")
    _, other_ca = _ca("some other CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "127.0.0.1", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, TLS_USER, server=False)
    files = TLSFiles(
        ca=root / "ca.crt",
        client_cert=root / "client.crt",
        client_key=root / "client.key",
        other_ca=root / "other-ca.crt",
    )
    files.ca.write_bytes(_pem(ca_cert))
    files.other_ca.write_bytes(_pem(other_ca))
    files.client_cert.write_bytes(_pem(client_cert))
    _write_key(files.client_key, client_key)
    (root / "server.crt").write_bytes(_pem(server_cert))
    _write_key(root / "server.key", server_key)
    if run_as:
        for name in ("server.crt", "server.key", "ca.crt"):
            os.chown(root / name, run_as["user"], run_as["group"])
    return files


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(name))]),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (started on first use, stopped at the end)."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_schema(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty store on the session's server, dropped after the test."""
    name = postgres_server.create_schema()
    yield name
    postgres_server.drop_schema(name)


def certgate_config(conninfo: str, auth_service_more: str = "") -> str:
    """A certgate.yaml whose auth keeps its state in PostgreSQL at `conninfo`, with
    `auth_service_more` (lines indented under auth_service) added."""
    return (
        "version: v1\n"
        "auth_service:\n"
        "  storage:\n"
        "    type: postgres\n"
        f"    conn_string: {json.dumps(conninfo)}\n" + auth_service_more
    )
