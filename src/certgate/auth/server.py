"""The auth service's behaviour, put together from one module per resource:

    core.py          stores, CAs, lock cache, roles, logins and certificates
    users_admin.py   users and invites
    joining.py       join tokens and service identities
    inventory.py     node heartbeats and what users see of nodes
    resources.py     resources by kind (cgctl get/create/rm)

Callers are already authorized (see permissions.py); this layer trusts its inputs and
records what it does in the audit log.
"""

from __future__ import annotations

from certgate.auth.core import MAX_USER_TTL
from certgate.auth.inventory import Inventory
from certgate.auth.joining import JOIN_ROLE_TO_SYSTEM, JoinAdmin
from certgate.auth.resources import ResourceAdmin
from certgate.auth.users_admin import INVITE_TTL, InviteInfo

__all__ = ["INVITE_TTL", "JOIN_ROLE_TO_SYSTEM", "MAX_USER_TTL", "AuthServer", "InviteInfo"]


class AuthServer(ResourceAdmin, JoinAdmin, Inventory):
    """The auth service: every part above, on one set of stores."""
