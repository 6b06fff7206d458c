"""One warning line per interval however many calls fail, with the count of the rest."""

from __future__ import annotations

import logging

import pytest

from certgate.services.throttled_log import ThrottledWarning


def test_the_first_is_logged_and_the_rest_counted_into_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    warning = ThrottledWarning(logging.getLogger("test.throttled"), 10.0, lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.throttled"):
        warning.warn("postgres store unreachable: connection refused")
        for _ in range(5):
            now[0] += 1
            warning.warn("postgres store unreachable: connection refused")
        now[0] += 10
        warning.warn("postgres store unreachable: timeout")
    assert [r.getMessage() for r in caplog.records] == [
        "postgres store unreachable: connection refused",
        "postgres store unreachable: timeout (and 5 more like it since the last)",
    ]
