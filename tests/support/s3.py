"""An S3-compatible server for the tests: moto's, in memory, one per test session.

`moto_server` (PyPI `moto[server]`, a dev dependency) speaks the S3 API on a free
loopback port. It takes any credentials; the session sets dummy ones in the
environment, where boto3 (in this process and in certgate processes started by the
tests) finds them as it would an operator's.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.net import free_port, wait_for_port

REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]
    _client: Any = None

    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION)
        return self._client

    def create_bucket(self) -> str:
        name = f"certgate-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def uri(self, bucket: str, prefix: str = "recordings") -> str:
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region={REGION}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's moto S3 server (started on first use, stopped at the end)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto = Path(sys.executable).parent / "moto_server"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        if not wait_for_port(port, process, timeout=60):
            raise RuntimeError(f"moto_server did not start:\n{log.read_text()}")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ACCESS_KEY_ID", "certgate-test")
            env.setenv("AWS_SECRET_ACCESS_KEY", "certgate-test")
            yield S3Server(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's server."""
    return s3_server.create_bucket()
