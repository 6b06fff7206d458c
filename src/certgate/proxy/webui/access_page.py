"""/web/access: who has access to what, right now (auth's `GET /v1/access`, as
`cgctl access ls`), as a matrix of users x nodes and Kubernetes clusters, a page of
rows at a time (auth's opaque `start_key`: `next` carries on where this page ended),
with the last week's activity charts (`GET /v1/activity?days=7`, inline SVG). Auth
checks `list` on `access` for both; a refusal is shown in place with its status."""

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
PAGE_SIZE = 200  # rows (logins and clusters), so a page answers quickly at any size
MAX_PAGE_SIZE = 1000
_FILTERS = ("user", "role", "node", "kube_cluster", "label")

# A column of the matrix: (kind, name); nodes first, then clusters, each by name.
Column = tuple[str, str]


async def access_page(request: web.Request) -> web.StreamResponse:
    session = await guard.signed_in(request)
    if session is None:
        return to_login(request)
    filters = {k: request.query.get(k, "").strip() for k in _FILTERS}
    params: list[tuple[str, str]] = [(k, v) for k, v in filters.items() if v and k != "label"]
    # Several label filters in one field, space separated: `env=prod team=db`.
    params += [("label", text) for text in filters["label"].split()]
    limit = _page_size(request.query.get("limit", ""))
    params.append(("limit", str(limit)))
    start_key = request.query.get("start_key", "")
    if start_key:
        params.append(("start_key", start_key))
    number = _page_number(request.query.get("page", ""))
    auth = request.app[guard.AUTH_KEY]
    headers = session.forwarded_headers()
    rows: list[dict[str, Any]] = []
    next_key = ""
    charts: list[Markup] = []
    error, status = "", 200
    try:
        answer = await auth.call("GET", "/v1/access", params=params, headers=headers)
        rows, next_key = answer["rows"], answer.get("next_key") or ""
        activity = await auth.call(
            "GET", "/v1/activity", params={"days": str(CHART_DAYS)}, headers=headers
        )
        # activity_charts escapes every text it draws: the SVG goes in as it is.
        charts = [Markup(svg) for svg in activity_charts(activity)]
    except CertgateError as exc:
        error, status = exc.message, exc.http_status
    users, columns, cells = _matrix(rows)
    return page(
        request, "access.html", session=session, filters=filters, users=users,
        columns=columns, cells=cells, count=len(rows), charts=charts, error=error,
        status=status, limit=limit, page_number=number, next_key=next_key,
        first_page=bool(start_key),
    )  # fmt: skip


def _matrix(
    rows: list[dict[str, Any]],
) -> tuple[list[str], list[Column], dict[tuple[str, str, str], list[dict[str, Any]]]]:
    """Users down, nodes (by name, as `cgctl access ls`) then clusters across; each cell
    the rows of that user and resource, as the template shows them."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        kind = row.get("kind", "node")
        name = row["kube_cluster"] if kind == "kube_cluster" else row["node"]
        cells[(row["user"], kind, name)].append(_cell(kind, row))
    users = sorted({user for user, _, _ in cells})
    columns = sorted({(kind, name) for _, kind, name in cells}, key=lambda c: (c[0] != "node", c))
    return users, columns, dict(cells)


def _cell(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row with what its cell shows: the login or the groups and users (`as_key` for
    tests and scripts, `as_text` to read), the facts before `how`, the granting roles
    with their labels."""
    if kind == "kube_cluster":
        groups, users = row["kubernetes_groups"], row["kubernetes_users"]
        as_key = ",".join([*groups, *users])
        as_text = ", ".join([*groups, *users]) or "no groups"
        facts = [("cluster", row["kube_cluster"])]
        facts += [("groups", ", ".join(groups))] if groups else []
        facts += [("users", f"{', '.join(users)} (kubectl --as)")] if users else []
        labels_field = "kubernetes_labels"
    else:
        as_key = as_text = row["login"]
        facts = [("node", f"{row['node']} ({row['hostname']})")]
        labels_field = "node_labels"
    grants = [(g["role"], sorted(g[labels_field].items())) for g in row["allowed_by"]]
    return {
        **row,
        "until": _short(row.get("until")),
        "as_key": as_key,
        "as_text": as_text,
        "facts": facts,
        "grants": grants,
    }


def _page_size(text: str) -> int:
    if text.isdigit() and 1 <= int(text) <= MAX_PAGE_SIZE:
        return int(text)
    return PAGE_SIZE


def _page_number(text: str) -> int:
    # Only for the "page N" the pager shows: where a page starts is its start_key.
    return max(1, int(text)) if text.isdigit() and len(text) < 7 else 1


def _short(when: str | None) -> str:
    return (when or "")[:16].replace("T", " ")
