"""Ids by unique prefix and the "did you mean" hint."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certgate.client.names import did_you_mean, resolve_prefix
from certgate.errors import BadParameter, NotFound

IDS = ["3f2a9c1e-0000", "3f2b7d00-1111", "a9e01234-2222"]


def test_a_unique_prefix_names_its_id() -> None:
    assert resolve_prefix(IDS, "a9", "session") == "a9e01234-2222"
    assert resolve_prefix(IDS, "3f2a", "session") == "3f2a9c1e-0000"


def test_a_whole_id_wins_even_when_it_prefixes_another() -> None:
    assert resolve_prefix(["ab", "abc"], "ab", "session") == "ab"


def test_an_ambiguous_prefix_is_refused_with_the_candidates() -> None:
    with pytest.raises(BadParameter, match="ambiguous: 2 match"):
        resolve_prefix(IDS, "3f2", "session")


def test_no_match_and_an_empty_prefix_are_not_found() -> None:
    for prefix in ("zz", ""):
        with pytest.raises(NotFound):
            resolve_prefix(IDS, prefix, "session")


@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8), st.data())
def test_every_full_id_resolves_to_itself(ids: list[str], data: st.DataObject) -> None:
    chosen = data.draw(st.sampled_from(ids))
    assert resolve_prefix(ids, chosen, "session") == chosen


def test_a_typo_gets_a_suggestion_and_a_stranger_none() -> None:
    assert did_you_mean(["server1", "server2"], "sever2") == '; did you mean "server2"?'
    assert did_you_mean(["server1", "server2"], "database") == ""
