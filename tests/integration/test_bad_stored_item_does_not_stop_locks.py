"""A lock with an expiry in year 10000 (and one that is not even JSON) sits in the store,
written straight into the SQLite file. Watches skip them: a later lock still reaches
the node and ends the user's live SSH session, and every read of locks still works."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pexpect
import pytest

from tests.support.cluster import Cluster
from tests.support.raw_http import admin_context, send
from tests.support.unix import ensure_user
from tests.support.wait import eventually

LOGIN = "cgpoison"
ROLE = f"""\
kind: role
metadata: {{name: poison-ops}}
spec:
  allow: {{logins: [{LOGIN}], node_labels: {{"*": "*"}}}}
"""
FAR = "9999-12-31T23:59:59-23:59"  # year 10000 in UTC


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ensure_user(LOGIN)
    c = Cluster(tmp_path_factory.mktemp("poison"), roles="auth,proxy,node")
    c.start()
    c.cgctl("create", "-f", "-", input=ROLE)
    yield c
    c.stop()


def plant(db: Path, key: str, value: bytes, expires: float | None) -> None:
    """Write an item the way the backend does (a row in kv and its watch event), but
    with nothing checking it."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cursor = conn.execute(
            "INSERT INTO events (key, type, value, expires, created) VALUES (?, 'put', ?, ?, ?)",
            (key, value, expires, time.time()),
        )
        conn.execute(
            "INSERT INTO kv (key, value, revision, expires) VALUES (?, ?, ?, ?)",
            (key, value, cursor.lastrowid, expires),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_poisoned_lock_does_not_stop_a_later_one(node_cluster: Cluster) -> None:
    c = node_cluster
    user = c.add_user("poison-victim", roles="poison-ops")
    c.login(user)
    config = user.home / "openssh_config"
    config.write_text(eventually(lambda: (t := c.cgsh(user, "config").stdout) * ("node-1" in t)))
    live = pexpect.spawn(
        "ssh", ["-F", str(config), "-tt", f"{LOGIN}@node-1"], timeout=15, encoding="utf-8"
    )
    live.sendline("echo READY-$((40+2))")
    live.expect("READY-42")

    far = {
        "kind": "lock",
        "version": "v1",
        "metadata": {"name": "poison-far", "expires": FAR},
        "spec": {"target": {"user": "someone-else"}},
    }
    epoch = datetime.fromisoformat(FAR).timestamp()
    plant(c.data_dir / "backend.db", "/locks/poison-far", json.dumps(far).encode(), epoch)
    plant(c.data_dir / "backend.db", "/locks/poison-junk", b"not json at all", None)

    # Reads of locks still answer, without the bad items.
    admin = admin_context(c.data_dir)
    status, locks = send(c.auth_addr, "GET", "/v1/resources/lock", context=admin)
    assert status == 200, locks
    assert not [x for x in locks if x["metadata"]["name"].startswith("poison-")]

    out = c.cgctl("lock", "--user=poison-victim", "--message=after the poison").stdout
    live.expect("access denied: locked: after the poison")
    live.expect(pexpect.EOF)
    name = out.split("'")[1]
    status, locks = send(c.auth_addr, "GET", "/v1/resources/lock", context=admin)
    assert status == 200 and name in [x["metadata"]["name"] for x in locks]
    # Auth's own lock cache saw it too: a login is refused.
    assert "locked: after the poison" in c.login(user, check=False).stderr
    assert "internal error" not in c.log.read_text()
    # Each bad item is audited once, however many watchers met it.
    out = c.cgctl("audit", "ls", "--event=store.item.skipped", "--format=json").stdout
    skipped = sorted(e["key"] for e in json.loads(out))
    assert skipped == ["/locks/poison-far", "/locks/poison-junk"], skipped
