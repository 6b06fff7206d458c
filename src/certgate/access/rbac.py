"""Role evaluation: what a user's roles, read together, allow.

`RoleSet(roles, traits)` is the evaluated view of one user's roles: templates expanded
against the user's traits and label selectors compiled once, then answered from memory
(no I/O), so the auth server, proxies and nodes decide the same way. `validate_role`
refuses a role that could not be evaluated; the role store calls it on create.

    roles + traits ──> RoleSet ──> logins()                    SSH certificate principals
                                   check_login(node, labels, login)  ssh
                                   can_access_node(labels)           cgsh ls
                                   check_rule(resource, verb)        API access checker
                                   kubernetes_groups/users(), can_access_kube(labels)
                                   options(), adjust_ttl(ttl)        certificate contents
                                   join_modes(owner roles)           cgsh join

Rules that hold throughout:

- Deny wins over allow, always.
- A role allows SSH access only when both its logins and its node_labels match; one role's
  logins never combine with another role's labels.
- A deny section applies to the nodes its `node_labels` match (every node when it has
  none) and to the logins in its `logins` (every login when it has none).
- Label selectors match like Teleport's: `{"*": "*"}` matches every node; otherwise every
  key must be present on the node with a value matching one listed value: `"*"` (any
  value), `^...$` (a regular expression that must match the whole value), or text where
  `*` is a glob. An empty selector matches nothing. Keys and values may be templates;
  substituted trait values are matched literally (never as globs or regex syntax), and an
  entry whose key or values expand to nothing can never match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from certgate.access.templates import (
    Traits,
    expand,
    expand_all,
    is_template,
    is_valid_login,
    parse_template,
    validate_template,
)
from certgate.api.role import (
    JoinPolicy,
    LabelValues,
    RecordingMode,
    RecordSession,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
)
from certgate.errors import AccessDenied, BadParameter

WILDCARD = "*"

_SectionField = Callable[["_Section"], frozenset[str]]

_RECORDING_STRICTNESS: dict[RecordingMode, int] = {"off": 0, "best_effort": 1, "strict": 2}


def _is_regex(value: str) -> bool:
    return len(value) >= 2 and value.startswith("^") and value.endswith("$")


def _glob(text: str) -> str:
    return ".*".join(re.escape(piece) for piece in text.split(WILDCARD))


def _quote(text: str) -> str:
    # One-line messages even when a caller passes a login with a newline in it.
    return json.dumps(text, ensure_ascii=False)


def _bare(text: str) -> str:
    return _quote(text)[1:-1]


def _login_refused(login: str, node_name: str, why: str) -> AccessDenied:
    # Built only on refusal: check_login runs for every SSH session and every cell of
    # the access matrix, and most calls succeed (quoting the target was half the cost).
    return AccessDenied(f"access denied to {_bare(login)}@{_bare(node_name)}: {why}")


class LabelSelector:
    """One role section's label condition (node_labels or kubernetes_labels), compiled."""

    def __init__(self, selector: Mapping[str, LabelValues], traits: Traits) -> None:
        self.configured = bool(selector)
        self.match_all = False
        # None for an entry that can never match (its key or values expanded to nothing).
        self._entries: list[tuple[str, list[re.Pattern[str]] | None] | None] = []
        for raw_key, raw_values in selector.items():
            values = [raw_values] if isinstance(raw_values, str) else list(raw_values)
            if raw_key == WILDCARD:
                if WILDCARD in values:
                    self.match_all = True
                else:
                    # Only `"*": "*"` is meaningful; validate_role refuses the rest.
                    self._entries.append(None)
                continue
            keys = expand(raw_key, traits)
            if len(keys) != 1:
                self._entries.append(None)
                continue
            if WILDCARD in values:
                self._entries.append((keys[0], None))
                continue
            patterns = [p for raw in values for p in _value_patterns(raw, traits)]
            self._entries.append((keys[0], patterns) if patterns else None)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.match_all:
            return True
        if not self._entries:
            return False
        for entry in self._entries:
            if entry is None:
                return False
            key, patterns = entry
            value = labels.get(key)
            if value is None:
                return False
            if patterns is not None and not any(p.fullmatch(value) for p in patterns):
                return False
        return True


def _value_patterns(raw: str, traits: Traits) -> list[re.Pattern[str]]:
    template = parse_template(raw)
    if _is_regex(raw):
        texts = template.expand(traits, quote=re.escape)
    elif template.is_literal:
        texts = [_glob(raw)]
    else:
        texts = [
            _glob(template.prefix) + re.escape(v) + _glob(template.suffix)
            for v in template.values(traits)
        ]
    patterns = []
    for text in texts:
        try:
            patterns.append(re.compile(text))
        except re.error as exc:
            raise BadParameter(f"invalid label value {_quote(raw)}: {exc}") from exc
    return patterns


