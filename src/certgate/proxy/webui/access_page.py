"""/web/access: who has access to what, right now (auth's `GET /v1/access`, as
`cgctl access ls`), as a users x nodes matrix, with the last week's activity charts
(`GET /v1/activity?days=7`, inline SVG). Auth checks `list` on `access` for both; a
refusal is shown in place with its status."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aiohttp import web
from markupsafe import Markup

from certgate.errors import CertgateError
from certgate.proxy.webui import guard
from certgate.proxy.webui.render import page, to_login
from certgate.web.charts import activity_charts

CHART_DAYS = 7
_FILTERS = ("user", "role", "node", "label")


async def access_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    filters = {k: request.query.get(k, "").strip() for k in _FILTERS}
    params: list[tuple[str, str]] = [(k, v) for k, v in filters.items() if v and k != "label"]
    # Several label filters in one field, space separated: `env=prod team=db`.
    params += [("label", text) for text in filters["label"].split()]
    auth = request.app[guard.AUTH_KEY]
    headers = session.forwarded_headers()
    rows: list[dict[str, Any]] = []
    charts: list[Markup] = []
    error, status = "", 200
    try:
        rows = (await auth.call("GET", "/v1/access", params=params, headers=headers))["rows"]
        activity = await auth.call(
            "GET", "/v1/activity", params={"days": str(CHART_DAYS)}, headers=headers
        )
        # activity_charts escapes every text it draws: the SVG goes in as it is.
        charts = [Markup(svg) for svg in activity_charts(activity)]
    except CertgateError as exc:
        error, status = exc.message, exc.http_status
    users, nodes, cells = _matrix(rows)
    return page(
        request, "access.html", session=session, filters=filters, users=users, nodes=nodes,
        cells=cells, count=len(rows), charts=charts, error=error, status=status,
    )  # fmt: skip


def _matrix(
    rows: list[dict[str, Any]],
) -> tuple[list[str], list[str], dict[tuple[str, str], list[dict[str, Any]]]]:
    """Users down, nodes (by name, as `cgctl access ls`) across; each cell the rows of
    that pair."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cells[(row["user"], row["node"])].append({**row, "until": _short(row.get("until"))})
    users = sorted({user for user, _ in cells})
    nodes = sorted({node for _, node in cells})
    return users, nodes, dict(cells)


def _short(when: str | None) -> str:
    return (when or "")[:16].replace("T", " ")
