"""The one exception tree of certgate.

Every refusal a user can see is one of these, raised with a one-line, lower-case
message that says what was refused and why. Each kind maps to exactly one HTTP status
(for the APIs) and one exit code (for the command-line tools), so a client can turn an
HTTP error back into the same exception (`from_status`).

Foreign errors (cryptography, sqlite, asyncssh, httpx) are translated where they enter
our code, with `raise ... from exc`.
"""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound="CertgateError")


def audited(exc: E) -> E:
    """`exc`, marked as already written to the audit log where it was raised."""
    exc.audited = True
    return exc


class CertgateError(Exception):
    """Base of every error certgate shows to a user."""

    http_status = 500
    exit_code = 1
    kind = "internal"
    # Set where the refusal was already written to the audit log, so the layer above
    # that audits every refusal does not write it twice.
    audited = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadParameter(CertgateError):
    """The input is malformed or names something invalid."""

    http_status = 400
    exit_code = 2
    kind = "bad_parameter"


class AccessDenied(CertgateError):
    """The caller is not allowed to do this (or could not be authenticated)."""

    http_status = 403
    exit_code = 3
    kind = "access_denied"


class NotFound(CertgateError):
    """The named thing does not exist."""

    http_status = 404
    exit_code = 4
    kind = "not_found"


class AlreadyExists(CertgateError):
    """Creating something that is already there."""

    http_status = 409
    exit_code = 5
    kind = "already_exists"


class CompareFailed(CertgateError):
    """A conditional update lost a race: the item changed since it was read."""

    http_status = 412
    exit_code = 6
    kind = "compare_failed"


class LimitExceeded(CertgateError):
    """Too many attempts or too much of something."""

    http_status = 429
    exit_code = 7
    kind = "limit_exceeded"


class ConnectionProblem(CertgateError):
    """A peer could not be reached in time."""

    http_status = 503
    exit_code = 8
    kind = "connection_problem"


# On a 503: the server wrote nothing for the call, so a client may send it to another
# server (backend/write_marks.py).
NOT_APPLIED_HEADER = "Certgate-Not-Applied"


_BY_KIND: dict[str, type[CertgateError]] = {
    cls.kind: cls
    for cls in (
        BadParameter,
        AccessDenied,
        NotFound,
        AlreadyExists,
        CompareFailed,
        LimitExceeded,
        ConnectionProblem,
    )
}


def to_json(error: CertgateError) -> dict[str, str]:
    """The JSON body an API answers a refusal with."""
    return {"error": error.kind, "message": error.message}


def from_json(status: int, body: object) -> CertgateError:
    """Turn an API error answer back into the exception that caused it."""
    if isinstance(body, dict):
        kind = body.get("error")
        message = body.get("message")
        if isinstance(kind, str) and isinstance(message, str):
            return _BY_KIND.get(kind, CertgateError)(message)
    for cls in _BY_KIND.values():
        if cls.http_status == status:
            return cls(f"request failed with status {status}")
    return CertgateError(f"request failed with status {status}")


def what_broke(exc: BaseException) -> str:
    """An error's own words, or what it is when it has none (a read cut off or a
    timeout often says nothing: a log line ending in ": " told an operator nothing)."""
    text = str(exc).strip()
    if text:
        return text
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"the connection broke off ({type(exc).__name__})"
