"""The roles every cluster starts with: `access`, `editor`, `auditor`, `access-plugin`.

Bootstrap creates them when absent and never overwrites them, so operators may edit
or delete them like any other role.
"""

from __future__ import annotations

from datetime import timedelta

from certgate.api.meta import Metadata
from certgate.api.role import JoinPolicy, Role, RoleConditions, RoleOptions, RoleSpec, Rule

ACCESS = "access"
EDITOR = "editor"
AUDITOR = "auditor"
ACCESS_PLUGIN = "access-plugin"


def access_role() -> Role:
    """SSH and Kubernetes access everywhere, as the logins and groups set on the user."""
    return Role(
        metadata=Metadata(
            name=ACCESS,
            description="ssh and kubernetes access with the logins and groups set on the user",
        ),
        spec=RoleSpec(
            allow=RoleConditions(
                logins=["{{internal.logins}}"],
                node_labels={"*": "*"},
                kubernetes_groups=["{{internal.kubernetes_groups}}"],
                kubernetes_users=["{{internal.kubernetes_users}}"],
                kubernetes_labels={"*": "*"},
                # Listing and replaying one's own sessions is granted elsewhere, so no
                # rules here: this role gives no API access to cluster resources.
            ),
            options=RoleOptions(port_forwarding=True),
        ),
    )


def editor_role() -> Role:
    """Every verb on every resource: manages users, roles, tokens and the rest."""
    return Role(
        metadata=Metadata(
            name=EDITOR,
            description="edit cluster configuration: users, roles, tokens, locks and more",
        ),
        spec=RoleSpec(allow=RoleConditions(rules=[Rule(resources=["*"], verbs=["*"])])),
    )


def auditor_role() -> Role:
    """Read-only access to session recordings and the audit log; watching live sessions."""
    return Role(
        metadata=Metadata(
            name=AUDITOR,
            description="read session recordings and the audit log, watch live sessions",
        ),
        spec=RoleSpec(
            allow=RoleConditions(
                rules=[
                    Rule(resources=["session", "event"], verbs=["list", "read"]),
                    Rule(resources=["access"], verbs=["list"]),  # cgctl access ls
                ],
                # Observers only: an auditor sees, never types.
                join_sessions=[JoinPolicy(roles=["*"], kinds=["*"], modes=["observer"])],
            )
        ),
    )


def access_plugin_role() -> Role:
    """What a notification plugin needs: follow access requests, and nothing else."""
    return Role(
        metadata=Metadata(
            name=ACCESS_PLUGIN,
            description="read and watch access requests (slack, mattermost, webhook plugins)",
        ),
        spec=RoleSpec(
            allow=RoleConditions(
                rules=[Rule(resources=["access_request"], verbs=["list", "read"])]
            ),
            # A plugin runs unattended on an identity from `cgctl auth sign --user`;
            # it can read requests only, so it may live a month between renewals.
            options=RoleOptions(max_session_ttl=timedelta(days=30), port_forwarding=False),
        ),
    )


def preset_roles() -> list[Role]:
    """Fresh copies of the preset roles, in a stable order."""
    return [access_role(), editor_role(), auditor_role(), access_plugin_role()]
