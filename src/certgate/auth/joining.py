"""Join tokens and service identities: how a host becomes a node, proxy or kube service.

A join token proves the host may join in a role; it does not let the host choose to be
someone else:

- the name must be free: held by no live identity of that role, nor an agentless node
  (services/host_names.py), nor by another role's host elsewhere (one machine's
  services share its name); `cgctl rm node/NAME` frees a node's name;
- principals (host certificate names, TLS subjectAltNames) are single host names or
  addresses — never patterns — and never another host's name;
- neither the name nor a principal may be another node's hostname or address, or the
  cluster's public host names (auth/host_name_rules.py);
- a token may be bound to one name (`--name`) and to a number of joins (`--uses`).

Every refusal is audited (`join.failure`).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from certgate.api.bundle import CertBundle
from certgate.api.host_names import MAX_HOST_PRINCIPALS, check_host_name, is_loopback
from certgate.api.identity import SYSTEM_ADMIN, SYSTEM_KUBE, SYSTEM_NODE, SYSTEM_PROXY
from certgate.api.meta import Metadata
from certgate.api.node import Node
from certgate.api.token import Token, TokenSpec
from certgate.auth.ca import ca_pin
from certgate.auth.core import check_token_text
from certgate.auth.host_name_rules import HostNameRules
from certgate.errors import AccessDenied, AlreadyExists, BadParameter, CompareFailed, NotFound
from certgate.services.host_names import HostName

JOIN_ROLE_TO_SYSTEM = {"node": SYSTEM_NODE, "proxy": SYSTEM_PROXY, "kube": SYSTEM_KUBE}
# Taking a use of a token is retried this often when other joins keep winning the race.
_USE_TRIES = 50


class JoinAdmin(HostNameRules):
    # join tokens and service identities ---------------------------------------------------

    async def add_token(
        self,
        roles: list[str],
        ttl: timedelta,
        by: str,
        uses: int | None = None,
        name: str = "",
    ) -> Token:
        if name:
            _check_join_name(name)
        if uses is not None and uses < 1:
            raise BadParameter("--uses must be at least 1")
        token = Token(
            metadata=Metadata(name=secrets.token_hex(16), expires=self.clock.now() + ttl),
            spec=TokenSpec(roles=roles, created_by=by, uses=uses, name=name),  # type: ignore[arg-type]
        )
        created = await self.tokens.create(token)
        await self.audit.emit(
            "token.create",
            user=by,
            roles=roles,
            expires=str(token.metadata.expires),
            uses=uses,
            name=name or None,
        )
        return created

    def ca_pin(self) -> str:
        return ca_pin(self.issuer.authorities["host_tls"])

    async def join(
        self,
        token_name: str,
        role: str,
        public_key: str,
        name: str,
        principals: list[str],
        client_addr: str,
    ) -> CertBundle:
        """A host proves it holds a join token and gets its service certificates."""
        try:
            system_role = JOIN_ROLE_TO_SYSTEM.get(role)
            if system_role is None:
                raise BadParameter(f'cannot join as "{role}": use node, proxy or kube')
            return await self._join(
                token_name, role, system_role, public_key, name, principals, client_addr
            )
        except (AccessDenied, BadParameter) as exc:
            await self.audit.emit(
                "join.failure", name=name, role=role, addr=client_addr, error=exc.message
            )
            exc.audited = True
            raise

    async def _join(
        self,
        token_name: str,
        role: str,
        system_role: str,
        public_key: str,
        name: str,
        principals: list[str],
        client_addr: str,
    ) -> CertBundle:
        token = await self._token(token_name)
        if role not in token.spec.roles:
            raise AccessDenied(f'access denied: this join token does not allow the role "{role}"')
        if token.spec.name and name != token.spec.name:
            raise AccessDenied(
                f'access denied: this join token is for "{token.spec.name}" only, not "{name}"'
            )
        _check_join_name(name)
        if await self.host_names.get(role, name) is not None:
            raise AccessDenied(await self._held_message(role, name))
        registered = await self._registered_node(name)
        if registered is not None and (role == "node" or registered.spec.sub_kind):
            # An agentless node registered before names were claimed for them, or a
            # node record an admin wrote: no join takes it over.
            if registered.spec.sub_kind == "openssh":
                raise AccessDenied(_agentless_message(name))
            raise AccessDenied(await self._held_message(role, name))
        await self._check_other_roles(role, name, client_addr)
        await self._check_principals(name, principals)
        await self.check_join_names(role, name, principals, client_addr)
        bundle = self.issue_service_identity(name, system_role, public_key, principals)
        identity = bundle.identity
        assert identity.issued is not None
        entry = HostName(
            role=role, name=name, issued=identity.issued, expires=identity.expires, addr=client_addr
        )
        try:
            await self.host_names.claim(entry)  # of two joins racing for it, one wins
        except AlreadyExists:
            raise AccessDenied(await self._held_message(role, name)) from None
        try:
            await self._take_use(token_name)
        except AccessDenied:
            await self.host_names.release(role, name)  # the name stays free
            raise
        await self.audit.emit("join", name=name, role=role, addr=client_addr)
        return bundle

    async def _token(self, token_name: str) -> Token:
        try:
            check_token_text(token_name)
            return await self.tokens.get(token_name)
        except (NotFound, BadParameter):
            raise AccessDenied(
                "access denied: the join token is unknown or expired: "
                "create a new one with 'cgctl tokens add'"
            ) from None

    async def _take_use(self, token_name: str) -> None:
        """One join off a token limited by `uses` (deleted when none are left)."""
        for _ in range(_USE_TRIES):
            token = await self._token(token_name)
            uses = token.spec.uses
            if uses is None:
                return
            try:
                if uses <= 1:
                    await self.tokens.delete(token_name)
                else:
                    spec = token.spec.model_copy(update={"uses": uses - 1})
                    await self.tokens.update(token.model_copy(update={"spec": spec}))
                return
            except (CompareFailed, NotFound):
                continue  # another join took a use meanwhile: read again
        raise AccessDenied("access denied: the join token is busy; try again")

    async def _check_other_roles(self, role: str, name: str, client_addr: str) -> None:
        """AccessDenied if a host elsewhere holds `name` in another role: every service
        certificate is a host certificate for its name, so a kube token must not get one
        for a node's name. One machine's services share its name (`--roles node,kube`),
        and join from its address."""
        for other in JOIN_ROLE_TO_SYSTEM:
            holder = None if other == role else await self.host_names.get(other, name)
            if holder is not None and (holder.agentless or holder.addr != client_addr):
                if holder.agentless:
                    raise AccessDenied(_agentless_message(name))
                raise AccessDenied(
                    f'access denied: the name "{name}" is held by a {other} that joined '
                    f"from {holder.addr or 'elsewhere'}; pick another name"
                )

    async def _registered_node(self, name: str) -> Node | None:
        try:
            return await self.nodes.get(name)
        except NotFound:
            return None

    async def _held_message(self, role: str, name: str) -> str:
        holder = await self.host_names.get(role, name)
        if holder is not None and holder.agentless:
            return _agentless_message(name)
        where = f" from {holder.addr}" if holder and holder.addr else ""
        free = f'"cgctl rm node/{name}"' if role == "node" else "its certificate to expire"
        return (
            f'access denied: the name "{name}" is held by another {role} (joined{where}); '
            f"pick another name, or free it with {free}"
        )

    async def _check_principals(self, name: str, principals: list[str]) -> None:
        """Names and addresses only, and none that is another host's name."""
        if len(principals) > MAX_HOST_PRINCIPALS:
            raise BadParameter(f"a host may have at most {MAX_HOST_PRINCIPALS} principals")
        suffix = f".{self.cluster_name}"
        for principal in principals:
            check_host_name(principal, "principal")
            base = principal[: -len(suffix)] if principal.endswith(suffix) else principal
            if base == name or is_loopback(principal):
                continue  # loopback names are every host's own (host_name_rules.py)
            # Any role: a proxy's certificate, too, must not be valid for a node's name.
            for other in JOIN_ROLE_TO_SYSTEM:
                if await self.host_names.get(other, base) is not None:
                    raise AccessDenied(
                        f'access denied: principal "{principal}" is the name of another {other}'
                    )

    def issue_service_identity(
        self, name: str, system_role: str, public_key: str, principals: list[str]
    ) -> CertBundle:
        # `<name>.<cluster>` too, so `ssh web-1.example.com` through the proxy verifies.
        names = list(dict.fromkeys([name, f"{name}.{self.cluster_name}", *principals]))
        return self.issuer.issue_service(name, system_role, public_key, names)

    async def hold_local_name(self, role: str, bundle: CertBundle) -> None:
        """An identity the auth host issued its own service takes the name, whoever held
        it: the auth host's services are the cluster's own."""
        identity = bundle.identity
        assert identity.issued is not None
        await self.host_names.replace(
            HostName(
                role=role,
                name=identity.username,
                issued=identity.issued,
                expires=identity.expires,
                addr="the auth host",
            )
        )

    def issue_admin_identity(self, public_key: str) -> CertBundle:
        return self.issuer.issue_service(
            "admin", SYSTEM_ADMIN, public_key, ["admin"], ttl=timedelta(days=30)
        )


def _check_join_name(name: str) -> None:
    check_host_name(name, "host name")
    if is_loopback(name):
        # Every host's certificate names localhost: a node of that name would make
        # every other host's join refused.
        raise BadParameter(f'invalid host name "{name}": it names every machine; use its own')
    try:
        Metadata(name=name)  # a node's name is its resource name
    except ValueError as exc:
        raise BadParameter(f'invalid host name "{name}": {exc}') from None


def _agentless_message(name: str) -> str:
    return (
        f'access denied: the name "{name}" is an agentless node an admin registered; '
        f'pick another name, or remove it first with "cgctl rm node/{name}"'
    )
