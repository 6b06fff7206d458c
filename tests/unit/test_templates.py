"""Role templates: expansion against traits, and refusal of malformed values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certgate.access.templates import (
    expand,
    expand_all,
    is_template,
    is_valid_login,
    parse_template,
    validate_template,
)
from certgate.errors import BadParameter

TRAITS = {
    "logins": ["alice", "admin-bob", "admin-carol"],
    "kubernetes_groups": ["viewers"],
    "email": ["alice@example.com"],
    "empty": [],
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ubuntu", ["ubuntu"]),
        ("{{internal.logins}}", ["alice", "admin-bob", "admin-carol"]),
        ('{{internal["logins"]}}', ["alice", "admin-bob", "admin-carol"]),
        ("{{ internal.logins }}", ["alice", "admin-bob", "admin-carol"]),
        ("{{external.logins}}", ["alice", "admin-bob", "admin-carol"]),
        ('{{external["email"]}}', ["alice@example.com"]),
        ("{{internal.kubernetes_users}}", []),
        ("{{external.empty}}", []),
        ("{{external.missing}}", []),
        ("dev-{{internal.logins}}-x", ["dev-alice-x", "dev-admin-bob-x", "dev-admin-carol-x"]),
        ("{{email.local(external.email)}}", ["alice"]),
        ('{{regexp.replace(internal.logins, "^admin-(.*)$", "$1")}}', ["bob", "carol"]),
        ('{{regexp.replace(internal.logins, "^admin-(.*)$", "u-${1}")}}', ["u-bob", "u-carol"]),
        ('{{regexp.replace(internal.logins, "^admin-(?P<who>.*)$", "$who")}}', ["bob", "carol"]),
        ('{{regexp.replace(internal.logins, "^admin-(.*)$", "$$1")}}', ["$1"]),  # deduplicated
        ('{{regexp.replace(internal.logins, "^admin-(.*)$", "$9")}}', []),
        ('{{regexp.replace(internal.logins, "a", "A")}}', ["Alice", "Admin-bob", "Admin-cArol"]),
        ('{{email.local(regexp.replace(external.email, "example", "x"))}}', ["alice"]),
    ],
)
def test_expand(value: str, expected: list[str]) -> None:
    assert expand(value, TRAITS) == expected


def test_email_local_accepts_display_names_and_drops_non_addresses() -> None:
    traits = {"email": ["Bob <bob@example.com>", "not-an-address", "@example.com", "c@d"]}
    assert expand("{{email.local(external.email)}}", traits) == ["bob", "c"]


def test_empty_and_duplicate_values_are_dropped() -> None:
    assert expand("{{external.x}}", {"x": ["a", "", "a", "b"]}) == ["a", "b"]


def test_quote_applies_to_substituted_part_only() -> None:
    assert expand("^{{external.x}}$", {"x": ["a.b"]}, quote=lambda v: v.upper()) == ["^A.B$"]


def test_expand_all_deduplicates_across_values() -> None:
    assert expand_all(["alice", "{{internal.logins}}", "root"], TRAITS) == [
        "alice",
        "admin-bob",
        "admin-carol",
        "root",
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{{internal.logins}", "unbalanced braces"),
        ("internal.logins}}", "unbalanced braces"),
        ("{{{{internal.logins}}", "unbalanced braces"),
        ("a}}{{internal.logins}}", "unbalanced braces"),
        ("{{internal.logins}}}}", "unbalanced braces"),
        ("{{internal.logins}}-{{internal.logins}}", "only one"),
        ("{{}}", "empty expression"),
        ("{{logins}}", "unknown namespace"),
        ("{{foo.bar}}", 'unknown namespace "foo"'),
        ("{{email.upper(external.email)}}", 'unknown function "email.upper"'),
        ("{{regexp.match(external.email)}}", 'unknown function "regexp.match"'),
        ("{{internal.email}}", 'unknown internal trait "email"'),
        ("{{internal}}", "expected internal.NAME"),
        ('{{external[""]}}', "empty trait name"),
        ("{{external.logins extra}}", 'unexpected "extra"'),
        ("{{external.logins;}}", 'unexpected ";"'),
        ("{{email.local(external.email}}", 'expected ")"'),
        ('{{regexp.replace(internal.logins, "(", "")}}', "bad regular expression"),
        ("{{regexp.replace(internal.logins, x, y)}}", "expected a string"),
    ],
)
def test_malformed_templates_are_refused(value: str, reason: str) -> None:
    with pytest.raises(BadParameter) as info:
        validate_template(value)
    message = str(info.value)
    assert message.startswith("invalid template ")
    assert reason in message
    assert "\n" not in message
    with pytest.raises(BadParameter):
        expand(value, TRAITS)


def test_validate_accepts_literals_and_good_templates() -> None:
    for value in ["ubuntu", "a{b}c", "{{internal.logins}}", "{{external.x}}-y"]:
        validate_template(value)


def test_single_braces_are_literal_text() -> None:
    assert not is_template("a{b}c")
    assert expand("a{b}c", {}) == ["a{b}c"]


def test_string_escapes() -> None:
    traits = {"x": ['say "hi" 42']}
    assert expand(r'{{regexp.replace(external.x, "\"(\w+)\"", "<$1>")}}', traits) == ["say <hi> 42"]
    assert expand(r'{{regexp.replace(external.x, "\\d+", "N")}}', traits) == ['say "hi" N']
    assert expand(r"{{regexp.replace(external.x, `\d+`, `N`)}}", traits) == ['say "hi" N']


def test_parse_exposes_parts() -> None:
    template = parse_template("pre-{{internal.logins}}-post")
    assert (template.prefix, template.suffix, template.is_literal) == ("pre-", "-post", False)
    assert template.values({"logins": ["a"]}) == ["a"]
    assert parse_template("plain").is_literal


@pytest.mark.parametrize("name", ["root", "ubuntu", "_svc", "a.b-c_d", "A" * 32])
def test_valid_logins(name: str) -> None:
    assert is_valid_login(name)


@pytest.mark.parametrize(
    "name", ["", "-rf", "1abc", "a b", "a;b", "$(id)", "a\nb", "a/b", "a@b", "A" * 33, "é"]
)
def test_invalid_logins(name: str) -> None:
    assert not is_valid_login(name)


# Properties

_literal = st.text().filter(lambda s: "{{" not in s and "}}" not in s)
_trait_values = st.lists(st.text(min_size=1), max_size=5)


@given(_literal)
def test_literal_expands_to_itself(value: str) -> None:
    assert expand(value, {"logins": ["x"]}) == [value]


@given(_trait_values)
def test_internal_trait_expands_to_exactly_its_values(values: list[str]) -> None:
    assert expand("{{internal.logins}}", {"logins": values}) == list(dict.fromkeys(values))


@given(_trait_values, _literal, _literal)
def test_prefix_and_suffix_wrap_every_value(values: list[str], prefix: str, suffix: str) -> None:
    # A "{" at the end of the prefix or "}" at the start of the suffix would merge
    # with the braces into a different template.
    prefix = prefix.rstrip("{")
    suffix = suffix.lstrip("}")
    result = expand(f"{prefix}{{{{external.x}}}}{suffix}", {"x": values})
    assert result == [prefix + v + suffix for v in dict.fromkeys(values)]


@given(st.text())
def test_parsing_never_fails_with_anything_but_bad_parameter(value: str) -> None:
    try:
        expand(value, TRAITS)
    except BadParameter as exc:
        assert "\n" not in str(exc)
