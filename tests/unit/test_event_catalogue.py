"""The audit event catalogue (api/events.py) covers every event the code can emit, and
docs/audit.md lists exactly the catalogue.

Event names are collected from the source with `ast`: the first argument of every call
to something named like an audit sink (`emit`, `audit`, `_audit`, `_membership`,
`_on_membership`, ...), and every string assigned to a variable named `event` (auth
picks `role.created` or `resource.created` that way). A new emitter that names an event
the catalogue lacks fails here, not in production, where auth would store it as
`unknown`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from certgate.api import events

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "certgate"
EVENT_NAME = re.compile(r"[a-z_]+(\.[a-z_]+)*")
SINKS = re.compile(r"(^|_)(emit|audit|membership|on_membership)$")


def _callee(node: ast.Call) -> str:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return ""


def _strings(node: ast.AST) -> set[str]:
    """Event-like strings an expression can evaluate to (not dict keys, not the key a
    `.get` looks up: `{"role": "role.deleted"}.get(kind, "resource.deleted")`)."""
    if isinstance(node, ast.Constant):
        is_name = isinstance(node.value, str) and EVENT_NAME.fullmatch(node.value)
        return {node.value} if is_name else set()
    if isinstance(node, ast.Dict):
        return set().union(*(_strings(v) for v in node.values))
    if isinstance(node, ast.IfExp):  # not the condition's strings
        return _strings(node.body) | _strings(node.orelse)
    if isinstance(node, ast.Call) and _callee(node) == "get":
        parts: list[ast.AST] = [node.func, *node.args[1:]]
        return set().union(*(_strings(p) for p in parts))
    return set().union(set(), *(_strings(child) for child in ast.iter_child_nodes(node)))


def emitted_events() -> dict[str, set[str]]:
    """Event name -> the files that emit it."""
    found: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and SINKS.search(_callee(node)) and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.add(first.value)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "event" for t in node.targets
            ):
                names |= _strings(node.value)
        for name in names:
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_collector_sees_the_emitters_it_must() -> None:
    # The collector itself works: it finds events of auth, the node, the
    # session core, the join layer, and the ones auth picks through a variable.
    found = emitted_events()
    assert "src/certgate/node/sshd.py" in found["agent_forward"]
    assert "src/certgate/srv/live.py" in found["session.start"]
    assert "src/certgate/srv/join.py" in found["session.join"]
    assert "src/certgate/auth/users_admin.py" in found["user.delete"]
    assert {"role.created", "resource.created", "lock.deleted"} <= set(found)


def test_every_event_the_code_emits_is_in_the_catalogue() -> None:
    missing = {
        name: files for name, files in emitted_events().items() if name not in events.CATALOGUE
    }
    assert not missing, f"add these to api/events.py: {missing}"


def test_every_catalogued_event_is_emitted_somewhere() -> None:
    # `unknown` is made by auth for types it does not know; `user.update` and `sftp`
    # are reserved for their emitters (kept so their codes never change meaning).
    unused = set(events.CATALOGUE) - set(emitted_events()) - {"unknown", "user.update", "sftp"}
    assert not unused, f"catalogued but never emitted: {unused}"


def test_codes_are_unique_and_shaped_like_codes() -> None:
    codes = [t.code for t in events.CATALOGUE.values()]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"T[A-Z0-9]{4}[IWE]", code) for code in codes)


def test_services_write_session_events_and_only_auth_writes_its_own() -> None:
    assert events.may_write(events.NODE, "agent_forward")
    assert events.may_write(events.PROXY, "session.end")
    assert not events.may_write(events.NODE, "user.delete")
    assert not events.may_write(events.PROXY, "lock.created")
    assert not events.may_write(events.KUBE, "session.upload")
    assert events.may_write(events.ADMIN, "user.delete")


def _documented() -> dict[str, tuple[str, str]]:
    """docs/audit.md's table: event -> (code, written by)."""
    rows = {}
    for line in (ROOT / "docs" / "audit.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_docs_list_exactly_the_catalogue() -> None:
    documented = _documented()
    assert set(documented) == set(events.CATALOGUE)
    for name, kind in events.CATALOGUE.items():
        code, writers = documented[name]
        assert code == kind.code, name
        assert {w.strip() for w in writers.split(",")} == set(kind.writers), name
