"""Kubernetes decisions: who a user is in a cluster, and what they may touch there.

Pure functions of a RoleSet and a request (no I/O), used by the kube service for every
API call and by the proxy to list clusters:

    parse_request(method, path, query)            -> KubeRequest (kind, namespace, name, verb)
    impersonation(role_set, user, cluster, labels, as_user, as_groups)
                                                  -> Impersonation or AccessDenied
    resource_rules(role_set, labels)              -> ResourceRules (kubernetes_resources)
        .check(request)                           -> None or AccessDenied
        .filter_list(request, body) / .filter_event(request, event)
                                                  what a list or watch answer may show

Rules: a user reaches a cluster when some role's `kubernetes_labels` match it and no
deny does. The groups and users to impersonate are those of the roles whose labels
match (templates expanded), less every denied one; with none of either the user is
refused. `kubernetes_resources` of the matching allow sections narrow what may be
touched (a matching role that lists none allows every resource); deny entries refuse
what they match. Every refusal names the rule.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from certgate.access.rbac import RoleSet
from certgate.api.identity import Identity
from certgate.api.role import KubeResource
from certgate.errors import AccessDenied, BadParameter

# Sent along with the impersonated groups, as the API server adds it to any
# authenticated user: discovery and self-review permissions come with it.
AUTHENTICATED_GROUP = "system:authenticated"

_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_SUBRESOURCE_VERBS = {"exec": "exec", "attach": "exec", "portforward": "portforward"}


@dataclass(frozen=True)
class KubeRequest:
    """What an API call touches. `kind` is "" for non-resource paths (discovery)."""

    method: str
    path: str
    verb: str
    kind: str = ""  # singular: "pod", "namespace", "deployment"
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    query: Mapping[str, Sequence[str]] | None = None

    @property
    def is_session(self) -> bool:
        """exec and attach: the streams that are recorded sessions."""
        return self.subresource in ("exec", "attach")

    @property
    def is_list(self) -> bool:
        return self.verb in ("list", "watch")

    def target(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}".strip() if self.name else f"{self.kind}s"

    def first(self, key: str) -> str:
        values = (self.query or {}).get(key) or [""]
        return values[0]

    def audit_fields(self) -> dict[str, Any]:
        """The call as every kube.request event names it, whoever writes it."""
        fields: dict[str, Any] = {"method": self.method, "path": self.path, "verb": self.verb}
        if self.kind:
            fields.update(resource_kind=self.kind, namespace=self.namespace)
            if self.name:
                fields["resource_name"] = self.name
        return fields


def check_path(target: str) -> None:
    """Refuse a path the API server could read otherwise than `parse_request` does, so
    that the rules are judged on what it will serve: it decodes %-escapes (`/%61pi/...`
    is `/api/...`, `.../%65xec` is exec) and resolves `.`, `..` and empty segments its
    own way. kubectl sends none of these in a path."""
    path = target.partition("?")[0]
    segments = path.split("/")
    if (
        not path.startswith("/")
        or "%" in path
        or "\\" in path
        or any(s in ("", ".", "..") for s in segments[1:-1])
        or segments[-1] in (".", "..")
    ):
        raise BadParameter(
            f'malformed path "{path[:80]}": %-escapes, empty, "." and ".." segments '
            "are not accepted"
        )


def parse_request(method: str, target: str) -> KubeRequest:
    """The resource a request line's target names (`/api/v1/namespaces/dev/pods/web/exec?...`)."""
    path, _, raw_query = target.partition("?")
    query = parse_qs(raw_query, keep_blank_values=True)
    parts = [p for p in path.split("/") if p]
    method = method.upper()
    if len(parts) >= 2 and parts[0] == "api":
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
    else:
        return KubeRequest(method, path, _plain_verb(method), query=query)
    # The legacy watch prefix (`/api/v1/watch/namespaces/dev/pods`): a watch of what
    # follows, judged as one.
    watch_prefix = bool(rest) and rest[0] == "watch"
    if watch_prefix:
        rest = rest[1:]
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return KubeRequest(method, path, _plain_verb(method), query=query)
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    kind = _singular(resource)
    if kind == "namespace" and name:
        namespace = name  # a namespace is in itself, for rules that name one
    if subresource in _SUBRESOURCE_VERBS:
        verb = _SUBRESOURCE_VERBS[subresource]
    elif method in ("GET", "HEAD"):
        watch = watch_prefix or query.get("watch", [""])[0] in ("true", "1")
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE" and not name:
        verb = "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return KubeRequest(method, path, verb, kind, namespace, name, subresource, query)


