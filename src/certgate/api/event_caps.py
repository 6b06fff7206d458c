"""Size caps on audit events: what a store keeps of one event, however big it came.

An event is a flat JSON object; anyone who can make auth or a node emit one (a login
with a 1 MB user name, a 1 MB command line) must not make the log store that much.
Each field is cut to a cap, and the whole event to another; whatever was cut is named
in the event's `truncated` list, so a reader knows the value is a prefix:

    {"event": "user.login.failure", "user": "aaaa…(256 chars)", "truncated": ["user"], ...}

- a string longer than its cap keeps its first characters (MAX_INDEXED_CHARS for the
  fields searches index, `user` and `node`; MAX_FIELD_CHARS for the others);
- a list or mapping whose JSON is longer than MAX_FIELD_CHARS becomes that JSON, cut;
- a field name longer than MAX_NAME_CHARS, or past the MAX_FIELDS-th field, is dropped;
- then, while the whole event is over MAX_EVENT_BYTES, its largest field is cut to
  MAX_SHRUNK_CHARS.

`event`, `code`, `time` and `uid` are the event's identity: they are never cut here
(they are checked where events come in).
"""

from __future__ import annotations

import json
from typing import Any

MAX_FIELD_CHARS = 2048
MAX_INDEXED_CHARS = 256
MAX_NAME_CHARS = 64
MAX_FIELDS = 64
MAX_EVENT_BYTES = 16 * 1024
MAX_SHRUNK_CHARS = 256
TRUNCATED = "truncated"

_IDENTITY = ("event", "code", "time", "uid")
_INDEXED = ("user", "node")


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str))


def _long_indexed(event: dict[str, Any]) -> bool:
    return any(
        isinstance(event.get(name), str) and len(event[name]) > MAX_INDEXED_CHARS
        for name in _INDEXED
    )


def _cut(value: Any, limit: int) -> tuple[Any, bool]:
    """`value` within `limit` characters of JSON, and whether it was cut."""
    if isinstance(value, str):
        return (value[:limit], True) if len(value) > limit else (value, False)
    if isinstance(value, bool | int | float) or value is None:
        return value, False
    text = json.dumps(value, separators=(",", ":"), default=str)
    if len(text) <= limit:
        return value, False
    return text[:limit], True


def capped(event: dict[str, Any]) -> dict[str, Any]:
    """`event` within the caps (the same object when nothing needed cutting)."""
    if _size(event) <= MAX_FIELD_CHARS and len(event) <= MAX_FIELDS and not _long_indexed(event):
        return event  # the common case: nothing in it can be over a cap
    out: dict[str, Any] = {}
    # What a sender cut already (a node's spool caps what it keeps, too).
    prior = event.get(TRUNCATED)
    cut = [name for name in prior if isinstance(name, str)] if isinstance(prior, list) else []
    for name, value in event.items():
        if name == TRUNCATED:
            continue
        if name in _IDENTITY:
            out[name] = value
            continue
        if len(name) > MAX_NAME_CHARS or len(out) >= MAX_FIELDS:
            cut.append(name[:MAX_NAME_CHARS])
            continue
        limit = MAX_INDEXED_CHARS if name in _INDEXED else MAX_FIELD_CHARS
        out[name], was_cut = _cut(value, limit)
        if was_cut:
            cut.append(name)
    while _size(out) + _size(cut) > MAX_EVENT_BYTES:
        sizes = [(_size(v), n) for n, v in out.items() if n not in _IDENTITY]
        size, largest = max(sizes, default=(0, ""))
        if size <= MAX_SHRUNK_CHARS + 2:
            break  # nothing left to cut: only many small fields, which MAX_FIELDS bounds
        out[largest], _ = _cut(out[largest], MAX_SHRUNK_CHARS)
        if isinstance(out[largest], str) and _size(out[largest]) > MAX_SHRUNK_CHARS + 2:
            # JSON escapes can make a string of MAX_SHRUNK_CHARS characters longer.
            out[largest] = out[largest][: MAX_SHRUNK_CHARS // 6]
        cut.append(largest)
    if cut:
        out[TRUNCATED] = sorted(set(cut))[:MAX_FIELDS]
    return out
