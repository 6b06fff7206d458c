"""`cgsh request create|search|ls|show|review|drop`: just-in-time access."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from certgate.cli.common import DURATION, FORMAT, print_json, table
from certgate.cli.request_printing import (
    LIMIT,
    done,
    print_request,
    print_requests,
    print_review,
    when,
)
from certgate.errors import AccessDenied, BadParameter, NotFound

# The client modules are imported where they are used: they bring httpx and
# cryptography, which `cgsh --help` and `cgsh status` (describe_grant) do not need.
if TYPE_CHECKING:
    from certgate.api.bundle import CertBundle
    from certgate.client.profile import Profile
    from certgate.client.requests import AccessRequestView, RequestsAPI


def _api(ctx: click.Context) -> RequestsAPI:
    from certgate.client.cluster import connect_profile
    from certgate.client.profile import load_profile
    from certgate.client.requests import RequestsAPI

    cluster = connect_profile(load_profile())
    ctx.call_on_close(cluster.close)
    return RequestsAPI(cluster)


def _outcome(request: AccessRequestView) -> None:
    """Raise with the reason unless `request` is approved."""
    if request.state == "DENIED":
        raise AccessDenied(f"access request {request.id} was {request.resolve_reason}")
    if request.state == "EXPIRED":
        raise AccessDenied(
            f"access request {request.id} expired before anyone resolved it: request again"
        )


def show_grant(request: AccessRequestView, bundle: CertBundle) -> None:
    identity = bundle.identity
    click.echo(f"Approved: {request.resolve_reason}")
    click.echo(
        f"Your certificates now carry {request.what} (request {request.id}) "
        f"until {when(identity.expires.isoformat())}."
    )
    click.echo(f"Roles: {', '.join(identity.roles)}; logins: {', '.join(identity.logins) or '-'}")
    if bundle.kubernetes_groups or bundle.kubernetes_users:
        kube = f"Kubernetes groups: {', '.join(bundle.kubernetes_groups) or '-'}"
        users = f"; users: {', '.join(bundle.kubernetes_users)}" if bundle.kubernetes_users else ""
        click.echo(kube + users)
    click.echo("Back to your own roles at any time: cgsh request drop")


def wait_and_assume(api: RequestsAPI, request: AccessRequestView) -> None:
    """Wait until `request` is resolved, print how, and assume it if approved."""
    from certgate.client.profile import load_profile
    from certgate.client.requests import assume

    def progress(changed: AccessRequestView) -> None:
        if changed.reviews:
            review = changed.reviews[-1]
            verdict = "approved" if review.verdict == "approve" else "denied"
            said = f': "{review.reason}"' if review.reason else ""
            click.echo(f"{review.author} {verdict}{said}", err=True)

    request = api.wait(request, on_change=progress)
    _outcome(request)
    show_grant(request, assume(load_profile(), [request.id]))


def assume_after_login(profile: Profile, request_id: str) -> None:
    """`cgsh login --request-id`: wait while the request is pending, then assume it."""
    from certgate.client.cluster import connect_profile
    from certgate.client.requests import RequestsAPI, assume

    cluster = connect_profile(profile)
    try:
        api = RequestsAPI(cluster)
        try:
            found = api.get(request_id)
        except NotFound:
            # Not one the user may see: auth's refusal to assume it says why.
            assume(profile, [request_id])
            return
        if found.state == "PENDING":
            click.echo(f"Waiting for request {found.id} ({found.what}) to be reviewed...", err=True)
        wait_and_assume(api, found)
    finally:
        cluster.close()


def request_at_login(profile: Profile, roles: list[str], reason: str) -> None:
    """With `request_access: always` in the user's roles, a login requests every role
    they may request and waits for it: they work only under a grant."""
    from certgate.client.cluster import connect_profile
    from certgate.client.requests import RequestsAPI

    cluster = connect_profile(profile)
    try:
        api = RequestsAPI(cluster)
        created, new = api.create(roles, [], reason, [], None, None)
        if new:
            click.echo(f"Your roles require an access request: request {created.id}", err=True)
        else:
            click.echo(f"Your roles require an access request: {_earlier(created)}", err=True)
        click.echo(f"Waiting for {created.what} to be reviewed...", err=True)
        wait_and_assume(api, created)
    finally:
        cluster.close()


def _earlier(found: AccessRequestView) -> str:
    return f"your pending request {found.id} for the same, made {when(found.created)}"


def describe_grant(grant: dict[str, Any]) -> str:
    if "state" not in grant:
        why = grant.get("error")
        return f"{grant['id']} (not checked: {why})" if why else str(grant["id"])
    ends = when(grant.get("access_expires"))
    ended = grant["state"] != "APPROVED" or ends.endswith("ago)")
    status = "ENDED" if ended else "active"
    return f"{grant['id']} ({grant['requested']}; {grant['approved']}) {status} until {ends}"


@click.group()
def request() -> None:
    """Ask for more access for a while, review others' requests, and drop grants."""