def _plain_verb(method: str) -> str:
    return "get" if method in ("GET", "HEAD") else _VERBS.get(method, method.lower())


def _singular(resource: str) -> str:
    if resource.endswith("ies"):
        return resource[:-3] + "y"
    if resource.endswith("sses"):
        return resource[:-2]
    return resource[:-1] if resource.endswith("s") else resource


# ---- identity in the cluster ----------------------------------------------------------


@dataclass(frozen=True)
class Impersonation:
    user: str
    groups: tuple[str, ...]


def check_resource_grant(identity: Identity, cluster: str) -> None:
    """A certificate from a resource access request reaches only the resources it names
    (`kube_cluster/NAME`); any other certificate is not limited this way."""
    # `resources` arrives with access requests (identity field set by resource grants).
    granted: tuple[str, ...] = tuple(getattr(identity, "resources", ()) or ())
    if granted and f"kube_cluster/{cluster}" not in granted:
        raise AccessDenied(
            f'access denied to kubernetes cluster "{cluster}": your access request grants '
            f"only {', '.join(granted)}"
        )


def check_cluster(role_set: RoleSet, cluster: str, labels: Mapping[str, str]) -> None:
    """Refuse unless some role's kubernetes_labels match the cluster and no deny does."""
    denier = role_set.kube_denier(labels)
    if denier is not None:
        raise AccessDenied(
            f'access denied to kubernetes cluster "{cluster}": denied by role {denier}'
        )
    if not role_set.can_access_kube(labels):
        raise AccessDenied(
            f'access denied to kubernetes cluster "{cluster}": cluster labels do not match '
            "any of your roles (kubernetes_labels)"
        )


def impersonation(
    role_set: RoleSet,
    username: str,
    cluster: str,
    labels: Mapping[str, str],
    as_user: str = "",
    as_groups: Sequence[str] = (),
    *,
    discovery: bool = False,
) -> Impersonation:
    """Who to act as in the cluster, or AccessDenied naming the rule.

    `as_user`/`as_groups` are what the client asked for with `--as`/`--as-group`: they
    may only narrow to values the roles allow. A `discovery` call (no resource: /api,
    /apis, /version) by a user without groups or users goes through as the bare
    authenticated user: kubectl cannot show a refusal of discovery (it prints "unknown"),
    and discovery grants nothing; the user's first real call gets the refusal.
    """
    check_cluster(role_set, cluster, labels)
    groups = role_set.kubernetes_groups(labels)
    users = role_set.kubernetes_users(labels)
    if not groups and not users and discovery:
        return Impersonation(username, (AUTHENTICATED_GROUP,))
    if not groups and not users:
        raise AccessDenied(
            f'access denied to kubernetes cluster "{cluster}": user "{username}" has no '
            "assigned groups or users (kubernetes_groups, kubernetes_users)"
        )
    if as_user:
        if as_user not in users and not (not users and as_user == username):
            raise AccessDenied(
                f'access denied to kubernetes cluster "{cluster}": --as "{as_user}" is not '
                f"allowed by your roles (kubernetes_users: {', '.join(users) or 'none'})"
            )
        user = as_user
    elif len(users) > 1:
        raise AccessDenied(
            f'access denied to kubernetes cluster "{cluster}": your roles allow several '
            f"kubernetes users ({', '.join(users)}): choose one with --as"
        )
    else:
        user = users[0] if users else username
    if as_groups:
        for group in as_groups:
            if group not in groups:
                raise AccessDenied(
                    f'access denied to kubernetes cluster "{cluster}": --as-group "{group}" '
                    f"is not allowed by your roles (kubernetes_groups: "
                    f"{', '.join(groups) or 'none'})"
                )
        chosen = list(dict.fromkeys(as_groups))
    else:
        chosen = groups
    return Impersonation(user, tuple([*chosen, AUTHENTICATED_GROUP]))


# ---- kubernetes_resources ----------------------------------------------------------------


