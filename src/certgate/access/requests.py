"""Access requests, decided: who may request what, who may review it, what a review does.

Everything here is pure (no I/O), so auth decides from the roles it read and the tests
drive it directly:

    requester's roles + traits ──> RequestPolicy ──> check_request(roles, resources?, reason)
                                                     thresholds / max_duration / reviewers
    reviewer's roles + traits  ──> ReviewPolicy  ──> check_review(request)
    request + review           ──> apply_review(...) ──> (request', outcome)

Rules:

- A user may request a role that an allow `request.roles` (templates expanded against
  their traits) names and no deny `request.roles` matches (glob or `^regex$`): deny wins.
  The same for `search_as_roles`, which resource requests use.
- A reviewer may review a request only when every role in it is named by an allow
  `review_requests.roles` (glob, `^regex$` or template) and matched by no deny one.
- Thresholds: those of every allow `request` section naming one of the requested roles
  ({approve: 1, deny: 1} when none sets any). Any one threshold met resolves the request;
  a denial threshold is checked first (deny wins when one review meets both).
- Access lasts min(the asked max_duration, every matching section's max_duration),
  DEFAULT_ACCESS_DURATION when neither says; the certificate is further capped by the
  session and the roles' max_session_ttl.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from certgate.access.templates import expand_all
from certgate.api.access_request import AccessRequest, ResourceRef, Review, Verdict
from certgate.api.role import RequestConditions, Role, Threshold
from certgate.errors import AccessDenied, AlreadyExists, BadParameter

DEFAULT_ACCESS_DURATION = timedelta(hours=8)
DEFAULT_THRESHOLD = Threshold(approve=1, deny=1)

RequestAccess = Literal["optional", "reason", "always"]
_STRICTNESS: dict[RequestAccess, int] = {"optional": 0, "reason": 1, "always": 2}


def _pattern(value: str) -> re.Pattern[str]:
    if len(value) >= 2 and value.startswith("^") and value.endswith("$"):
        try:
            return re.compile(value)
        except re.error:
            return re.compile(".*", re.DOTALL)  # a broken pattern matches all (fail closed)
    return re.compile(".*".join(re.escape(piece) for piece in value.split("*")))


def _matches(patterns: Iterable[str], name: str) -> bool:
    return any(_pattern(p).fullmatch(name) for p in patterns)


def _quote(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


@dataclass(frozen=True)
class _Grant:
    """One allow `request` section with its names expanded for the user's traits."""

    roles: tuple[str, ...]
    search_as_roles: tuple[str, ...]
    conditions: RequestConditions


