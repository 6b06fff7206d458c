"""Resources to and from YAML/JSON documents, with one-line errors naming the field.

parse_documents(text)  ->  [Role, User, ...]      (refuses the whole input on any error)
dump(resource, "yaml") ->  text
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from certgate.api.access_request import AccessRequest
from certgate.api.authority import CertAuthority
from certgate.api.kube_cluster import KubeCluster
from certgate.api.lock import Lock
from certgate.api.names import shown
from certgate.api.node import Node
from certgate.api.role import Role
from certgate.api.token import Token
from certgate.api.user import User
from certgate.errors import BadParameter

Resource = Role | User | Token | Lock | Node | CertAuthority | AccessRequest | KubeCluster

# The most text `parse_documents` reads: as much as one API request body may carry.
MAX_INPUT_CHARS = 1024 * 1024

KINDS: dict[str, type[BaseModel]] = {
    "role": Role,
    "user": User,
    "token": Token,
    "lock": Lock,
    "node": Node,
    "cert_authority": CertAuthority,
    "access_request": AccessRequest,
    "kube_cluster": KubeCluster,
}

# pydantic's messages rephrased the way our refusals read.
_MESSAGES = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "literal_error": None,  # pydantic's own text names the allowed values
    "too_short": None,
    "datetime_parsing": "must be a date and time (RFC 3339)",
    "datetime_type": "must be a date and time (RFC 3339)",
}


def _location(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def describe_validation_error(kind: str, name: str, exc: ValidationError) -> str:
    """`role "dev": spec.allow.logins[2]: must be a string` (first error only)."""
    first = exc.errors()[0]
    message = _MESSAGES.get(first["type"]) or first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    message = message[0].lower() + message[1:] if message else message
    where = _location(first["loc"])
    subject = f"{kind} {shown(name)}" if name else kind
    return f"{subject}: {where}: {message}" if where else f"{subject}: {message}"


def from_dict(document: Any) -> Resource:
    """Validate one decoded document into its resource model."""
    if not isinstance(document, dict):
        raise BadParameter("each document must be a mapping with kind, version, metadata, spec")
    kind = document.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        known = ", ".join(KINDS)
        raise BadParameter(f"unknown kind {kind!r}: expected one of {known}")
    metadata = document.get("metadata")
    name = metadata.get("name", "") if isinstance(metadata, dict) else ""
    try:
        resource = KINDS[kind].model_validate(document)
    except ValidationError as exc:
        raise BadParameter(describe_validation_error(kind, str(name), exc)) from exc
    assert isinstance(
        resource, Role | User | Token | Lock | Node | CertAuthority | AccessRequest | KubeCluster
    )
    return resource


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what PyYAML found, on one line (` at line 3, column 1: ...`): its own
    message spans lines and quotes the input."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{where}: {getattr(exc, 'problem', None) or 'cannot be parsed'}"


def parse_documents(text: str) -> list[Resource]:
    """Every resource in a YAML (or JSON) stream; nothing is returned if any one is bad."""
    if len(text) > MAX_INPUT_CHARS:
        raise BadParameter(f"the input is larger than {MAX_INPUT_CHARS // 1024} KiB")
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise BadParameter(f"invalid YAML{yaml_problem(exc)}") from exc
    except RecursionError as exc:  # [[[[...]]]] thousands deep
        raise BadParameter("invalid YAML: nested too deeply") from exc
    except Exception as exc:
        # PyYAML's constructors raise plain Python errors for explicit tags (`!!int x`:
        # ValueError; `!!timestamp 2020-99-99 x`: AttributeError) and for numbers longer
        # than int() takes; each is a value that cannot be read.
        reason = " ".join(str(exc).split())[:80]
        raise BadParameter(f"invalid YAML: a value cannot be read: {reason}") from exc
    if not documents:
        raise BadParameter("no resources found in the input")
    return [from_dict(doc) for doc in documents]


def to_dict(resource: BaseModel) -> dict[str, Any]:
    data = resource.model_dump(mode="json", exclude_defaults=False)
    assert isinstance(data, dict)
    return data


def dump(resources: Sequence[BaseModel], fmt: str) -> str:
    """Resources as `yaml` (documents separated by ---) or `json` (a list)."""
    dicts = [to_dict(r) for r in resources]
    if fmt == "json":
        return json.dumps(dicts, indent=2)
    return yaml.safe_dump_all(dicts, sort_keys=False)
