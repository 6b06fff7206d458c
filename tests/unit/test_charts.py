"""Server-rendered SVG bar charts: valid SVG, bars to scale, hostile text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certgate.web.charts import HEIGHT, activity_charts, bar_chart

SVG = "{http://www.w3.org/2000/svg}"


def bars(svg: str) -> list[ET.Element]:
    return ET.fromstring(svg).findall(f"{SVG}rect")


def test_bars_are_to_scale_and_carry_their_numbers() -> None:
    svg = bar_chart("Sessions", ["11-29", "11-30", "12-01"], [2, 4, 0])
    root = ET.fromstring(svg)
    assert root.findtext(f"{SVG}title") == "Sessions"
    heights = [float(r.get("height", "")) for r in bars(svg)]
    assert heights[1] == pytest.approx(2 * heights[0]) and heights[2] == 0
    assert [r.findtext(f"{SVG}title") for r in bars(svg)] == ["11-29: 2", "11-30: 4", "12-01: 0"]
    assert root.get("aria-label") == "Sessions: 6 in all"


def test_all_zero_and_empty_draw_no_bars() -> None:
    assert [float(r.get("height", "")) for r in bars(bar_chart("x", ["a"], [0]))] == [0.0]
    assert bars(bar_chart("x", [], [])) == []


def test_hostile_labels_and_titles_are_text_not_markup() -> None:
    evil = '</text><script>alert(1)</script>"'
    svg = bar_chart(evil, [evil], [1])
    root = ET.fromstring(svg)  # still well-formed
    assert root.find(f".//{SVG}script") is None
    assert root.findtext(f"{SVG}title") == evil


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        bar_chart("x", ["a", "b"], [1])
    with pytest.raises(ValueError):
        bar_chart("x", ["a"], [-1])


@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=40))
def test_every_bar_fits_the_plot(values: list[int]) -> None:
    svg = bar_chart("t", [str(i) for i in range(len(values))], values)
    for rect in bars(svg):
        y, h = float(rect.get("y", "")), float(rect.get("height", ""))
        assert 0 <= y and y + h <= HEIGHT and h >= 0


def test_activity_charts_one_per_series() -> None:
    charts = activity_charts(
        {"days": ["2026-11-29", "2026-11-30"], "series": {"sessions": [1, 2], "logins": [0, 5]}}
    )
    titles = [ET.fromstring(c).findtext(f"{SVG}title") for c in charts]
    assert titles == ["Sessions started", "Logins"]
    labels = [t.text for t in ET.fromstring(charts[0]).findall(f"{SVG}text")][2:]
    assert labels == ["11-29", "11-30"]