class RequestPolicy:
    """What a requester's roles allow them to request, and on what terms."""

    def __init__(self, roles: Sequence[Role], traits: Mapping[str, Sequence[str]]) -> None:
        ordered = sorted(roles, key=lambda role: role.name)
        self._grants = [
            _Grant(
                tuple(expand_all(r.spec.allow.request.roles, traits)),
                tuple(expand_all(r.spec.allow.request.search_as_roles, traits)),
                r.spec.allow.request,
            )
            for r in ordered
            if r.spec.allow.request is not None
        ]
        denied = [r.spec.deny.request for r in ordered if r.spec.deny.request is not None]
        self._deny_roles = [name for d in denied for name in d.roles]
        self._deny_search = [name for d in denied for name in (*d.roles, *d.search_as_roles)]
        self._traits = traits
        modes = [r.spec.options.request_access for r in ordered]
        self.request_access: RequestAccess = max(modes or ["optional"], key=_STRICTNESS.__getitem__)
        # Any role saying `reason` wants one, also beside a role that says `always`.
        self.reason_required = "reason" in modes
        self.request_prompt = next(
            (r.spec.options.request_prompt for r in ordered if r.spec.options.request_prompt), ""
        )

    def requestable_roles(self) -> list[str]:
        names = {name for g in self._grants for name in g.roles}
        return sorted(n for n in names if not _matches(self._deny_roles, n))

    def search_as_roles(self) -> list[str]:
        names = {name for g in self._grants for name in g.search_as_roles}
        return sorted(n for n in names if not _matches(self._deny_search, n))

    def check_request(
        self, roles: Sequence[str], resources: Sequence[ResourceRef], reason: str
    ) -> None:
        """AccessDenied (or BadParameter) unless these roles may be requested so."""
        if not roles:
            raise BadParameter("name the roles to request (--roles) or a resource (--resource)")
        allowed = self.search_as_roles() if resources else self.requestable_roles()
        for role in roles:
            if role not in allowed:
                what = "search with" if resources else "request"
                hint = f"you may {what}: {_quote(allowed)}" if allowed else "you may request none"
                raise AccessDenied(
                    f'access denied: you may not request role "{role}" ({hint})'
                    if not resources
                    else f'access denied: your roles do not let you request resources as "{role}"'
                    f" ({hint})"
                )
        if self.reason_required and not reason.strip():
            prompt = f" ({self.request_prompt})" if self.request_prompt else ""
            raise BadParameter(f"your roles require a reason for access requests{prompt}: --reason")

    def _grants_for(self, roles: Sequence[str]) -> list[_Grant]:
        return [g for g in self._grants if set(roles) & {*g.roles, *g.search_as_roles}]

    def thresholds(self, roles: Sequence[str]) -> list[Threshold]:
        found: dict[tuple[int, int], Threshold] = {}
        for grant in self._grants_for(roles):
            for t in grant.conditions.thresholds:
                found.setdefault((t.approve, t.deny), t)
        return list(found.values()) or [DEFAULT_THRESHOLD]

    def max_duration(self, roles: Sequence[str]) -> timedelta | None:
        limits = [
            g.conditions.max_duration
            for g in self._grants_for(roles)
            if g.conditions.max_duration is not None
        ]
        return min(limits) if limits else None

    def suggested_reviewers(self, roles: Sequence[str]) -> list[str]:
        names = [
            name
            for g in self._grants_for(roles)
            for name in expand_all(g.conditions.suggested_reviewers, self._traits)
        ]
        return list(dict.fromkeys(names))


class ReviewPolicy:
    """Which requests a reviewer's roles let them review."""

    def __init__(self, roles: Sequence[Role], traits: Mapping[str, Sequence[str]]) -> None:
        self._allow = [
            name
            for r in roles
            if r.spec.allow.review_requests is not None
            for name in expand_all(r.spec.allow.review_requests.roles, traits)
        ]
        self._deny = [
            (r.name, name)
            for r in roles
            if r.spec.deny.review_requests is not None
            for name in r.spec.deny.review_requests.roles
        ]

    def refusal(self, requested_roles: Sequence[str]) -> str | None:
        """Why these roles may not be reviewed (None: they may)."""
        for role in requested_roles:
            for denier, pattern in self._deny:
                if _matches([pattern], role):
                    return (
                        f'you may not review requests for role "{role}": role "{denier}" '
                        "denies it in review_requests"
                    )
            if not _matches(self._allow, role):
                return (
                    f'you may not review requests for role "{role}": none of your roles '
                    "lists it in review_requests"
                )
        return None

    def may_review(self, request: AccessRequest) -> bool:
        return self.refusal(request.spec.roles) is None

    def check_review(self, request: AccessRequest, reviewer: str) -> None:
        if request.spec.user == reviewer:
            raise AccessDenied("access denied: you may not review your own access request")
        reason = self.refusal(request.spec.roles)
        if reason is not None:
            raise AccessDenied(f"access denied: {reason}")


def access_duration(asked: timedelta | None, roles_limit: timedelta | None) -> timedelta:
    limits = [d for d in (asked, roles_limit) if d is not None]
    return min(limits) if limits else DEFAULT_ACCESS_DURATION


def _counts(reviews: Sequence[Review]) -> tuple[int, int]:
    approvals = sum(1 for r in reviews if r.verdict == "approve")
    return approvals, len(reviews) - approvals


def resolved_state(
    thresholds: Sequence[Threshold], reviews: Sequence[Review]
) -> Literal["PENDING", "APPROVED", "DENIED"]:
    """The state these reviews put a pending request in (any one threshold resolves;
    deny is checked first)."""
    approvals, denials = _counts(reviews)
    if any(denials >= t.deny for t in thresholds):
        return "DENIED"
    if any(approvals >= t.approve for t in thresholds):
        return "APPROVED"
    return "PENDING"


