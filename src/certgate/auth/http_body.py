"""Reading JSON request bodies in the auth API: one-line refusals for bad input."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from certgate.errors import BadParameter


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadParameter("request body must be a JSON object") from exc
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    return body


def required_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadParameter(f'"{key}" is required and must be a string')
    return value


def str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadParameter(f'"{key}" must be a list of strings')
    return value
