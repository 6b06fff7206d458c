"""JSON from the network, parsed so that no input can raise anything but BadParameter.

Used by every HTTP listener (auth's API, the proxy's web API) before a handler runs:

    parse_json(raw_bytes, charset)  ->  the decoded value, or BadParameter

Refused: a charset other than UTF-8 (aiohttp's own reader raises LookupError for an
unknown one), invalid UTF-8, lone surrogates (`"\\ud800"`: SQLite and the audit file
cannot store them), `NaN`/`Infinity` (not JSON, though Python's parser takes them),
integers longer than MAX_NUMBER_DIGITS (int() of a 4,300-digit number raises),
floats that overflow to infinity, and nesting deeper than MAX_DEPTH (Python's parser
raises RecursionError at about 1,000 and pydantic recurses again after it).
"""

from __future__ import annotations

import json
import math
from typing import Any

from certgate.errors import BadParameter

# Requests carry names, keys and a few resources; a megabyte is far more than any needs.
MAX_BODY_BYTES = 1024 * 1024
# Seconds a client has to send the whole body once the headers are in.
BODY_TIMEOUT = 15.0
MAX_DEPTH = 32
MAX_NUMBER_DIGITS = 30


def parse_json(raw: bytes, charset: str | None = None) -> Any:
    """Decode JSON defensively (see the module docstring); BadParameter on any problem."""
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise BadParameter(f"request body must be UTF-8, not {charset[:20]!r}")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadParameter("request body must be valid UTF-8 JSON") from exc
    except RecursionError as exc:
        raise BadParameter(f"request body is nested more than {MAX_DEPTH} deep") from exc
    _check_value(value)
    return value


def _no_constant(name: str) -> Any:
    raise BadParameter(f"request body must not hold {name}: it is not JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise BadParameter(f"request body holds a number longer than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _check_value(value: Any) -> None:
    """Depth, finite floats and encodable strings, walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadParameter(f"request body is nested more than {MAX_DEPTH} deep")
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadParameter("request body holds a number out of range")
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800"
        raise BadParameter("request body holds text that is not valid Unicode") from exc
