"""Users and invites: creating, changing, resetting and deleting users; invites.

Deleting or resetting a user, or taking a role or a login away, cuts the certificates
the user already holds (user_cuts.py); a fresh login works at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from certgate.api.user import INTERNAL_TRAITS, User
from certgate.auth.core import check_token_text
from certgate.auth.passwords import (
    check_password_policy,
    hash_password,
    match_totp,
    new_totp_secret,
    totp_uri,
)
from certgate.auth.user_cuts import UserCuts, narrowed
from certgate.errors import AccessDenied, BadParameter
from certgate.services.users import Invite, UserSecrets, new_user

INVITE_TTL = timedelta(hours=1)


@dataclass(frozen=True)
class InviteInfo:
    user: str
    totp_secret: str
    totp_uri: str


class UserAdmin(UserCuts):
    # users and invites --------------------------------------------------------------

    async def add_user(
        self, name: str, roles: list[str], traits: dict[str, list[str]], created_by: str
    ) -> str:
        """Creates the user and returns its invite URL."""
        for role in roles:
            await self.roles.get(role)  # NotFound names the missing role
        for key in traits:
            if key not in INTERNAL_TRAITS:
                raise BadParameter(f'unknown trait "{key}": use {", ".join(INTERNAL_TRAITS)}')
        user = new_user(name, roles, traits, created_by, self.clock.now())
        await self.users.create(user)
        await self.audit.emit("user.create", user=created_by, name=name, roles=roles)
        return await self._new_invite(name, "invite")

    async def reset_user(self, name: str, by: str) -> str:
        """Clears the password and TOTP; the user sets new ones through a new invite."""
        user = await self.users.get(name)
        status = user.status.model_copy(update={"active": False, "failed_logins": 0})
        await self.users.update(user.model_copy(update={"status": status}))
        await self.users.put_secrets(name, UserSecrets())
        for invite in await self.users.list_invites():
            if invite.user == name:
                await self.users.delete_invite(invite.token)
        await self.audit.emit("user.reset", user=by, name=name)
        await self.cut_user_certs(user, by, "reset")
        return await self._new_invite(name, "reset")

    async def reinvite_user(self, name: str, by: str) -> str:
        """A new invite for a user who never signed up; the earlier links stop working.
        BadParameter for one who did (`reset_user` is for that)."""
        user = await self.users.get(name)
        if user.status.active:
            raise BadParameter(f'user "{name}" has signed up already: reset them instead')
        for invite in await self.users.list_invites():
            if invite.user == name:
                await self.users.delete_invite(invite.token)
        await self.audit.emit("user.reset", user=by, name=name)
        return await self._new_invite(name, "invite")

    async def update_user(
        self,
        name: str,
        roles: list[str] | None,
        traits: dict[str, list[str]] | None,
        by: str,
    ) -> User:
        """Set the user's roles and/or some traits (each trait given replaces that trait).

        Anything taken away cuts the user's current certificates."""
        if roles is not None:
            for role in roles:
                await self.roles.get(role)  # NotFound names the missing role
        for key in traits or {}:
            if key not in INTERNAL_TRAITS:
                raise BadParameter(f'unknown trait "{key}": use {", ".join(INTERNAL_TRAITS)}')
        before = await self.users.get(name)
        spec = before.spec.model_copy(
            update={
                "roles": before.spec.roles if roles is None else roles,
                "traits": {
                    k: v
                    for k, v in {**before.spec.traits, **(traits or {})}.items()
                    if v  # an empty list removes the trait
                },
            }
        )
        wanted = before.model_copy(update={"spec": spec})
        lost = narrowed(before, wanted)
        reason = f"changed (lost {', '.join(lost)})"
        if lost:
            await self.cut_user_certs(before, by, reason, wait=False)  # see auth/user_cuts.py
        after = await self.users.update(wanted)
        await self.audit.emit(
            "user.update",
            user=by,
            name=name,
            roles=after.spec.roles,
            traits=after.spec.traits,
            removed=lost or None,
        )
        if lost:
            await self.cut_user_certs(before, by, reason)
        return after

    async def unlock_user(self, name: str, by: str) -> None:
        """Lift a lockout after failed logins (the name need not be a user: unknown
        names are counted and locked the same way)."""
        await self.login_checker.unlock(name)
        await self.audit.emit("user.unlock", user=by, name=name)

    async def delete_user(self, name: str, by: str) -> None:
        user = await self.users.get(name)
        # The lock first: a user that is gone never has working certificates.
        await self.cut_user_certs(user, by, "deleted")
        await self.users.delete(name)
        await self.audit.emit("user.delete", user=by, name=name)

    async def _new_invite(self, name: str, purpose: str) -> str:
        token = secrets.token_hex(16)
        invite = Invite(
            token=token,
            user=name,
            totp_secret=new_totp_secret(),
            expires=self.clock.now() + INVITE_TTL,
            purpose=purpose,
        )
        await self.users.create_invite(invite)
        return f"https://{self.proxy_public_addr}/web/invite/{token}"

    async def get_invite(self, token: str) -> InviteInfo:
        check_token_text(token)
        invite = await self.users.get_invite(token)
        return InviteInfo(
            user=invite.user,
            totp_secret=invite.totp_secret,
            totp_uri=totp_uri(invite.totp_secret, invite.user, self.cluster_name),
        )

    async def complete_invite(self, token: str, password: str, otp: str, client_addr: str) -> None:
        check_token_text(token)
        invite = await self.users.get_invite(token)
        check_password_policy(password)
        step = match_totp(invite.totp_secret, otp, self.clock.now())
        if step is None:
            raise AccessDenied(
                "access denied: the one-time code does not match; check the device's clock"
            )
        password_hash = await hash_password(password)
        # Delete first: of two racing completions only one finds the invite to delete.
        await self.users.consume_invite(token)
        await self.users.put_secrets(
            invite.user,
            UserSecrets(
                password_hash=password_hash, totp_secret=invite.totp_secret, last_otp_step=step
            ),
        )
        user = await self.users.get(invite.user)
        status = user.status.model_copy(update={"active": True, "locked_until": None})
        await self.users.update(user.model_copy(update={"status": status}))
        await self.audit.emit("user.invite.complete", user=invite.user, addr=client_addr)
