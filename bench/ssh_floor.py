"""What one SSH session start costs a bare asyncssh server: the floor under each hop.

    flock /work/bench.lock .venv/bin/python bench/ssh_floor.py [--seconds 8] [--clients 20]

A session start through certgate is two asyncssh servers (the proxy's jump connection,
then the node) plus what certgate does around them. This measures the asyncssh part alone,
in a server process that does nothing else: the client (asyncssh, in another process, as in
bench/concurrency.py) connects with an ECDSA key and an Ed25519-signed user certificate,
opens a session channel with a PTY and a shell, sends `echo $((40+2))ok`, waits for the
answer the server writes back at once (no process is started) and closes. Printed: the
server's CPU per start (getrusage in the server), starts/s, and the same for the key
exchange alone (connect without authentication). Nothing is asserted.

The server uses the options certgate's servers use (AES-GCM only, a CA through
authorized_keys `cert-authority` lines parsed once) and certcapture's shims (no config
reload per connection, no filler SSH_MSG_IGNORE packets); "asyncssh as is" is the same
session start without those two shims. Two hops of this are what no change in certgate
can take below; bench/concurrency.py prints the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from certgate.srv import certcapture  # noqa: E402
from certgate.srv.server_options import DEFAULT_CIPHERS, certificate_server_options  # noqa: E402

MARKER = b"42ok"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Session(asyncssh.SSHServerSession[bytes]):
    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._chan.write(MARKER + b"\r\n")


def _serve(ca_line: str, with_auth: bool, shims: bool, ready: Any, stop: Any) -> None:
    async def main() -> None:
        authorized = asyncssh.import_authorized_keys(f'cert-authority,principals="*" {ca_line}')

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: Any) -> None:
                self._conn = conn
                if shims:
                    certcapture.skip_config_reload(conn)
                    certcapture.skip_ignore_packets(conn)

            def begin_auth(self, username: str) -> bool:
                self._conn.set_authorized_keys(authorized)
                return with_auth

            def public_key_auth_supported(self) -> bool:
                return True

            def session_requested(self) -> Any:
                return _Session()

        host_key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_factory=Server,
            server_host_keys=[host_key],
            encryption_algs=list(DEFAULT_CIPHERS),
            **certificate_server_options(),
        )
        ready.send(server.get_port())
        before = cpu()
        await asyncio.to_thread(stop.recv)
        ready.send(cpu() - before)
        server.close()

    asyncio.run(main())


async def _clients(port: int, keys: Any, clients: int, seconds: float, auth: bool) -> int:
    deadline = time.monotonic() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            conn = await asyncssh.connect(
                "127.0.0.1", port, username="cgbench", client_keys=keys, known_hosts=None,
                agent_path=None, config=None, preferred_auth="publickey" if auth else "none",
            )  # fmt: skip
            if auth:
                process = await conn.create_process(term_type="xterm", encoding=None)
                process.stdin.write(b"echo $((40+2))ok\n")
                await process.stdout.readuntil(MARKER)
            conn.close()
            await conn.wait_closed()
            done += 1

    await asyncio.gather(*(one() for _ in range(clients)), return_exceptions=not auth)
    return done


def measure(
    ca_line: str, keys: Any, args: argparse.Namespace, auth: bool, shims: bool
) -> tuple[int, float]:
    context = multiprocessing.get_context("spawn")
    ready, theirs = context.Pipe()
    stop_ours, stop_theirs = context.Pipe()
    server = context.Process(target=_serve, args=(ca_line, auth, shims, theirs, stop_theirs))
    server.start()
    port = ready.recv()
    count = asyncio.run(_clients(port, keys, args.clients, args.seconds, auth))
    stop_ours.send(None)
    server_cpu = float(ready.recv())
    server.join()
    return count, server_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()
    ca = asyncssh.generate_private_key("ssh-ed25519")
    user = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    cert = ca.generate_user_certificate(user, "bencher", principals=["cgbench"])
    ca_line = ca.export_public_key().decode().strip()
    keys = [(user, cert)]
    print(f"asyncssh {asyncssh.__version__}, {args.clients} clients, {args.seconds:g} s each")
    runs = (
        ("key exchange only", False, True),
        ("session start", True, True),
        ("... asyncssh as is", True, False),
    )
    for label, auth, shims in runs:
        count, server_cpu = measure(ca_line, keys, args, auth, shims)
        print(
            f"{label:18}: {count / args.seconds:6.1f} /s, server CPU"
            f" {server_cpu * 1000 / max(1, count):5.2f} ms each ({count} in the window)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