@request.command()
@click.option("--roles", default="", help="Roles to request, comma-separated.")
@click.option(
    "--resource",
    "resources",
    multiple=True,
    help="A resource to request: node/NAME or kube_cluster/NAME (repeatable).",
)
@click.option("--reason", default="", help="Why you need it (reviewers see it).")
@click.option(
    "--reviewers",
    default="",
    help="Certgate users who should review it: user names, comma-separated, at most 10.",
)
@click.option(
    "--max-duration", type=DURATION, help="How long the access should last at most (e.g. 2h)."
)
@click.option(
    "--request-ttl", type=DURATION, help="How long the request waits for a review (default 1h)."
)
@click.option("--nowait", is_flag=True, help="Print the request id and return.")
@click.pass_context
def create(
    ctx: click.Context,
    roles: str,
    resources: tuple[str, ...],
    reason: str,
    reviewers: str,
    max_duration: str | None,
    request_ttl: str | None,
    nowait: bool,
) -> None:
    """Request roles (--roles) or resources (--resource); waits for the outcome and, when
    approved, re-issues your certificates with the grant."""
    role_list = [r for r in roles.split(",") if r]
    if not role_list and not resources:
        raise click.UsageError("name --roles=ROLE[,ROLE] or --resource=node/NAME")
    api = _api(ctx)
    created, new = api.create(
        role_list,
        list(resources),
        reason,
        [r for r in reviewers.split(",") if r],
        max_duration,
        request_ttl,
    )
    if not new:
        click.echo(f"Not asked twice: this is {_earlier(created)}.", err=True)
    if nowait:
        click.echo(created.id)
        return
    click.echo(f"Request ID: {created.id}")
    who = f" (suggested: {', '.join(created.reviewers)})" if created.reviewers else ""
    click.echo(f"Waiting for {created.what} to be reviewed{who}...", err=True)
    click.echo(
        f"Ctrl-C stops waiting; the request stays: cgsh login --request-id={created.id}",
        err=True,
    )
    wait_and_assume(api, created)


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f'"{pair}": filter with key=value', param_hint="LABELS")
        labels[key] = value
    return labels


@request.command()
@click.option(
    "--kind",
    type=click.Choice(["node", "kube_cluster"]),
    default="node",
    show_default=True,
    help="Kind of resource.",
)
@click.argument("labels", nargs=-1)
@FORMAT
@click.pass_context
def search(ctx: click.Context, kind: str, labels: tuple[str, ...], fmt: str) -> None:
    """Resources you could request (those your search_as_roles reach) [k=v ...]."""
    found = _api(ctx).search(kind, _labels(labels))
    if fmt == "json":
        print_json(found)
        return
    if kind == "kube_cluster":
        clusters = [(c["metadata"]["name"], c["metadata"]["labels"]) for c in found]
        click.echo(table(["Kube Cluster", "Labels"], clusters))
    else:
        rows = [
            (n["metadata"]["name"], n["spec"]["hostname"], n["metadata"]["labels"]) for n in found
        ]
        click.echo(table(["Node", "Hostname", "Labels"], rows))
    if found:
        name = found[0]["metadata"]["name"]
        click.echo(f"\nRequest one: cgsh request create --resource={kind}/{name} --reason=...")


@request.command("ls")
@LIMIT
@FORMAT
@click.pass_context
def ls(ctx: click.Context, limit: int, fmt: str) -> None:
    """Your requests and those you may review."""
    print_requests(_api(ctx).all(limit), fmt, limit)


@request.command()
@click.argument("request_id")
@FORMAT
@click.pass_context
def show(ctx: click.Context, request_id: str, fmt: str) -> None:
    """One request: what, why, its reviews and outcome."""
    print_request(_api(ctx).get(request_id), fmt)


@request.command()
@click.option("--approve", "verdict", flag_value="approve", help="Approve the request.")
@click.option("--deny", "verdict", flag_value="deny", help="Deny the request.")
@click.option("--reason", default="", help="Your comment (the requester sees it).")
@click.argument("request_id")
@click.pass_context
def review(ctx: click.Context, verdict: str | None, reason: str, request_id: str) -> None:
    """Approve or deny someone's request."""
    if verdict is None:
        raise click.UsageError("say --approve or --deny")
    saved = _api(ctx).review(request_id, verdict, reason)
    click.echo(f"You {done(verdict)} request {saved.id} of {saved.user} ({saved.what}).")
    print_review(saved)


@request.command("drop")
def drop_command() -> None:
    """Stop using your grants: back to the certificates of your login."""
    from certgate.client.profile import load_profile
    from certgate.client.requests import drop

    profile = load_profile()
    before = profile.identity().bundle.identity.request_ids
    if not before:
        raise BadParameter("you are using no access request")
    bundle = drop(profile)
    click.echo(
        f"Dropped {', '.join(before)}: back to roles {', '.join(bundle.identity.roles)} "
        f"until {when(bundle.identity.expires.isoformat())}."
    )
