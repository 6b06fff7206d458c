"""A plugin's configuration file (YAML); docs/plugins.md shows one per plugin.

proxy: proxy.example.com:3080          # the certgate proxy (public address)
identity: /var/lib/certgate-plugin/id  # written by `cgctl auth sign --user=... --out=`
state_file: /var/lib/certgate-plugin/state.json
role_to_recipients: {"*": ["#access-requests"], kube-admin: ["#sre"]}
slack: {token: xoxb-..., api_url: https://slack.com/api}
mattermost: {url: https://chat.example.com, token: ...}
webhook: {url: https://hooks.example.com/certgate, secret: ...}
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from certgate.api.codec import describe_validation_error, yaml_problem
from certgate.api.names import name_problem
from certgate.errors import BadParameter


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlackConfig(_Section):
    token: str = Field(min_length=1)
    api_url: str = "https://slack.com/api"


class MattermostConfig(_Section):
    url: str = Field(min_length=1)
    token: str = Field(min_length=1)


class WebhookConfig(_Section):
    url: str = Field(min_length=1)
    secret: str = Field(min_length=16)


class PluginConfig(_Section):
    proxy: str = Field(min_length=1)
    identity: Path
    state_file: Path
    # Skip verifying the proxy's TLS certificate (a test cluster's self-signed one).
    insecure: bool = False
    # Links in messages point here (default: https://<proxy>).
    web_url: str = ""
    # Who gets each request: a role's list, else "*". Chat recipients are channels
    # (Slack: #name or id; Mattermost: team/channel) or email addresses (direct messages).
    role_to_recipients: dict[str, list[str]] = Field(default_factory=dict)
    # How a certgate user name becomes an email for direct messages: this map first,
    # then NAME@email_domain; a requester's own name is also taken as it is if it is an
    # address (a suggested reviewer's never is: the requester typed it).
    emails: dict[str, str] = Field(default_factory=dict)
    email_domain: str = ""
    slack: SlackConfig | None = None
    mattermost: MattermostConfig | None = None
    webhook: WebhookConfig | None = None

    @field_validator("role_to_recipients")
    @classmethod
    def _recipient_lists(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if value and "*" not in value:
            raise ValueError('needs a "*" entry: the recipients of requests no other entry names')
        return value

    @property
    def link_base(self) -> str:
        return (self.web_url or f"https://{self.proxy}").rstrip("/")

    def email_for(self, user: str) -> str | None:
        """The email address of a requester (the user a request is from), or None."""
        if user not in self.emails and "@" in user:
            return user  # auth named the requester, and an admin named the user
        return self.reviewer_email(user)

    def reviewer_email(self, name: str) -> str | None:
        """The email address of a suggested reviewer, or None. Only through this config:
        the name is the requester's words, so it is never taken as an address itself
        (auth refuses names of no certgate user, but a request stored before that rule,
        or one from an auth without it, may still hold one)."""
        if name in self.emails:
            return self.emails[name]
        if self.email_domain and name_problem(name) is None and "@" not in name:
            return f"{name}@{self.email_domain}"
        return None

    def recipients_for(self, roles: tuple[str, ...], reviewers: tuple[str, ...] = ()) -> list[str]:
        """Each requested role's recipients (a role not listed: "*"'s), in order, once;
        then each suggested reviewer's email, or "user:NAME" when none is known (a
        recipient that is refused, so the log says whom nobody could reach)."""
        fallback = self.role_to_recipients.get("*", [])
        found: list[str] = []
        for role in roles:
            found.extend(self.role_to_recipients.get(role, fallback))
        if not roles:  # a request for resources only
            found.extend(fallback)
        for reviewer in reviewers:
            found.append(self.reviewer_email(reviewer) or f"user:{reviewer}")
        return list(dict.fromkeys(found))


def load_plugin_config(path: Path, plugin: str) -> PluginConfig:
    """The config at `path`, checked to have the section `plugin` needs."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BadParameter(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise BadParameter(f"{path} is not valid YAML{yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise BadParameter(f"{path} must be a YAML mapping")
    try:
        config = PluginConfig.model_validate(data)
    except ValidationError as exc:
        raise BadParameter(describe_validation_error("plugin config", str(path), exc)) from exc
    if getattr(config, plugin, None) is None:
        raise BadParameter(f'{path} has no "{plugin}" section')
    if plugin in ("slack", "mattermost") and "*" not in config.role_to_recipients:
        raise BadParameter(f'{path}: role_to_recipients needs a "*" entry for the {plugin} plugin')
    return config
