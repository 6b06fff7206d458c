"""The role resource: what a set of users may do, and with which options."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator

from certgate.api.duration import Duration
from certgate.api.meta import Metadata, Model

# Resources and verbs a role's `rules` may name ("*" is every one).
RESOURCES = (
    "user",
    "role",
    "token",
    "lock",
    "node",
    "cert_authority",
    "session",
    "event",
    "access_request",
    "kube_cluster",
    "access",  # who has access to what (cgctl access ls, GET /v1/access)
)
VERBS = ("list", "read", "create", "update", "delete")

LabelValues = str | list[str]


class Rule(Model):
    resources: list[str]
    verbs: list[str]

    @field_validator("resources")
    @classmethod
    def _known_resources(cls, value: list[str]) -> list[str]:
        for name in value:
            if name != "*" and name not in RESOURCES:
                raise ValueError(f'unknown resource "{name}"')
        return value

    @field_validator("verbs")
    @classmethod
    def _known_verbs(cls, value: list[str]) -> list[str]:
        for name in value:
            if name != "*" and name not in VERBS:
                raise ValueError(f'unknown verb "{name}"')
        return value


class Threshold(Model):
    approve: int = Field(default=1, ge=1)
    deny: int = Field(default=1, ge=1)


class RequestConditions(Model):
    """What users holding the role may request (allow) or never request (deny).

    `roles` are requested whole; `search_as_roles` let the user search for resources and
    request single ones (`cgsh request create --resource=node/NAME`), granted with those
    roles but limited to the resources named. Names may be templates (allow) or globs
    and `^regex$` (deny)."""

    roles: list[str] = Field(default_factory=list)
    search_as_roles: list[str] = Field(default_factory=list)
    thresholds: list[Threshold] = Field(default_factory=list)
    max_duration: Duration | None = None
    suggested_reviewers: list[str] = Field(default_factory=list)

    @field_validator("max_duration")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


class ReviewConditions(Model):
    roles: list[str] = Field(default_factory=list)


class JoinPolicy(Model):
    roles: list[str] = Field(default_factory=lambda: ["*"])
    kinds: list[Literal["ssh", "k8s", "*"]] = ["*"]  # noqa: RUF012 (pydantic copies defaults)
    modes: list[Literal["observer", "peer", "moderator"]] = ["observer"]  # noqa: RUF012


class KubeResource(Model):
    """What a role lets a user touch in a cluster: `kind` (pod, namespace, deployment,
    ... or "*"), `namespace` and `name` (globs, "*" any) and `verbs` (get, list, watch,
    create, update, patch, delete, exec, portforward, ... or "*")."""

    kind: str = "*"
    namespace: str = "*"
    name: str = "*"
    verbs: list[str] = Field(default_factory=lambda: ["*"])


class RoleConditions(Model):
    logins: list[str] = Field(default_factory=list)
    node_labels: dict[str, LabelValues] = Field(default_factory=dict)
    kubernetes_groups: list[str] = Field(default_factory=list)
    kubernetes_users: list[str] = Field(default_factory=list)
    kubernetes_labels: dict[str, LabelValues] = Field(default_factory=dict)
    # Empty in allow: every resource (the cluster's own RBAC still applies).
    kubernetes_resources: list[KubeResource] = Field(default_factory=list)
    request: RequestConditions | None = None
    review_requests: ReviewConditions | None = None
    rules: list[Rule] = Field(default_factory=list)
    join_sessions: list[JoinPolicy] = Field(default_factory=list)


RecordingMode = Literal["off", "best_effort", "strict"]


# The kinds of session role options distinguish: SSH (node sessions, agentless relays
# and the web terminal, which is an SSH session) and Kubernetes exec/attach.
SessionKind = Literal["ssh", "k8s"]


class RecordSession(Model):
    """Recording mode per kind of session: `{ssh: strict, k8s: best_effort}`."""

    ssh: RecordingMode = "best_effort"
    k8s: RecordingMode = "best_effort"

    def mode(self, kind: str) -> RecordingMode:
        """The mode for a session kind; the web terminal's sessions are SSH sessions."""
        return self.k8s if kind == "k8s" else self.ssh


class RoleOptions(Model):
    max_session_ttl: Duration = timedelta(hours=8)
    forward_agent: bool = False
    port_forwarding: bool = True
    record_session: RecordSession = Field(default_factory=RecordSession)
    locking_mode: Literal["best_effort", "strict"] = "best_effort"
    require_session_mfa: bool = False
    client_idle_timeout: Duration | None = None
    # End a live session when the certificate it began with expires.
    disconnect_expired_cert: bool = False
    # `ssh -R`: listen on the address the client asks for (like sshd's GatewayPorts
    # clientspecified). Unset or false: remote forwards listen on loopback only
    # (GatewayPorts no). None means "this role does not say" (see RoleSet.options).
    ssh_remote_bind_any: bool | None = None
    # optional: requests are an extra; reason: a request must say why; always: `cgsh
    # login` asks for the requestable roles at once (the user works only under a grant).
    request_access: Literal["optional", "reason", "always"] = "optional"
    request_prompt: str = ""  # shown to users asked for a reason

    @field_validator("record_session", mode="before")
    @classmethod
    def _record_bool(cls, value: Any) -> Any:
        # `record_session: true|false` is shorthand for every kind of session.
        if isinstance(value, bool):
            mode = "best_effort" if value else "off"
            return {"ssh": mode, "k8s": mode}
        return value

    @field_validator("client_idle_timeout")
    @classmethod
    def _positive_idle(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @field_validator("max_session_ttl")
    @classmethod
    def _positive_ttl(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


class RoleSpec(Model):
    allow: RoleConditions = Field(default_factory=RoleConditions)
    deny: RoleConditions = Field(default_factory=RoleConditions)
    options: RoleOptions = Field(default_factory=RoleOptions)


class Role(Model):
    kind: Literal["role"] = "role"
    version: Literal["v1"] = "v1"
    metadata: Metadata
    spec: RoleSpec = Field(default_factory=RoleSpec)

    @property
    def name(self) -> str:
        return self.metadata.name
