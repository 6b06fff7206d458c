"""How `cgsh request` and `cgctl requests` print access requests: one printer for both.

print_requests(found, fmt, limit)   the list (`ls`), as a table or JSON
print_request(found, fmt)    one request with its reviews (`show`)
print_review(saved)          what a review did to the request
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from certgate.cli.common import print_json, table

if TYPE_CHECKING:  # only the type: the module brings httpx, which printing does not need
    from certgate.client.requests import AccessRequestView

_HEADERS = ["ID", "User", "Requested", "State", "Created", "Access until", "Reason"]

# `ls --limit`: auth answers at most this many requests, newest first.
MAX_LIST = 10_000
LIMIT = click.option(
    "--limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1, MAX_LIST),
    help=f"At most this many, newest first (up to {MAX_LIST}).",
)


def when(text: str | None) -> str:
    """`2026-11-30 21:04:05 UTC (in 59m)`."""
    if not text:
        return "-"
    moment = datetime.fromisoformat(text)
    left = int((moment - datetime.now(UTC)).total_seconds())
    hours, rest = divmod(abs(left), 3600)
    span = f"{hours}h{rest // 60}m" if hours else f"{rest // 60}m{rest % 60}s"
    relative = f"in {span}" if left > 0 else f"{span} ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({relative})"


def done(verdict: str) -> str:
    """The verdict as a past tense: `approved` or `denied`."""
    return "approved" if verdict == "approve" else "denied"


def print_requests(found: Sequence[AccessRequestView], fmt: str, limit: int) -> None:
    if fmt == "json":
        print_json([r.raw for r in found])
    else:
        rows = [
            (r.id, r.user, r.what, r.state, r.created[:19], r.access_expires or "", r.reason)
            for r in found
        ]
        click.echo(table(_HEADERS, rows))
    if len(found) >= limit:
        # On stderr: the JSON on stdout stays a list a script can read as it is.
        click.echo(f"showing the newest {limit} requests: --limit=N shows more", err=True)


def print_request(request: AccessRequestView, fmt: str) -> None:
    if fmt == "json":
        print_json(request.raw)
    else:
        show_request(request)


def show_request(request: AccessRequestView) -> None:
    """One request, the way every command shows it."""
    click.echo(f"Request ID:    {request.id}")
    click.echo(f"User:          {request.user}")
    click.echo(f"Roles:         {', '.join(request.roles)}")
    if request.resources:
        click.echo(f"Resources:     {', '.join(request.resources)}")
    click.echo(f"Reason:        {request.reason or '-'}")
    if request.reviewers:
        click.echo(f"Reviewers:     {', '.join(request.reviewers)} (suggested)")
    click.echo(f"State:         {request.state}")
    if request.state == "PENDING":
        click.echo(f"Expires:       {when(request.pending_expires)} unless resolved")
        lasts = request.raw["spec"].get("max_duration")
        if lasts:  # what approving would grant (requests made before it was kept: none)
            click.echo(f"Access for:    {lasts} once approved")
    if request.state == "APPROVED":
        click.echo(f"Access until:  {when(request.access_expires)}")
    for review in request.reviews:
        said = f': "{review.reason}"' if review.reason else ""
        click.echo(f"Review:        {review.author} {done(review.verdict)}{said}")
    if request.resolve_reason:
        click.echo(f"Resolution:    {request.resolve_reason}")


def print_review(saved: AccessRequestView) -> None:
    """Where the request stands after a review."""
    if saved.state == "PENDING":
        click.echo("It is still pending: more reviews are needed.")
    else:
        click.echo(f"It is now {saved.state}: {saved.resolve_reason}")