@dataclass(frozen=True)
class ResourceRules:
    """The kubernetes_resources that apply in one cluster. `allowed` None: no limit."""

    allowed: tuple[KubeResource, ...] | None
    denied: tuple[tuple[str, KubeResource], ...]  # (role name, entry)

    @property
    def filters(self) -> bool:
        return self.allowed is not None or bool(self.denied)

    def check(self, request: KubeRequest) -> None:
        """Refuse a call on a resource the rules do not let the user touch. A list or
        watch passes when some entry could match an item; its answer is filtered."""
        if not request.kind:
            return  # discovery, /version, /openapi: nothing of the user's data
        for role, entry in self.denied:
            if _matches(entry, request.kind, request.namespace, request.name or "*", request.verb):
                raise AccessDenied(
                    f"access denied: {request.verb} on {request.target()} is denied by role "
                    f"{role} (kubernetes_resources)"
                )
        if self.allowed is None:
            return
        if request.name or request.verb not in ("list", "watch"):
            ok = any(
                _matches(e, request.kind, request.namespace, request.name, request.verb)
                for e in self.allowed
            )
        else:
            ok = any(
                _kind_matches(e.kind, request.kind)
                and _verb_matches(e, request.verb)
                and (not request.namespace or _glob(e.namespace, request.namespace))
                for e in self.allowed
            )
        if not ok:
            raise AccessDenied(
                f"access denied: {request.verb} on {request.target()} is not allowed by your "
                "roles (kubernetes_resources)"
            )

    def allows_item(self, request: KubeRequest, namespace: str, name: str) -> bool:
        kind, verb = request.kind, request.verb
        if kind == "namespace":
            namespace = name
        if any(_matches(e, kind, namespace, name, verb) for _, e in self.denied):
            return False
        if self.allowed is None:
            return True
        return any(_matches(e, kind, namespace, name, verb) for e in self.allowed)

    def filter_object(self, request: KubeRequest, obj: Any) -> Any:
        """A list, a Table or a single object with what the user may not see taken out
        (a single object the user may not see becomes None). Fails closed: anything
        else but a Status is None, as it may hold what the rules would take out."""
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("items"), list):
            items = [i for i in obj["items"] if self._item_ok(request, i)]
            return {**obj, "items": items}
        if obj.get("kind") == "Table" and isinstance(obj.get("rows"), list):
            rows = [r for r in obj["rows"] if self._item_ok(request, r.get("object"))]
            return {**obj, "rows": rows}
        if isinstance(obj.get("metadata"), dict) and obj.get("kind") not in ("Status", None):
            return obj if self._item_ok(request, obj) else None
        return obj if obj.get("kind") == "Status" else None

    def filter_event(self, request: KubeRequest, line: bytes) -> bytes | None:
        """One watch event line, filtered (None: the user may not see it, or it is not
        a JSON watch event this can judge)."""
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if not isinstance(event, dict) or "object" not in event:
            return None
        obj = self.filter_object(request, event["object"])
        if obj is None or (
            isinstance(obj, dict) and obj.get("kind") == "Table" and not obj["rows"]
        ):
            return None
        return json.dumps({**event, "object": obj}).encode() + b"\n"

    def _item_ok(self, request: KubeRequest, item: Any) -> bool:
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict):
            return False
        return self.allows_item(request, str(meta.get("namespace", "")), str(meta.get("name", "")))


def resource_rules(role_set: RoleSet, labels: Mapping[str, str]) -> ResourceRules:
    """What the roles matching a cluster let one touch there. A matching role without
    kubernetes_resources allows every resource, but only one that makes the user
    somebody in the cluster (kubernetes_groups or kubernetes_users): a role that only
    lists the cluster (`kubernetes_labels` alone, as a contractor's standing role) must
    not undo the limit of the role that grants the groups."""
    allowed: list[KubeResource] = []
    unlimited = False
    for role in role_set.kube_roles(labels):
        entries = role.spec.allow.kubernetes_resources
        grants = role.spec.allow.kubernetes_groups or role.spec.allow.kubernetes_users
        if not entries and grants:
            unlimited = True
        allowed.extend(entries)
    denied = tuple(
        (role.name, entry)
        for role in role_set.roles
        for entry in role.spec.deny.kubernetes_resources
    )
    return ResourceRules(None if unlimited else tuple(allowed), denied)


def _kind_matches(pattern: str, kind: str) -> bool:
    pattern = pattern.lower()
    return pattern == "*" or pattern == kind or _singular(pattern) == kind


def _verb_matches(entry: KubeResource, verb: str) -> bool:
    return "*" in entry.verbs or verb in entry.verbs


def _glob(pattern: str, value: str) -> bool:
    if pattern == "*":
        return True
    return re.fullmatch(fnmatch.translate(pattern), value) is not None


def _matches(entry: KubeResource, kind: str, namespace: str, name: str, verb: str) -> bool:
    return (
        _kind_matches(entry.kind, kind)
        and _verb_matches(entry, verb)
        and _glob(entry.namespace, namespace)
        and ((name == "*" and entry.name == "*") or _glob(entry.name, name))
    )


def status_body(code: int, reason: str, message: str) -> bytes:
    """A Kubernetes `Status` answer, as kubectl prints it (`Error from server (...)`)."""
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    ).encode()
