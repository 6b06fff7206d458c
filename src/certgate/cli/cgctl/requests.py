"""`cgctl requests ls|show|approve|deny`: access requests, as an administrator.

On the auth host (its admin identity) approve and deny resolve a request at once,
whatever its thresholds, and are kept as reviews by "admin"; through a cgsh login they
are reviews of that user, under that user's review_requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import FORMAT
from certgate.cli.request_printing import (
    LIMIT,
    done,
    print_request,
    print_requests,
    print_review,
)

if TYPE_CHECKING:
    from certgate.client.requests import RequestsAPI


def _requests(ctx: click.Context) -> RequestsAPI:
    from certgate.client.requests import RequestsAPI  # httpx: not for `cgctl --help`

    return RequestsAPI(api(ctx))


@click.group()
def requests() -> None:
    """List, approve and deny access requests."""


@requests.command("ls")
@LIMIT
@FORMAT
@click.pass_context
def ls(ctx: click.Context, limit: int, fmt: str) -> None:
    """Every access request (newest first)."""
    print_requests(_requests(ctx).all(limit), fmt, limit)


@requests.command()
@click.argument("request_id")
@FORMAT
@click.pass_context
def show(ctx: click.Context, request_id: str, fmt: str) -> None:
    """One request with its reviews."""
    print_request(_requests(ctx).get(request_id), fmt)


def _review(ctx: click.Context, request_id: str, verdict: str, reason: str) -> None:
    saved = _requests(ctx).review(request_id, verdict, reason)
    click.echo(f"Request {saved.id} of {saved.user} ({saved.what}): you {done(verdict)} it.")
    print_review(saved)


@requests.command()
@click.argument("request_id")
@click.option("--reason", default="", help="Your comment (the requester sees it).")
@click.pass_context
def approve(ctx: click.Context, request_id: str, reason: str) -> None:
    """Approve a request."""
    _review(ctx, request_id, "approve", reason)


@requests.command()
@click.argument("request_id")
@click.option("--reason", default="", help="Why (the requester sees it).")
@click.pass_context
def deny(ctx: click.Context, request_id: str, reason: str) -> None:
    """Deny a request."""
    _review(ctx, request_id, "deny", reason)
