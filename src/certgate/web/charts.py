"""Small bar charts as inline SVG, rendered on the server (no JavaScript).

Pure functions: numbers in, SVG text out, so the proxy's pages embed them as they are
and the tests read them back with an XML parser. Every piece of text is escaped: labels
and titles may come from the audit log, which users influence.

    bar_chart("Sessions", ["11-24", ..., "11-30"], [3, 0, ..., 12])  ->  "<svg ...>...</svg>"
    activity_charts(GET /v1/activity answer)                        ->  one chart per series
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape, quoteattr

WIDTH = 320
HEIGHT = 140
_TOP = 22  # room for the title
_BOTTOM = 18  # room for the labels under the bars
_GAP = 0.25  # of each bar's slot, left empty between bars

SERIES_TITLES = {
    "sessions": "Sessions started",
    "logins": "Logins",
    "login_refusals": "Login refusals",
    "session_refusals": "Session refusals",
}


def bar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[int],
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    css_class: str = "cg-chart",
) -> str:
    """One bar per value, labelled underneath, scaled to the largest value (all zero:
    no bars, the frame and labels only). Each bar carries a <title> with its number."""
    if len(labels) != len(values):
        raise ValueError("one label per value")
    if any(v < 0 for v in values):
        raise ValueError("bar values must not be negative")
    plot = height - _TOP - _BOTTOM
    top = max(values, default=0)
    slot = width / max(len(values), 1)
    bar = slot * (1 - _GAP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class={quoteattr(css_class)} '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f"aria-label={quoteattr(f'{title}: {_total(values)} in all')}>",
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
        f'<text x="{width}" y="14" font-size="11" text-anchor="end">max {top}</text>',
        f'<line x1="0" y1="{_TOP + plot}" x2="{width}" y2="{_TOP + plot}" stroke="#999"/>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = i * slot + (slot - bar) / 2
        h = plot * value / top if top else 0.0
        y = _TOP + plot - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
            f'fill="#3b6ea8"><title>{escape(label)}: {value}</title></rect>'
        )
        parts.append(
            f'<text x="{x + bar / 2:.1f}" y="{height - 4}" font-size="9" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def activity_charts(activity: Mapping[str, Any]) -> list[str]:
    """One chart per series of a `GET /v1/activity` answer, days labelled MM-DD."""
    days = [str(day)[5:] for day in activity["days"]]
    return [
        bar_chart(SERIES_TITLES.get(name, name.replace("_", " ")), days, list(values))
        for name, values in activity["series"].items()
    ]


def _total(values: Sequence[int]) -> int:
    return sum(values)