@dataclass(frozen=True)
class _Section:
    """One allow or deny section with its templates expanded."""

    logins: frozenset[str]
    logins_configured: bool
    nodes: LabelSelector
    kubernetes_groups: frozenset[str]
    kubernetes_users: frozenset[str]
    kube: LabelSelector

    @classmethod
    def build(cls, conditions: RoleConditions, traits: Traits, *, allow: bool) -> _Section:
        logins = expand_all(conditions.logins, traits)
        if allow:
            # Dropping (not refusing) bad logins: trait values come from users and
            # identity providers, and one bad value should not cost the rest.
            logins = [login for login in logins if is_valid_login(login)]
        return cls(
            logins=frozenset(logins),
            logins_configured=bool(conditions.logins),
            nodes=LabelSelector(conditions.node_labels, traits),
            kubernetes_groups=frozenset(expand_all(conditions.kubernetes_groups, traits)),
            kubernetes_users=frozenset(expand_all(conditions.kubernetes_users, traits)),
            kube=LabelSelector(conditions.kubernetes_labels, traits),
        )

    def denies_login(self, login: str, labels: Mapping[str, str]) -> bool:
        """Whether this deny section refuses `login` on a node with `labels`."""
        if not self.logins_configured and not self.nodes.configured:
            return False
        if self.logins_configured and login not in self.logins:
            return False
        return not self.nodes.configured or self.nodes.matches(labels)

    def denies_node(self, labels: Mapping[str, str]) -> bool:
        """Whether this deny section refuses every login on a node with `labels`."""
        return not self.logins_configured and self.nodes.matches(labels)

    def denies_everywhere(self, login: str) -> bool:
        """Whether this deny section refuses `login` on every node."""
        everywhere = not self.nodes.configured or self.nodes.match_all
        if not self.logins_configured:
            return self.nodes.match_all
        return everywhere and login in self.logins


@dataclass(frozen=True)
class _EvaluatedRole:
    role: Role
    allow: _Section
    deny: _Section

    @property
    def name(self) -> str:
        return self.role.name


