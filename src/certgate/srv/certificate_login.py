"""What every SSH server users log in to with their certgate certificate does alike: the
node's (node/sshd.py) and the proxy's for agentless nodes (proxy/agentless_user.py).

authenticate  certificates from the user CA only, never a plain key; the CA keys are read
              at each login, so a rotated CA applies from the next one. Whether the login
              is one of the certificate's principals is the subclass's check, so that a
              refusal is audited (asyncssh alone would refuse silently)
admit         the subclass makes the user a LiveClient in its registry; it leaves the
              registry with its connection
refuse        one log line and a `session.rejected` event, whatever the reason
join          a "join:<mode>:<session id>" login joins that live session of the registry,
              or is refused like any other login
forward       -L and -R only if the roles allow port forwarding; each request audited
              (`port_forward`, allowed or not); -R binds loopback unless the roles allow
              any address
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from certgate.api.identity import Identity
from certgate.srv.forwarding import loopback_bind
from certgate.srv.join import JoinChannel, SessionParty, join_refusal
from certgate.srv.live import LiveClient
from certgate.srv.registry import SessionRegistry
from certgate.srv.session import SessionPolicy
from certgate.srv.user_cas import NO_KEYS, UserCAKeys


class CertificateLogin(asyncssh.SSHServer):
    """One user's connection to a server that admits users by their certificate."""

    def __init__(self, registry: SessionRegistry, log: logging.Logger) -> None:
        self._registry = registry
        self._log = log
        self._conn: Any = None
        self._trusted: UserCAKeys = NO_KEYS
        self.client_addr = ""
        self.client: LiveClient | None = None
        # Set for a join login: (mode, session id); such a connection only joins.
        self.join: tuple[str, str] | None = None

    # ---- what a server says of itself ------------------------------------------------

    def user_cas(self) -> UserCAKeys:
        """The user CA keys this server trusts now."""
        raise NotImplementedError

    def audit(self, event: str, fields: dict[str, Any]) -> None:
        raise NotImplementedError

    def describe_target(self) -> str:
        """Words for log lines naming what the user logs in to ("" for the server itself)."""
        return ""

    # ---- who is logged in ------------------------------------------------------------

    @property
    def identity(self) -> Identity | None:
        return self.client.identity if self.client is not None else None

    @property
    def login(self) -> str:
        return self.client.login if self.client is not None else ""

    @property
    def policy(self) -> SessionPolicy:
        return self.client.policy if self.client is not None else SessionPolicy()

    # ---- asyncssh callbacks ----------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self._registry.remove_client(self.client)
            self.client.joins.clear()

    def begin_auth(self, username: str) -> bool:
        self._trusted = trusted = self.user_cas()
        if trusted.authorized_keys is not None:
            self._conn.set_authorized_keys(trusted.authorized_keys)
        return True  # every login authenticates

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: Any) -> bool:
        return False  # plain keys never: only certificates from the user CA

    def validate_ca_key(self, username: str, key: Any) -> bool:
        return bytes(key.public_data) in self._trusted.blobs

    # ---- refusals --------------------------------------------------------------------

    def refuse(self, identity: Identity | None, login: str, reason: str) -> None:
        user = identity.username if identity is not None else ""
        self._log.info(
            "refused %s as %s%s from %s: %s",
            user or "?", login, self.describe_target(), self.client_addr, reason,
        )  # fmt: skip
        self.audit(
            "session.rejected",
            {"user": user, "login": login, "reason": reason, "client_addr": self.client_addr},
        )

    # ---- joining a live session ------------------------------------------------------

    def accept_join(
        self,
        identity: Identity,
        login: str,
        mode: str,
        session_id: str,
        party: SessionParty | None,
        authorize: Callable[[], SessionPolicy],
    ) -> SessionPolicy | None:
        """A join login: the joiner's policy from `authorize()` (the joiner's roles for
        `mode`), or None if refused (and audited): the session must be live (`party`)
        and `authorize()` must not raise."""
        policy = SessionPolicy()

        def check() -> None:
            nonlocal policy
            policy = authorize()

        refusal = join_refusal(mode, session_id, party, check)
        if refusal is not None:
            self.refuse(identity, login, refusal)
            return None
        self.join = (mode, session_id)
        return policy

    def join_channel(self, client: LiveClient) -> JoinChannel:
        """The session channel of a join login; what the joiner sends keeps it from
        being idle."""
        assert self.join is not None
        mode, session_id = self.join
        registry = self._registry
        channel = JoinChannel(
            client.identity.username,
            mode,
            session_id,
            lambda: registry.party(session_id),
            on_input=client.touch,
        )
        client.joins.add(channel)
        return channel

    # ---- forwarding ------------------------------------------------------------------

    def check_local_forward(self, dest_host: str, dest_port: int) -> None:
        """-L to dest: audited; asyncssh.ChannelOpenError unless the roles allow it."""
        allowed = self.policy.port_forwarding
        self._audit_forward("local", f"{dest_host}:{dest_port}", allowed)
        if not allowed:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "port forwarding is not allowed by your roles",
            )
        if self.client is not None:
            self.client.touch()

    def remote_forward_bind(
        self, listen_host: str, listen_port: int, allowed: bool = True
    ) -> str | None:
        """-R: the address to listen on, or None if refused (`allowed`, the server's own
        veto, and the roles); audited either way."""
        policy = self.policy
        allowed = allowed and policy.port_forwarding
        bind = listen_host if policy.remote_bind_any else loopback_bind(listen_host)
        self._audit_forward("remote", f"{bind}:{listen_port}", allowed)
        return bind if allowed else None

    def _audit_forward(self, kind: str, addr: str, allowed: bool) -> None:
        self.audit(
            "port_forward",
            {
                "user": self.client.identity.username if self.client else "",
                "login": self.login,
                "client_addr": self.client_addr,
                "kind": kind,
                "addr": addr,
                "allowed": allowed,
            },
        )
