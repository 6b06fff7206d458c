"""Reading request input in the auth API: the one place bad bytes become one-line 400s.

Everything a route reads from a body or a query goes through here before anything
else runs, so no route meets input Python's parsers choke on:

    body = await json_body(request)     # a JSON object, <= MAX_BODY_BYTES, read in time
    required_str(body, "user")          # a non-empty string of bounded length
    query_int(request, "limit", 100, 10000)  # 1..10000, or BadParameter (never ValueError)

What JSON is refused (NaN, 4,300-digit numbers, deep nesting, lone surrogates, other
charsets) is decided by `api/json_input.py`, which the proxy uses too. A body must
arrive within BODY_TIMEOUT: a half-sent body would hold the connection forever.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from certgate.api.json_input import BODY_TIMEOUT, MAX_BODY_BYTES, parse_json
from certgate.errors import BadParameter

__all__ = [
    "MAX_BODY_BYTES",
    "json_body",
    "query_int",
    "read_body",
    "required_str",
    "str_list",
]

_NOT_OBJECT = "request body must be a JSON object"


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused if too large or too slow to arrive."""
    if request.content_length is not None and request.content_length > limit:
        raise BadParameter(f"request body is larger than {limit // 1024} KiB")
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except TimeoutError as exc:
        raise BadParameter("request body did not arrive in time") from exc
    except web.HTTPRequestEntityTooLarge as exc:  # chunked bodies past client_max_size
        raise BadParameter(f"request body is larger than {limit // 1024} KiB") from exc


async def json_body(request: web.Request) -> dict[str, Any]:
    body = parse_json(await read_body(request), request.charset)
    if not isinstance(body, dict):
        raise BadParameter(_NOT_OBJECT)
    return body


def required_str(body: dict[str, Any], key: str, max_len: int = 64 * 1024) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadParameter(f'"{key}" is required and must be a string')
    if len(value) > max_len:
        raise BadParameter(f'"{key}" must be at most {max_len} characters')
    return value


def str_list(
    body: dict[str, Any], key: str, max_items: int = 256, max_len: int = 1024
) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadParameter(f'"{key}" must be a list of strings')
    if len(value) > max_items or any(len(v) > max_len for v in value):
        raise BadParameter(f'"{key}" must be at most {max_items} strings of {max_len} characters')
    return value


def query_int(request: web.Request, key: str, default: int, maximum: int) -> int:
    """An integer query parameter between 1 and `maximum` (`?limit=abc` is a 400)."""
    text = request.query.get(key, "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not 1 <= int(text) <= maximum:
        raise BadParameter(f"{key} must be a whole number from 1 to {maximum}")
    return int(text)


def query_flag(request: web.Request, key: str) -> bool:
    """Whether a flag query parameter is on (`?incomplete=1`, `true` or `yes`)."""
    return request.query.get(key, "") in ("1", "true", "yes")
