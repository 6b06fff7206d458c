"""What a plugin sends next, decided from the request and its record alone."""

from __future__ import annotations

from dataclasses import replace

from certgate.plugins.state import MessageRecord, RequestRecord
from certgate.plugins.steps import Step, next_step
from tests.plugins.requests import pending, review

RECIPIENTS = ["#access", "bob@example.com"]


def run_all(request, record, recipients=RECIPIENTS) -> list[Step]:  # type: ignore[no-untyped-def]
    """Every step until done, marking each done the way the runner does."""
    steps = []
    while (step := next_step(request, record, recipients)) is not None:
        steps.append(step)
        assert len(steps) < 50, steps
        if step.kind == "post":
            record.messages[step.recipient] = MessageRecord({"id": step.recipient}, request.state)
        elif step.kind == "reply":
            record.messages[step.recipient].replies = step.review + 1
        elif step.kind == "update":
            record.messages[step.recipient].shows = request.state
        else:
            record.requester_told = True
    return steps


def test_a_new_request_is_posted_to_each_recipient_once() -> None:
    request = pending()
    record = RequestRecord(request)
    assert run_all(request, record) == [Step("post", "#access"), Step("post", "bob@example.com")]
    assert run_all(request, record) == []


def test_reviews_are_replied_in_every_thread_in_order_then_the_outcome() -> None:
    request = pending()
    record = RequestRecord(request)
    run_all(request, record)
    reviewed = replace(request, reviews=(review("bob"), review("carol")))
    assert run_all(reviewed, record) == [
        Step("reply", "#access", 0),
        Step("reply", "#access", 1),
        Step("reply", "bob@example.com", 0),
        Step("reply", "bob@example.com", 1),
    ]
    approved = replace(reviewed, state="APPROVED")
    assert run_all(approved, record) == [
        Step("update", "#access"),
        Step("update", "bob@example.com"),
        Step("tell"),
    ]
    assert run_all(approved, record) == []


def test_a_request_first_seen_resolved_is_posted_as_it_is_and_the_requester_told() -> None:
    request = pending(state="DENIED", reviews=(review(verdict="deny"),))
    record = RequestRecord(request)
    assert run_all(request, record) == [
        Step("post", "#access"),
        Step("post", "bob@example.com"),
        Step("reply", "#access", 0),
        Step("reply", "bob@example.com", 0),
        Step("tell"),
    ]


def test_a_failed_recipient_is_skipped_and_a_quiet_record_says_nothing() -> None:
    request = pending(state="APPROVED", reviews=(review(),))
    record = RequestRecord(request, messages={"#access": MessageRecord(failed="channel_not_found")})
    assert run_all(request, record) == [
        Step("post", "bob@example.com"),
        Step("reply", "bob@example.com", 0),
        Step("tell"),
    ]
    assert next_step(request, RequestRecord(request, quiet=True), RECIPIENTS) is None


def test_a_pending_request_never_tells_the_requester() -> None:
    request = pending(reviews=(review(),))
    steps = run_all(request, RequestRecord(request))
    assert Step("tell") not in steps
    assert steps[-1] == Step("reply", "bob@example.com", 0)
