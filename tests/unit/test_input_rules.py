"""The one name rule, time bounds, defensive JSON and the YAML codec: property tests
that whatever comes in, the only error out is BadParameter (a one-line 400)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from certgate.api.codec import parse_documents
from certgate.api.duration import MAX_DURATION, parse_duration
from certgate.api.json_input import MAX_DEPTH, parse_json
from certgate.api.lock import Lock
from certgate.api.names import NAME_MAX, check_name, name_problem, utc_time
from certgate.errors import BadParameter

FAST = settings(max_examples=300, deadline=None, database=None)
_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")


@pytest.mark.parametrize("bad", ["alice\n", "alice\r", "\nalice", "", "-x", "a b", "a/b", "é"])
def test_names_that_are_not_names(bad: str) -> None:
    with pytest.raises(BadParameter, match="invalid user name"):
        check_name(bad, "user name")


def test_a_name_may_be_253_characters_and_no_more() -> None:
    assert check_name("a" * NAME_MAX) == "a" * NAME_MAX
    with pytest.raises(BadParameter) as refused:
        check_name("a" * 1_000_000)
    assert len(refused.value.message) < 300  # the name is cut in the message


@FAST
@given(st.text(max_size=300))
def test_the_name_rule_is_the_whole_string(text: str) -> None:
    expected = bool(_RULE.fullmatch(text)) and len(text) <= NAME_MAX
    assert (name_problem(text) is None) == expected


def test_times_are_utc_and_before_year_9001() -> None:
    assert utc_time(datetime(2030, 1, 1)) == datetime(2030, 1, 1, tzinfo=UTC)
    late = datetime.fromisoformat("8999-12-31T23:59:59-05:00")
    assert utc_time(late) == datetime(9000, 1, 1, 4, 59, 59, tzinfo=UTC)
    for text in ("9999-12-31T23:59:59-23:59", "9000-12-31T23:59:59-23:59", "9001-01-01T00:00"):
        with pytest.raises(ValueError, match="year"):
            utc_time(datetime.fromisoformat(text))
    lock = {"metadata": {"name": "l", "expires": "9999-12-31T23:59:59-23:59"},
            "spec": {"target": {"user": "bob"}}}  # fmt: skip
    with pytest.raises(ValidationError):
        Lock.model_validate(lock)


def test_durations_are_bounded() -> None:
    assert parse_duration("3650d") == MAX_DURATION
    for text in ("3651d", "99999999999999999999d", "9" * 5000, "1" * 30):
        with pytest.raises(BadParameter):
            parse_duration(text)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b'{"n": ' + b"9" * 5000 + b"}",
        b'{"n": NaN}',
        b'{"n": -Infinity}',
        b'{"n": 1e999}',
        b'{"s": "\\ud800"}',
        b'{"\\udfff": 1}',
        b"\xff\xfe{}",
    ],
)
def test_json_that_python_takes_but_we_refuse(raw: bytes) -> None:
    with pytest.raises(BadParameter):
        parse_json(raw)


def test_json_in_another_charset_is_refused() -> None:
    assert parse_json(b'{"a": 1}', "UTF-8") == {"a": 1}
    with pytest.raises(BadParameter, match="UTF-8"):
        parse_json(b'{"a": 1}', "x-bogus")


@FAST
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace")))
def test_any_bytes_are_json_or_bad_parameter(raw: bytes) -> None:
    try:
        parse_json(raw)
    except BadParameter:
        pass


_yaml_atoms = st.sampled_from(
    ["!!int x", "!!float y", "!!timestamp 2020-99-99", "!!binary ###", "&a [*a]", "*b", "9" * 5000,
     "9999-12-31T23:59:59-23:59", "~", "{", "[", "kind: role", "metadata: {name: r}", "---",
     "spec: {options: {max_session_ttl: 99999999999999d}}", "version: v1", "\t", ": :"]
)  # fmt: skip


@FAST
@given(st.lists(_yaml_atoms | st.text(max_size=30), max_size=8).map("\n".join))
def test_any_yaml_is_resources_or_one_line_bad_parameter(text: str) -> None:
    try:
        parse_documents(text)
    except BadParameter as exc:
        assert "\n" not in exc.message.strip()


def test_deep_yaml_is_one_line() -> None:
    with pytest.raises(BadParameter, match="nested too deeply"):
        parse_documents("spec: " + "[" * 10_000 + "]" * 10_000)


def test_utc_normalization_keeps_the_moment() -> None:
    moment = datetime(2031, 5, 6, 7, 8, tzinfo=UTC) + timedelta(hours=3)
    assert utc_time(moment.astimezone()) == moment