class RoleSet:
    """The evaluated view of one user's roles (see the module docstring for the rules).

    Construction expands every template against `traits` and raises BadParameter if a
    role is malformed (a role that passed `validate_role` never is). Every answer is
    independent of the order of `roles`.
    """

    def __init__(self, roles: Sequence[Role], traits: Mapping[str, Sequence[str]]) -> None:
        # Sorted by name so that answers, and which role a message names, do not depend
        # on the order roles were listed in.
        ordered = sorted(roles, key=lambda role: role.name)
        self._roles = tuple(
            _EvaluatedRole(
                role,
                _Section.build(role.spec.allow, traits, allow=True),
                _Section.build(role.spec.deny, traits, allow=False),
            )
            for role in ordered
        )
        # Answers that depend on nothing but the roles and traits, worked out on first
        # use: a RoleSet is immutable and RoleSetCache hands the same one out again.
        self._logins: list[str] | None = None
        self._options: RoleOptions | None = None

    @property
    def roles(self) -> tuple[Role, ...]:
        return tuple(r.role for r in self._roles)

    @property
    def role_names(self) -> list[str]:
        return [r.name for r in self._roles]

    # SSH

    def logins(self) -> list[str]:
        """The logins to put in an SSH certificate: allowed somewhere, denied nowhere-wide.

        A login denied only on some nodes (deny logins with deny node_labels) stays here;
        `check_login` refuses it on those nodes.
        """
        if self._logins is None:
            allowed = {login for r in self._roles for login in r.allow.logins}
            self._logins = sorted(
                login
                for login in allowed
                if not any(r.deny.denies_everywhere(login) for r in self._roles)
            )
        return list(self._logins)

    def check_login(self, node_name: str, node_labels: Mapping[str, str], login: str) -> None:
        """Raise AccessDenied unless `login` is allowed on this node."""
        for r in self._roles:
            if r.deny.denies_login(login, node_labels):
                what = f"login {_quote(login)}" if r.deny.logins_configured else "this node"
                raise _login_refused(login, node_name, f"{what} is denied by role {r.name}")
        granting = [r for r in self._roles if login in r.allow.logins]
        if not granting:
            raise _login_refused(
                login, node_name, f"login {_quote(login)} is not allowed by your roles"
            )
        if any(r.allow.nodes.matches(node_labels) for r in granting):
            return
        if any(r.allow.nodes.matches(node_labels) for r in self._roles):
            raise _login_refused(
                login, node_name, f"login {_quote(login)} is not allowed on this node by your roles"
            )
        raise _login_refused(login, node_name, "node labels do not match any of your roles")

    def can_access_node(self, node_labels: Mapping[str, str]) -> bool:
        """Whether the node is visible (`cgsh ls`): some role's labels match, no deny does."""
        if any(r.deny.denies_node(node_labels) for r in self._roles):
            return False
        return any(r.allow.nodes.matches(node_labels) for r in self._roles)

    # Kubernetes

    def kubernetes_groups(self, cluster_labels: Mapping[str, str] | None = None) -> list[str]:
        """Groups to impersonate: allowed minus denied; with labels, only matching roles'."""
        return self._kube(lambda s: s.kubernetes_groups, cluster_labels)

    def kubernetes_users(self, cluster_labels: Mapping[str, str] | None = None) -> list[str]:
        """Users to impersonate: allowed minus denied; with labels, only matching roles'."""
        return self._kube(lambda s: s.kubernetes_users, cluster_labels)

    def _kube(self, field: _SectionField, cluster_labels: Mapping[str, str] | None) -> list[str]:
        allowed: set[str] = set()
        for r in self._roles:
            if cluster_labels is None or r.allow.kube.matches(cluster_labels):
                allowed |= field(r.allow)
        denied = {v for r in self._roles for v in field(r.deny)}
        return sorted(allowed - denied)

    def can_access_kube(self, cluster_labels: Mapping[str, str]) -> bool:
        """Whether some role's kubernetes_labels match the cluster and no deny does."""
        if any(r.deny.kube.matches(cluster_labels) for r in self._roles):
            return False
        return any(r.allow.kube.matches(cluster_labels) for r in self._roles)

    def kube_denier(self, cluster_labels: Mapping[str, str]) -> str | None:
        """The name of a role whose deny kubernetes_labels match the cluster, if any."""
        for r in self._roles:
            if r.deny.kube.matches(cluster_labels):
                return r.name
        return None

    def kube_roles(self, cluster_labels: Mapping[str, str]) -> list[Role]:
        """The roles whose allow kubernetes_labels match the cluster."""
        return [r.role for r in self._roles if r.allow.kube.matches(cluster_labels)]

    # API rules

    def allows_rule(self, resource: str, verb: str) -> bool:
        """Whether the roles allow `verb` on `resource` (deny rules win; `*` is any)."""
        return self._rule_denier(resource, verb) is None and self._rule_allowed(resource, verb)

    def check_rule(self, resource: str, verb: str) -> None:
        """Raise AccessDenied unless the roles allow `verb` on `resource`."""
        denier = self._rule_denier(resource, verb)
        if denier is not None:
            raise AccessDenied(f"access denied to {verb} {resource}: denied by role {denier}")
        if not self._rule_allowed(resource, verb):
            raise AccessDenied(f"access denied to {verb} {resource}: not allowed by your roles")

    def _rule_denier(self, resource: str, verb: str) -> str | None:
        for r in self._roles:
            if _rules_match(r.role.spec.deny.rules, resource, verb):
                return r.name
        return None

    def _rule_allowed(self, resource: str, verb: str) -> bool:
        return any(_rules_match(r.role.spec.allow.rules, resource, verb) for r in self._roles)

    # Options

    def options(self) -> RoleOptions:
        """The options of all roles merged into one; each rule is order-independent.

        - max_session_ttl: the shortest.
        - client_idle_timeout: the shortest of those set (None if no role sets one).
        - forward_agent: allowed if any role allows it.
        - port_forwarding: allowed if any role allows it (Teleport's rule for this
          option). The default is true, so to forbid it every role must set false.
        - record_session: per kind (ssh, k8s), the strictest mode (strict > best_effort > off).
        - locking_mode: strict if any role is strict.
        - require_session_mfa: required if any role requires it.
        - disconnect_expired_cert: on if any role says so (the stricter choice).
        - ssh_remote_bind_any: off if any role sets it false, else on if any role sets
          it true, else off. Unlike port_forwarding, a role that says false is a
          restriction the user's other roles cannot lift: it widens who can reach the
          user's listener.

        With no roles the result is RoleOptions' defaults, except that nothing is
        forwarded (no role allows it).
        """
        if self._options is None:
            self._options = self._merged_options()
        return self._options  # frozen: safe to share

    def _merged_options(self) -> RoleOptions:
        opts = [r.role.spec.options for r in self._roles]
        if not opts:
            return RoleOptions(forward_agent=False, port_forwarding=False)
        idle = [o.client_idle_timeout for o in opts if o.client_idle_timeout is not None]
        locking: Literal["best_effort", "strict"] = (
            "strict" if any(o.locking_mode == "strict" for o in opts) else "best_effort"
        )
        strictest = _RECORDING_STRICTNESS.__getitem__
        recording = RecordSession(
            ssh=max((o.record_session.ssh for o in opts), key=strictest),
            k8s=max((o.record_session.k8s for o in opts), key=strictest),
        )
        return RoleOptions(
            max_session_ttl=min(o.max_session_ttl for o in opts),
            forward_agent=any(o.forward_agent for o in opts),
            port_forwarding=any(o.port_forwarding for o in opts),
            record_session=recording,
            locking_mode=locking,
            require_session_mfa=any(o.require_session_mfa for o in opts),
            client_idle_timeout=min(idle) if idle else None,
            disconnect_expired_cert=any(o.disconnect_expired_cert for o in opts),
            ssh_remote_bind_any=_explicit_false_wins([o.ssh_remote_bind_any for o in opts]),
        )

    def session_mfa_role(self) -> str | None:
        """The name of a role that requires per-session MFA, if any does."""
        for evaluated in self._roles:
            if evaluated.role.spec.options.require_session_mfa:
                return evaluated.role.name
        return None

    def adjust_ttl(self, requested: timedelta) -> timedelta:
        """The certificate lifetime to grant: the request, capped by max_session_ttl."""
        if requested <= timedelta(0):
            raise BadParameter("the requested ttl must be longer than 0s")
        return min(requested, self.options().max_session_ttl)

    # Sessions and access requests (unions; their issues refine them)

    def join_policies(self) -> list[JoinPolicy]:
        """Every allow join_sessions policy of every role, without duplicates."""
        seen: dict[str, JoinPolicy] = {}
        for r in self._roles:
            for policy in r.role.spec.allow.join_sessions:
                seen.setdefault(policy.model_dump_json(), policy)
        return [seen[key] for key in sorted(seen)]

    def join_modes(self, owner_roles: Sequence[str], kind: str = "ssh") -> list[str]:
        """How these roles may join a live `kind` session of a user holding `owner_roles`.

        A `join_sessions` policy applies when one of its `roles` (globs) names one of the
        owner's roles and its `kinds` include `kind`. Allowed modes are the union over
        the allow policies that apply, less every mode of a deny policy that applies.
        A peer, and a moderator, may also observe: both see the session; for the same
        reason a denied `observer` denies every mode.
        """

        def applies(policy: JoinPolicy) -> bool:
            kinds_match = WILDCARD in policy.kinds or kind in policy.kinds
            patterns = [_name_pattern(name) for name in policy.roles]
            return kinds_match and any(p.fullmatch(role) for p in patterns for role in owner_roles)

        allowed: set[str] = set()
        denied: set[str] = set()
        for r in self._roles:
            for policy in r.role.spec.allow.join_sessions:
                if applies(policy):
                    allowed.update(policy.modes)
            for policy in r.role.spec.deny.join_sessions:
                if applies(policy):
                    denied.update(policy.modes)
        if allowed & {"peer", "moderator"}:
            allowed.add("observer")
        if "observer" in denied:
            return []  # every mode sees the session: refusing the sight refuses them all
        return sorted(allowed - denied)

    def request_roles(self) -> list[str]:
        """Roles these roles may request: allowed by some role, matched by no deny."""
        return self._names(
            (c.request.roles for c in self._conditions(allow=True) if c.request),
            (c.request.roles for c in self._conditions(allow=False) if c.request),
        )

    def review_roles(self) -> list[str]:
        """Roles whose requests these roles may review: allowed, not denied."""
        return self._names(
            (c.review_requests.roles for c in self._conditions(allow=True) if c.review_requests),
            (c.review_requests.roles for c in self._conditions(allow=False) if c.review_requests),
        )

    def _conditions(self, *, allow: bool) -> list[RoleConditions]:
        return [r.role.spec.allow if allow else r.role.spec.deny for r in self._roles]

    def _names(self, allowed: Iterable[list[str]], denied: Iterable[list[str]]) -> list[str]:
        names = {name for group in allowed for name in group}
        deny = [_name_pattern(name) for group in denied for name in group]
        return sorted(name for name in names if not any(p.fullmatch(name) for p in deny))


