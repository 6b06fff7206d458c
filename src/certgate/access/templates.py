"""Role templates: role values that expand from the user's traits.

A role value is a literal (`ubuntu`) or text holding one `{{...}}` expression:

    {{internal.logins}}             every value of the user's `logins` trait
    {{internal["logins"]}}          the same, for names that are not identifiers
    {{external.email}}              a trait from the identity provider
    {{email.local(external.email)}} alice@example.com -> alice
    {{regexp.replace(internal.logins, "^admin-(.*)$", "$1")}}
                                    admin-bob -> bob; values that do not match drop out
    dev-{{internal.logins}}         text around the expression is kept

    role created ── validate_template(value) ── BadParameter for a malformed value
    role evaluated ─ expand(value, traits) ──── zero or more strings

`internal.NAME` may name only the traits certgate fills itself (`INTERNAL_TRAITS`);
`external.NAME` may name any trait. Until SSO arrives both read the same traits dict.
A trait the user does not have expands to nothing, so the role entry built from it
drops out rather than turning into an empty or literal value.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parseaddr

from certgate.api.user import INTERNAL_TRAITS
from certgate.errors import BadParameter

Traits = Mapping[str, Sequence[str]]

# What a Unix login may look like once a template expanded it. Trait values come from
# users and identity providers; a login becomes an SSH principal and a local account
# name, so anything a shell or sshd could read as syntax is dropped, not passed on.
# 32 characters is the Linux utmp limit.
_LOGIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def is_valid_login(name: str) -> bool:
    """Whether `name` is usable as a Unix login (and so as an SSH principal)."""
    return _LOGIN.fullmatch(name) is not None


def is_template(value: str) -> bool:
    """Whether `value` holds (or tries to hold) a `{{...}}` expression."""
    return "{{" in value or "}}" in value


class _Expression:
    """A parsed expression: maps the user's traits to zero or more strings."""

    def evaluate(self, traits: Traits) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class _Trait(_Expression):
    namespace: str
    name: str

    def evaluate(self, traits: Traits) -> list[str]:
        # Both namespaces read the same dict until SSO brings external traits; the
        # parser has already refused internal names outside INTERNAL_TRAITS.
        return list(traits.get(self.name, ()))


@dataclass(frozen=True)
class _EmailLocal(_Expression):
    argument: _Expression

    def evaluate(self, traits: Traits) -> list[str]:
        result = []
        for value in self.argument.evaluate(traits):
            # parseaddr also accepts "Alice <alice@example.com>".
            address = parseaddr(value)[1]
            local, at, domain = address.rpartition("@")
            if at and local and domain:
                result.append(local)
        return result


# A parsed Go replacement template: literal text, a group number, or a group name.
_ReplacementPart = str | int | tuple[str]


@dataclass(frozen=True)
class _RegexpReplace(_Expression):
    argument: _Expression
    pattern: re.Pattern[str]
    replacement: tuple[_ReplacementPart, ...]

    def evaluate(self, traits: Traits) -> list[str]:
        result = []
        for value in self.argument.evaluate(traits):
            if self.pattern.search(value) is None:
                continue
            result.append(self.pattern.sub(self._substitute, value))
        return result

    def _substitute(self, match: re.Match[str]) -> str:
        out = []
        for part in self.replacement:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, int):
                # Like Go: a group that does not exist or did not take part is empty.
                if part <= match.re.groups:
                    out.append(match.group(part) or "")
            else:
                out.append(match.groupdict().get(part[0]) or "")
        return "".join(out)


@dataclass(frozen=True)
class Template:
    """A parsed role value: `prefix`, then an optional expression, then `suffix`."""

    prefix: str
    expression: _Expression | None = None
    suffix: str = ""

    @property
    def is_literal(self) -> bool:
        return self.expression is None

    def values(self, traits: Traits) -> list[str]:
        """What the expression yields (without prefix and suffix), empty values dropped."""
        if self.expression is None:
            return []
        return _unique(v for v in self.expression.evaluate(traits) if v)

    def expand(self, traits: Traits, quote: Callable[[str], str] | None = None) -> list[str]:
        """The value for each trait value; `quote` is applied to the substituted part only.

        A literal expands to itself. Empty trait values are ignored: `{{internal.x}}`
        must never produce an empty login or group.
        """
        if self.expression is None:
            return [self.prefix]
        if quote is None:
            return [self.prefix + v + self.suffix for v in self.values(traits)]
        return [self.prefix + quote(v) + self.suffix for v in self.values(traits)]


def expand(value: str, traits: Traits, *, quote: Callable[[str], str] | None = None) -> list[str]:
    """Expand one role value against a user's traits (raises BadParameter if malformed)."""
    return parse_template(value).expand(traits, quote)


def expand_all(values: Iterable[str], traits: Traits) -> list[str]:
    """Expand every value, keeping first-seen order and dropping duplicates."""
    return _unique(item for value in values for item in expand(value, traits))


def validate_template(value: str) -> None:
    """Refuse a malformed role value with a one-line BadParameter; for role validation."""
    parse_template(value)