def check_reviewable(request: AccessRequest, author: str) -> None:
    """A review of a request already resolved, or a second one by the same author,
    changes nothing: say so rather than pretend."""
    if request.is_final():
        by = request.spec.resolve_reason or "no reason given"
        raise BadParameter(
            f"request {request.name} is already {request.state.lower()} ({by}): "
            "your review changes nothing"
        )
    earlier = request.review_by(author)
    if earlier is not None:
        raise AlreadyExists(
            f"you already reviewed request {request.name} ({earlier.verdict}): "
            "a reviewer counts once, your review changes nothing"
        )


def apply_review(
    request: AccessRequest,
    author: str,
    verdict: Verdict,
    reason: str,
    now: datetime,
    roles_max_duration: timedelta | None,
) -> AccessRequest:
    """The request with this review added, and resolved if a threshold is now met."""
    check_reviewable(request, author)
    reviews = [
        *request.spec.reviews,
        Review(author=author, verdict=verdict, reason=reason, created=now),
    ]
    state = resolved_state(request.spec.thresholds, reviews)
    update: dict[str, object] = {"reviews": reviews, "state": state}
    if state != "PENDING":
        update["resolve_reason"] = _resolve_reason(state, reviews)
    if state == "APPROVED":
        update["access_expires"] = now + access_duration(
            request.spec.max_duration, roles_max_duration
        )
    return request.model_copy(update={"spec": request.spec.model_copy(update=update)})


def resolve_directly(
    request: AccessRequest,
    author: str,
    verdict: Verdict,
    reason: str,
    now: datetime,
    roles_max_duration: timedelta | None,
) -> AccessRequest:
    """An administrator's decision (cgctl on the auth host): resolves at once,
    whatever the thresholds, and is kept as a review."""
    if request.is_final():
        check_reviewable(request, author)
    reviews = [
        *request.spec.reviews,
        Review(author=author, verdict=verdict, reason=reason, created=now),
    ]
    state: Literal["APPROVED", "DENIED"] = "APPROVED" if verdict == "approve" else "DENIED"
    update: dict[str, object] = {
        "reviews": reviews,
        "state": state,
        "resolve_reason": f"{'approved' if state == 'APPROVED' else 'denied'} by {author}"
        + (f": {reason}" if reason else ""),
    }
    if state == "APPROVED":
        update["access_expires"] = now + access_duration(
            request.spec.max_duration, roles_max_duration
        )
    return request.model_copy(update={"spec": request.spec.model_copy(update=update)})


def _resolve_reason(state: str, reviews: Sequence[Review]) -> str:
    verdict = "approve" if state == "APPROVED" else "deny"
    deciders = [r for r in reviews if r.verdict == verdict]
    names = ", ".join(r.author for r in deciders)
    reasons = "; ".join(f"{r.author}: {r.reason}" for r in deciders if r.reason)
    text = f"{'approved' if state == 'APPROVED' else 'denied'} by {names}"
    return f"{text} ({reasons})" if reasons else text


def expire(request: AccessRequest, now: datetime) -> AccessRequest | None:
    """The request marked EXPIRED if it is pending past its pending TTL, else None."""
    if request.state != "PENDING" or request.spec.pending_expires > now:
        return None
    spec = request.spec.model_copy(
        update={"state": "EXPIRED", "resolve_reason": "nobody resolved it before it expired"}
    )
    return request.model_copy(update={"spec": spec})


def resource_allowed(granted: Sequence[str], kind: str, name: str) -> bool:
    """Whether an identity limited to `granted` resources ("node/db-1") may reach this
    one; an identity with none is not limited by requests."""
    return not granted or f"{kind}/{name}" in granted


def check_resource(granted: Sequence[str], kind: str, name: str, target: str) -> None:
    if not resource_allowed(granted, kind, name):
        raise AccessDenied(
            f"access denied to {target}: your access request grants only "
            f"{', '.join(granted)} (cgsh request drop returns to your standing roles)"
        )
