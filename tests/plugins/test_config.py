"""The plugin config file: what is required, recipients per role, emails for DMs."""

from __future__ import annotations

from pathlib import Path

import pytest

from certgate.errors import BadParameter
from certgate.plugins.config import load_plugin_config
from tests.plugins.conftest import config

BASE = "proxy: p.example.com:3080\nidentity: /id\nstate_file: /s.json\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plugin.yaml"
    path.write_text(BASE + text)
    return path


def test_each_plugin_needs_its_section_and_chats_need_a_star(tmp_path: Path) -> None:
    hook = write(tmp_path, "webhook: {url: 'https://h.example.com/x', secret: 0123456789abcdef}\n")
    assert load_plugin_config(hook, "webhook").webhook is not None
    with pytest.raises(BadParameter, match='no "slack" section'):
        load_plugin_config(hook, "slack")
    chat = write(tmp_path, "slack: {token: xoxb-1}\n")
    with pytest.raises(BadParameter, match='needs a "\\*" entry'):
        load_plugin_config(chat, "slack")
    no_star = write(tmp_path, "role_to_recipients: {dev: ['#dev']}\nslack: {token: xoxb-1}\n")
    with pytest.raises(BadParameter, match="role_to_recipients"):
        load_plugin_config(no_star, "slack")
    typo = write(tmp_path, "slak: {token: xoxb-1}\n")
    with pytest.raises(BadParameter, match="slak: unknown field"):
        load_plugin_config(typo, "slack")


def test_recipients_per_role_with_star_as_the_default(tmp_path: Path) -> None:
    c = config(tmp_path, role_to_recipients={"*": ["#all"], "dba": ["#db", "#all"], "x": []})
    assert c.recipients_for(("dba",)) == ["#db", "#all"]
    assert c.recipients_for(("web",)) == ["#all"]
    assert c.recipients_for(("dba", "web")) == ["#db", "#all"]
    assert c.recipients_for(()) == ["#all"]
    assert c.recipients_for(("x",)) == []  # listed with nobody: nobody


def test_emails_for_direct_messages(tmp_path: Path) -> None:
    c = config(tmp_path, emails={"alice": "a.smith@corp.example"}, email_domain="example.com")
    assert c.email_for("alice") == "a.smith@corp.example"
    assert c.email_for("bob@other.example") == "bob@other.example"
    assert c.email_for("carol") == "carol@example.com"
    assert config(tmp_path, email_domain="").email_for("carol") is None
    # A suggested reviewer is the requester's word: an address only through this config.
    assert c.reviewer_email("alice") == "a.smith@corp.example"
    assert c.reviewer_email("carol") == "carol@example.com"
    assert c.reviewer_email("bob@other.example") is None
    assert c.reviewer_email("<!channel>") is None
    assert c.recipients_for(("web",), ("bob@other.example", "carol")) == [
        "#access-requests",
        "user:bob@other.example",
        "carol@example.com",
    ]
    assert c.link_base == "https://proxy.example.com:3080"
    assert config(tmp_path, web_url="https://web.example.com/").link_base == (
        "https://web.example.com"
    )


def test_broken_yaml_is_one_line_saying_where(tmp_path: Path) -> None:
    broken = write(tmp_path, "slack: {token: xoxb-1\n")
    with pytest.raises(BadParameter) as refused:
        load_plugin_config(broken, "slack")
    assert "\n" not in refused.value.message  # before, PyYAML's four lines, input quoted
    assert refused.value.message.startswith(f"{broken} is not valid YAML at line 5, column 1:")