@functools.lru_cache(maxsize=4096)
def parse_template(value: str) -> Template:
    """Parse a role value; cached because the same few role values are evaluated often."""
    if not is_template(value):
        return Template(value)
    start = value.find("{{")
    end = value.find("}}", start + 2) if start >= 0 else -1
    if start < 0 or end < 0 or "}}" in value[:start]:
        raise _invalid(value, "unbalanced braces")
    inner, suffix = value[start + 2 : end], value[end + 2 :]
    if "{{" in inner:
        raise _invalid(value, "unbalanced braces")
    if "{{" in suffix:
        raise _invalid(value, "only one {{...}} expression is allowed in a value")
    if "}}" in suffix:
        raise _invalid(value, "unbalanced braces")
    parser = _Parser(value, inner)
    expression = parser.expression()
    parser.end()
    return Template(value[:start], expression, suffix)


def _invalid(value: str, reason: str) -> BadParameter:
    return BadParameter(f"invalid template {json.dumps(value)}: {reason}")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<punct>[.()\[\],])
    )""",
    re.VERBOSE | re.DOTALL,
)

_USAGE = "use internal.NAME, external.NAME, email.local(...) or regexp.replace(...)"


class _Parser:
    """A small recursive-descent parser for the text between `{{` and `}}`."""

    def __init__(self, value: str, text: str) -> None:
        self._value = value
        self._tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None:
                bad = text[pos:].lstrip()[:1]
                raise self._error(f"unexpected {json.dumps(bad)}")
            kind = match.lastgroup
            assert kind is not None
            self._tokens.append((kind, match.group(kind)))
            pos = match.end()
        self._pos = 0

    def _error(self, reason: str) -> BadParameter:
        return _invalid(self._value, reason)

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _take(self, kind: str, text: str | None = None) -> str:
        token = self._peek()
        if token is None or token[0] != kind or (text is not None and token[1] != text):
            want = json.dumps(text) if text is not None else f"a {kind}"
            got = "the end" if token is None else json.dumps(token[1])
            raise self._error(f"expected {want}, found {got}")
        self._pos += 1
        return token[1]

    def end(self) -> None:
        token = self._peek()
        if token is not None:
            raise self._error(f"unexpected {json.dumps(token[1])} after the expression")

    def expression(self) -> _Expression:
        if self._peek() is None:
            raise self._error(f"empty expression ({_USAGE})")
        namespace = self._take("ident")
        if namespace in ("internal", "external"):
            return self._trait(namespace)
        if namespace in ("email", "regexp"):
            self._take("punct", ".")
            function = f"{namespace}.{self._take('ident')}"
            if function == "email.local":
                return self._email_local()
            if function == "regexp.replace":
                return self._regexp_replace()
            raise self._error(f"unknown function {json.dumps(function)} ({_USAGE})")
        raise self._error(f"unknown namespace {json.dumps(namespace)} ({_USAGE})")

    def _trait(self, namespace: str) -> _Trait:
        token = self._peek()
        if token == ("punct", "."):
            self._pos += 1
            name = self._take("ident")
        elif token == ("punct", "["):
            self._pos += 1
            name = self._string()
            self._take("punct", "]")
        else:
            raise self._error(f'expected {namespace}.NAME or {namespace}["NAME"]')
        if not name:
            raise self._error("empty trait name")
        if namespace == "internal" and name not in INTERNAL_TRAITS:
            known = ", ".join(INTERNAL_TRAITS)
            raise self._error(f'unknown internal trait "{name}" (known: {known})')
        return _Trait(namespace, name)

    def _email_local(self) -> _EmailLocal:
        self._take("punct", "(")
        argument = self.expression()
        self._take("punct", ")")
        return _EmailLocal(argument)

    def _regexp_replace(self) -> _RegexpReplace:
        self._take("punct", "(")
        argument = self.expression()
        self._take("punct", ",")
        pattern_text = self._string()
        self._take("punct", ",")
        replacement = self._string()
        self._take("punct", ")")
        try:
            pattern = re.compile(pattern_text)
        except re.error as exc:
            raise self._error(f"bad regular expression {json.dumps(pattern_text)}: {exc}") from exc
        return _RegexpReplace(argument, pattern, _parse_replacement(replacement))

    def _string(self) -> str:
        raw = self._take("string")
        if raw.startswith("`"):
            return raw[1:-1]
        # `\"` and `\\` are escapes; any other backslash is kept, so a regex written
        # as "\d+" works as well as the Go spelling "\\d+".
        return re.sub(r"\\([\\\"])", r"\1", raw[1:-1])


_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+")


def _parse_replacement(text: str) -> tuple[_ReplacementPart, ...]:
    """Parse a Go `regexp.Expand` template: `$1`, `${1}`, `$name`, `${name}`, `$$`."""
    parts: list[_ReplacementPart] = []
    literal: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char != "$":
            literal.append(char)
            pos += 1
            continue
        if text.startswith("$$", pos):
            literal.append("$")
            pos += 2
            continue
        if text.startswith("${", pos):
            close = text.find("}", pos)
            name = text[pos + 2 : close] if close >= 0 else ""
            end = close + 1
        else:
            match = _GROUP_NAME.match(text, pos + 1)
            name = match.group() if match else ""
            end = match.end() if match else pos + 1
        if not _GROUP_NAME.fullmatch(name):
            # Go copies a `$` that starts no valid reference as it is.
            literal.append("$")
            pos += 1
            continue
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(int(name) if name.isdigit() else (name,))
        pos = end
    if literal:
        parts.append("".join(literal))
    return tuple(parts)
