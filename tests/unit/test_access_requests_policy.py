"""Who may request and review what (access/requests.py): templates, deny wins,
thresholds, durations."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certgate.access.requests import (
    DEFAULT_ACCESS_DURATION,
    RequestPolicy,
    ReviewPolicy,
    apply_review,
    expire,
    resolved_state,
)
from certgate.api.access_request import AccessRequest, Review
from certgate.api.codec import from_dict
from certgate.api.role import Role, Threshold
from certgate.errors import AccessDenied, AlreadyExists, BadParameter

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def role(name: str, **spec: Any) -> Role:
    made = from_dict({"kind": "role", "metadata": {"name": name}, "spec": spec})
    assert isinstance(made, Role)
    return made


def pending(roles: list[str], thresholds: list[dict[str, int]] | None = None) -> AccessRequest:
    return AccessRequest.model_validate(
        {
            "metadata": {"name": "r-1"},
            "spec": {
                "user": "carl",
                "roles": roles,
                "created": NOW,
                "pending_expires": NOW + timedelta(hours=1),
                **({"thresholds": thresholds} if thresholds else {}),
            },
        }
    )


def test_templates_expand_and_deny_wins() -> None:
    policy = RequestPolicy(
        [
            role("base", allow={"request": {"roles": ["{{external.team}}-admin", "auditor"]}}),
            role("no-prod", deny={"request": {"roles": ["prod-*"]}}),
        ],
        {"team": ["db", "prod"]},
    )
    assert policy.requestable_roles() == ["auditor", "db-admin"]
    policy.check_request(["db-admin"], [], "")
    with pytest.raises(AccessDenied, match='may not request role "prod-admin"'):
        policy.check_request(["prod-admin"], [], "")


def test_request_access_reason_requires_a_reason_with_the_prompt() -> None:
    policy = RequestPolicy(
        [
            role(
                "c",
                allow={"request": {"roles": ["x"]}},
                options={"request_access": "reason", "request_prompt": "ticket number?"},
            )
        ],
        {},
    )
    with pytest.raises(BadParameter, match=r"require a reason .*\(ticket number\?\)"):
        policy.check_request(["x"], [], "  ")
    policy.check_request(["x"], [], "JIRA-1")
    # A role that says `always` beside it (requests at login) does not drop the reason.
    both = RequestPolicy(
        [
            role("c", allow={"request": {"roles": ["x"]}}, options={"request_access": "reason"}),
            role("d", options={"request_access": "always"}),
        ],
        {},
    )
    assert both.request_access == "always"
    with pytest.raises(BadParameter, match="require a reason"):
        both.check_request(["x"], [], "")


def test_thresholds_and_max_duration_come_from_the_sections_that_grant_the_roles() -> None:
    policy = RequestPolicy(
        [
            role("a", allow={"request": {"roles": ["x"], "thresholds": [{"approve": 2}]}}),
            role("b", allow={"request": {"roles": ["y"], "max_duration": "30m"}}),
        ],
        {},
    )
    assert [(t.approve, t.deny) for t in policy.thresholds(["x"])] == [(2, 1)]
    assert [(t.approve, t.deny) for t in policy.thresholds(["y"])] == [(1, 1)]
    assert policy.max_duration(["x"]) is None
    assert policy.max_duration(["x", "y"]) == timedelta(minutes=30)


def test_a_reviewer_must_be_allowed_every_role_and_a_deny_names_itself() -> None:
    reviewer = ReviewPolicy(
        [
            role("r", allow={"review_requests": {"roles": ["db-*", "kube-member"]}}),
            role("nope", deny={"review_requests": {"roles": ["kube-*"]}}),
        ],
        {},
    )
    assert reviewer.refusal(["db-admin"]) is None
    assert reviewer.refusal(["db-admin", "web"]) == (
        'you may not review requests for role "web": none of your roles lists it in review_requests'
    )
    assert reviewer.refusal(["kube-member"]) == (
        'you may not review requests for role "kube-member": role "nope" denies it in '
        "review_requests"
    )
    with pytest.raises(AccessDenied, match="your own"):
        reviewer.check_review(pending(["db-admin"]), "carl")


verdicts = st.lists(st.sampled_from(["approve", "deny"]), max_size=8)
thresholds = st.lists(
    st.builds(Threshold, approve=st.integers(1, 4), deny=st.integers(1, 4)), min_size=1, max_size=3
)


@given(verdicts, thresholds)
def test_reviews_resolve_exactly_when_some_threshold_is_met(
    votes: list[str], limits: list[Threshold]
) -> None:
    request = pending(["x"], [t.model_dump() for t in limits])
    for i, vote in enumerate(votes):
        before = request
        if request.is_final():
            with pytest.raises(BadParameter, match="changes nothing"):
                apply_review(request, f"u{i}", vote, "", NOW, None)  # type: ignore[arg-type]
            continue
        request = apply_review(request, f"u{i}", vote, "", NOW, None)  # type: ignore[arg-type]
        approvals = sum(r.verdict == "approve" for r in request.spec.reviews)
        denials = len(request.spec.reviews) - approvals
        denied = any(denials >= t.deny for t in limits)
        approved = not denied and any(approvals >= t.approve for t in limits)
        expected = "DENIED" if denied else "APPROVED" if approved else "PENDING"
        assert request.state == expected
        assert len(request.spec.reviews) == len(before.spec.reviews) + 1
        if expected == "APPROVED":
            assert request.spec.access_expires == NOW + DEFAULT_ACCESS_DURATION


@given(verdicts)
def test_the_state_never_depends_on_the_order_of_reviews(votes: list[str]) -> None:
    limits = [Threshold(approve=2, deny=2), Threshold(approve=3, deny=1)]
    reviews = [
        Review(author=f"u{i}", verdict=v, created=NOW)  # type: ignore[arg-type]
        for i, v in enumerate(votes)
    ]
    assert resolved_state(limits, reviews) == resolved_state(limits, list(reversed(reviews)))


def test_a_reviewer_counts_once() -> None:
    request = apply_review(pending(["x"], [{"approve": 2}]), "alice", "approve", "", NOW, None)
    with pytest.raises(AlreadyExists, match="counts once"):
        apply_review(request, "alice", "approve", "", NOW, None)


def test_only_a_pending_request_past_its_ttl_expires() -> None:
    request = pending(["x"])
    assert expire(request, NOW) is None
    expired = expire(request, NOW + timedelta(hours=1))
    assert expired is not None and expired.state == "EXPIRED"
    assert expire(expired, NOW + timedelta(hours=2)) is None


names = st.lists(st.sampled_from(["db", "db-admin", "web", "web-admin", "ops"]), max_size=4)
patterns = st.lists(st.sampled_from(["db*", "*-admin", "web", "^o.*$", "*"]), max_size=2)


@given(names, names, patterns)
def test_deny_wins_whatever_the_roles_say(
    allowed_a: list[str], allowed_b: list[str], denied: list[str]
) -> None:
    policy = RequestPolicy(
        [
            role("a", allow={"request": {"roles": allowed_a, "search_as_roles": allowed_b}}),
            role("b", allow={"request": {"roles": allowed_b}}, deny={"request": {"roles": denied}}),
        ],
        {},
    )
    requestable = policy.requestable_roles()
    assert set(requestable) <= set(allowed_a) | set(allowed_b)
    for name in set(allowed_a) | set(allowed_b):
        blocked = any(
            re.fullmatch(p if p.startswith("^") else p.replace("*", ".*"), name) for p in denied
        )
        assert (name in requestable) == (not blocked)
        assert not (blocked and name in policy.search_as_roles())
