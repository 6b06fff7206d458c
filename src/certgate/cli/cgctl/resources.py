"""`cgctl create|get|rm`: any resource as a YAML/JSON document."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import table

KINDS = (
    "user",
    "role",
    "token",
    "lock",
    "node",
    "cert_authority",
    "access_request",
    "kube_cluster",
)
# Plurals and short names people type.
ALIASES = {
    "users": "user",
    "roles": "role",
    "tokens": "token",
    "locks": "lock",
    "nodes": "node",
    "cert_authorities": "cert_authority",
    "cas": "cert_authority",
    "ca": "cert_authority",
    "access_requests": "access_request",
    "requests": "access_request",
    "kube_clusters": "kube_cluster",
}


def parse_ref(ref: str) -> tuple[str, str | None]:
    kind, _, name = ref.partition("/")
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise click.BadParameter(f'unknown kind "{kind}": use one of {", ".join(KINDS)}')
    if _ and not name:
        raise click.BadParameter(f'"{ref}": name the resource after the slash')
    return kind, name or None


@click.command()
@click.option("-f", "--filename", "file", help="File to read ('-' for standard input).")
@click.argument("path", required=False)
@click.option("--force", is_flag=True, help="Overwrite a resource that exists.")
@click.pass_context
def create(ctx: click.Context, file: str | None, path: str | None, force: bool) -> None:
    """Create resources from a YAML or JSON file (all or nothing)."""
    # The resource models (pydantic) are imported only by the command that builds them.
    from certgate.api.codec import parse_documents, to_dict
    from certgate.api.role import Role

    source = file or path
    if not source:
        raise click.UsageError("name a file: cgctl create -f FILE (or - for standard input)")
    try:
        text = sys.stdin.read() if source == "-" else _read(source)
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"cannot read {source}: it is not UTF-8 text") from exc
    resources = parse_documents(text)  # every document checked before anything is sent
    # One call: auth writes them all in one transaction, or none with the reason.
    api(ctx).call(
        "POST",
        "/resources",
        json={"resources": [to_dict(r) for r in resources], "upsert": force},
    )
    verb = "created" if not force else "created or updated"
    for resource in resources:
        click.echo(f'{resource.kind} "{resource.metadata.name}" has been {verb}')
        if isinstance(resource, Role) and resource.spec.options.require_session_mfa:
            click.echo(
                f'warning: role "{resource.metadata.name}": require_session_mfa is not yet '
                "available: its holders are refused every new session until it is",
                err=True,
            )


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="FILE") from exc


@click.command()
@click.argument("ref")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "yaml", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.pass_context
def get(ctx: click.Context, ref: str, fmt: str) -> None:
    """Show resources: KIND or KIND/NAME (role, user, token, lock, node, cert_authority,
    access_request, kube_cluster)."""
    kind, name = parse_ref(ref)
    path = f"/resources/{kind}" + (f"/{name}" if name else "")
    items: list[dict[str, Any]] = api(ctx).call("GET", path)
    if fmt == "json":
        click.echo(json.dumps(items if not name else items[0], indent=2))
    elif fmt == "yaml":
        import yaml  # only for this format: `cgctl get users` prints a table

        click.echo(yaml.safe_dump_all(items, sort_keys=False), nl=False)
    else:
        click.echo(_text(kind, items))


def _text(kind: str, items: list[dict[str, Any]]) -> str:
    rows: list[tuple[Any, ...]]
    if kind == "role":
        rows = [
            (
                r["metadata"]["name"],
                r["spec"]["allow"]["logins"],
                r["spec"]["allow"]["node_labels"],
                r["metadata"]["description"],
            )
            for r in items
        ]
        return table(["Role", "Allowed logins", "Node labels", "Description"], rows)
    if kind == "node":
        rows = [
            (
                n["metadata"]["name"],
                n["spec"]["hostname"],
                n["spec"]["addr"],
                n["metadata"]["labels"],
            )
            for n in items
        ]
        return table(["Node", "Hostname", "Address", "Labels"], rows)
    if kind == "kube_cluster":
        rows = [
            (
                k["metadata"]["name"],
                k["spec"]["service"],
                k["spec"]["addr"],
                k["metadata"]["labels"],
            )
            for k in items
        ]
        return table(["Cluster", "Kube service", "Address", "Labels"], rows)
    if kind == "cert_authority":
        rows = [(c["metadata"]["name"], c["spec"]["cluster_name"]) for c in items]
        return table(["Type", "Cluster"], rows)
    if kind == "lock":
        rows = [
            (
                lk["metadata"]["name"],
                ",".join(f"{k}={v}" for k, v in lk["spec"]["target"].items() if v),
                lk["spec"]["message"],
                lk["metadata"]["expires"] or "never",
            )
            for lk in items
        ]
        return table(["Lock", "Target", "Message", "Expires"], rows)
    if kind == "access_request":
        rows = [
            (
                r["metadata"]["name"],
                r["spec"]["user"],
                ",".join(r["spec"]["roles"]),
                r["spec"]["state"],
                r["spec"]["created"],
            )
            for r in items
        ]
        return table(["Request", "User", "Roles", "State", "Created"], rows)
    rows = [(i["metadata"]["name"], i["metadata"].get("expires") or "") for i in items]
    return table(["Name", "Expires"], rows)


@click.command()
@click.argument("ref")
@click.pass_context
def rm(ctx: click.Context, ref: str) -> None:
    """Delete a resource: KIND/NAME."""
    kind, name = parse_ref(ref)
    if not name:
        raise click.BadParameter("name the resource: KIND/NAME", param_hint="REF")
    api(ctx).call("DELETE", f"/resources/{kind}/{name}")
    click.echo(f'{kind} "{name}" has been deleted')