def _explicit_false_wins(values: Iterable[bool | None]) -> bool:
    said = [v for v in values if v is not None]
    return bool(said) and all(said)


class RoleSetCache:
    """RoleSets by the roles' names and revisions and the traits they were built for.

    Building a RoleSet expands templates and compiles selectors; for the same stored
    roles (same revisions) and traits the result is the same, so it is built once. A
    role without a revision (not read from the store) is never cached.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._sets: dict[tuple[object, ...], RoleSet] = {}

    def get(self, roles: Sequence[Role], traits: Mapping[str, Sequence[str]]) -> RoleSet:
        revisions = tuple(sorted((role.name, role.metadata.revision) for role in roles))
        if any(revision <= 0 for _, revision in revisions):
            return RoleSet(roles, traits)
        key = (revisions, *sorted((name, tuple(values)) for name, values in traits.items()))
        role_set = self._sets.get(key)
        if role_set is None:
            role_set = RoleSet(roles, traits)
            if len(self._sets) >= self._size:
                del self._sets[next(iter(self._sets))]  # the oldest
            self._sets[key] = role_set
        return role_set


def _name_pattern(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value if _is_regex(value) else _glob(value))
    except re.error:
        # Only deny lists are matched as patterns: a broken one denies everything
        # rather than nothing. validate_role keeps such roles out of the store.
        return re.compile(".*", re.DOTALL)


def _rules_match(rules: Iterable[Rule], resource: str, verb: str) -> bool:
    return any(
        (WILDCARD in rule.resources or resource in rule.resources)
        and (WILDCARD in rule.verbs or verb in rule.verbs)
        for rule in rules
    )


def validate_role(role: Role) -> None:
    """Refuse a role that could not be evaluated: bad templates, logins, labels or regexes.

    Call it when a role is created or updated, so a typo is refused with a one-line
    BadParameter (`role "dev": allow.logins: invalid login "ro ot"`) instead of silently
    granting or denying nothing later.
    """
    for section, conditions in (("allow", role.spec.allow), ("deny", role.spec.deny)):
        for field, check in _checks(conditions):
            try:
                check()
            except BadParameter as exc:
                raise BadParameter(f'role "{role.name}": {section}.{field}: {exc}') from exc


def _checks(conditions: RoleConditions) -> list[tuple[str, Callable[[], None]]]:
    checks: list[tuple[str, Callable[[], None]]] = [
        ("logins", lambda: _validate_logins(conditions.logins)),
        ("kubernetes_groups", lambda: _validate_templates(conditions.kubernetes_groups)),
        ("kubernetes_users", lambda: _validate_templates(conditions.kubernetes_users)),
        ("node_labels", lambda: _validate_labels(conditions.node_labels)),
        ("kubernetes_labels", lambda: _validate_labels(conditions.kubernetes_labels)),
    ]
    if conditions.request is not None:
        request = conditions.request
        checks.append(("request.roles", lambda: _validate_names(request.roles)))
        checks.append(("request.search_as_roles", lambda: _validate_names(request.search_as_roles)))
        checks.append(
            (
                "request.suggested_reviewers",
                lambda: _validate_templates(request.suggested_reviewers),
            )
        )
    if conditions.review_requests is not None:
        reviews = conditions.review_requests.roles
        checks.append(("review_requests.roles", lambda: _validate_names(reviews)))
    return checks


def _validate_templates(values: Iterable[str]) -> None:
    for value in values:
        validate_template(value)


def _validate_logins(values: Iterable[str]) -> None:
    for value in values:
        validate_template(value)
        if not is_template(value) and not is_valid_login(value):
            raise BadParameter(f"invalid login {_quote(value)}: use a Unix user name")


def _validate_labels(selector: Mapping[str, LabelValues]) -> None:
    for key, raw_values in selector.items():
        values = [raw_values] if isinstance(raw_values, str) else raw_values
        validate_template(key)
        if key == WILDCARD and values != [WILDCARD]:
            raise BadParameter('the key "*" only takes the value "*" (it matches every label)')
        for value in values:
            template = parse_template(value)
            if _is_regex(value):
                # A template inside a regex is filled with escaped trait values, so
                # checking the surrounding regex with a plain placeholder is enough.
                text = value if template.is_literal else template.prefix + "x" + template.suffix
                _compile(value, text)


def _validate_names(values: Iterable[str]) -> None:
    for value in values:
        validate_template(value)
        if _is_regex(value):
            _compile(value, value)


def _compile(value: str, text: str) -> None:
    try:
        re.compile(text)
    except re.error as exc:
        raise BadParameter(f"invalid regular expression {_quote(value)}: {exc}") from exc
