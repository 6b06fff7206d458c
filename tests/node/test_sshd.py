"""Smoke."""
import subprocess
from .conftest import ALICE, Node, CredsFactory

def test_smoke(node: Node, make_creds: CredsFactory) -> None:
    creds = make_creds("alice", (ALICE,))
    r = subprocess.run(node.ssh_argv(creds, ALICE, "id; echo $HOME; exit 3"), capture_output=True, timeout=20)
    print(r)
    print(node.events)
    assert r.returncode == 3
