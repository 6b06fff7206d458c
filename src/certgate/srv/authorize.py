"""How a certificate login becomes a SessionPolicy: one order of checks, one set of
refusal messages, on a node and at the proxy for agentless nodes.

    check_login(authorizer, identity, login, client_addr)
      1 authorizer(identity, login, client_addr)   roles + deny + labels, locks,
                                                   require_session_mfa ─▶ SessionPolicy
      2 the login is a principal of the certificate
    (then the protocol's own checks: a node looks the Unix account up)

The roles come first: their refusal names the rule ("denied by role dev"), which says
more than the certificate lacking the login (it lacks it for that reason).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace

from certgate.access.cached_access import CachedAccess
from certgate.access.rbac import RoleSet
from certgate.api.identity import Identity
from certgate.errors import AccessDenied
from certgate.srv.session import Authorizer, SessionPolicy

log = logging.getLogger(__name__)

AUTHORIZE_TIMEOUT = 10.0


class LoginRefused(Exception):
    """The login is refused; `reason` is the one line audited (session.rejected)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def check_login(
    authorizer: Authorizer,
    identity: Identity,
    login: str,
    client_addr: str,
    timeout: float = AUTHORIZE_TIMEOUT,
) -> SessionPolicy:
    """The policy for `identity` as `login`, or LoginRefused saying why."""
    try:
        async with asyncio.timeout(timeout):
            policy = await authorizer(identity, login, client_addr)
    except AccessDenied as exc:
        raise LoginRefused(exc.message) from None
    except TimeoutError:
        raise LoginRefused("authorization timed out") from None
    except Exception:
        log.exception("authorizer failed for %s as %s", identity.username, login)
        raise LoginRefused("internal error while authorizing") from None
    if login not in identity.logins:
        raise LoginRefused(f'login "{login}" is not a principal of the certificate')
    return policy


def session_mfa_refusal(role_set: RoleSet) -> str | None:
    """Per-session MFA is not built yet: a role that requires it fails closed."""
    role = role_set.session_mfa_role()
    if role is None:
        return None
    return (
        f'access denied: role "{role}" requires per-session MFA, '
        "which this cluster does not support yet"
    )


def policy_for(role_set: RoleSet, identity: Identity) -> SessionPolicy:
    """What the roles let a session do beyond running, and when the monitor ends it."""
    options = role_set.options()
    idle = options.client_idle_timeout
    return SessionPolicy(
        port_forwarding=options.port_forwarding,
        forward_agent=options.forward_agent,
        remote_bind_any=bool(options.ssh_remote_bind_any),
        idle_timeout=idle.total_seconds() if idle is not None else None,
        expires=identity.expires if options.disconnect_expired_cert else None,
    )


def authorize_join(
    access: CachedAccess,
    joiner: Identity,
    owner: Identity,
    mode: str,
    node: str,
    kind: str = "ssh",
) -> SessionPolicy:
    """Whether `joiner` may join `owner`'s session in `mode` (AccessDenied if not), and
    the joiner's policy: its own roles' idle timeout and certificate expiry, so the
    monitor cuts a joiner as it cuts a user of its own session; nothing to forward, as
    a join login runs nothing of its own."""
    access.check_join(joiner, owner.username, owner.roles, mode, node, kind)
    policy = policy_for(access.role_set(joiner), joiner)
    return replace(policy, port_forwarding=False, forward_agent=False, remote_bind_any=False)


def access_authorizer(
    access: CachedAccess, node_name: str, node_labels: Mapping[str, str]
) -> Authorizer:
    """The Authorizer for logins on one node (a node's own, or an agentless one the
    proxy serves), deciding from the cached view of roles and locks."""
    labels = dict(node_labels)

    async def authorize(identity: Identity, login: str, client_addr: str) -> SessionPolicy:
        role_set = access.check_login(identity, node_name, labels, login)
        refusal = session_mfa_refusal(role_set)
        if refusal is not None:
            raise AccessDenied(refusal)
        return policy_for(role_set, identity)

    return authorize
