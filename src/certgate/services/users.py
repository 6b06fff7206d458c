"""Users, their secrets (password hash, TOTP) and their invites.

Secrets live under their own prefix so nothing that lists or shows users can leak them:

    /users/<name>          User resource (roles, traits, status)
    /user_secrets/<name>   UserSecrets (argon2id hash, TOTP secret, last used code)
    /invites/<token>       Invite (expires after its TTL; one use)
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from certgate.api.meta import Metadata
from certgate.api.user import User, UserSpec
from certgate.backend.base import Backend, Item
from certgate.errors import NotFound
from certgate.services.store import ResourceStore


class UserSecrets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    password_hash: str = ""
    totp_secret: str = ""
    # The TOTP time step of the last accepted code: a code of this step or an earlier
    # one is refused, so a code cannot be used twice.
    last_otp_step: int = 0
    revision: int = 0


class Invite(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str
    user: str
    totp_secret: str
    expires: datetime
    # "invite" for a new user, "reset" after `cgctl users reset`.
    purpose: str = "invite"


class UserService:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.users: ResourceStore[User] = ResourceStore(backend, "/users/", User, "user")

    # users -----------------------------------------------------------------------

    async def get(self, name: str) -> User:
        return await self.users.get(name)

    async def list_all(self) -> list[User]:
        return await self.users.list()

    async def create(self, user: User) -> User:
        return await self.users.create(user)

    async def update(self, user: User) -> User:
        return await self.users.update(user)

    async def delete(self, name: str) -> None:
        await self.users.delete(name)
        for key in (f"/user_secrets/{name}",):
            try:
                await self._backend.delete(key)
            except NotFound:
                pass
        for invite in await self.list_invites():
            if invite.user == name:
                await self.delete_invite(invite.token)

    # secrets ---------------------------------------------------------------------

    async def get_secrets(self, name: str) -> UserSecrets:
        try:
            item = await self._backend.get(f"/user_secrets/{name}")
        except NotFound:
            return UserSecrets()
        secrets = UserSecrets.model_validate_json(item.value)
        return secrets.model_copy(update={"revision": item.revision})

    async def put_secrets(self, name: str, secrets: UserSecrets) -> None:
        await self._backend.put(_secrets_item(name, secrets))

    async def update_secrets(self, name: str, secrets: UserSecrets) -> None:
        """Conditional on the revision read, so two logins cannot both use one code."""
        await self._backend.compare_and_swap(_secrets_item(name, secrets), secrets.revision)

    # invites ---------------------------------------------------------------------

    async def create_invite(self, invite: Invite) -> None:
        await self._backend.create(
            Item(
                key=f"/invites/{invite.token}",
                value=invite.model_dump_json().encode(),
                expires=invite.expires,
            )
        )

    async def get_invite(self, token: str) -> Invite:
        try:
            item = await self._backend.get(f"/invites/{token}")
        except NotFound:
            raise NotFound("invite not found or expired: ask your admin for a new one") from None
        return Invite.model_validate_json(item.value)

    async def list_invites(self) -> list[Invite]:
        return [Invite.model_validate_json(i.value) for i in await self._backend.range("/invites/")]

    async def consume_invite(self, token: str) -> None:
        """Deletes the invite; of two racing completions only one succeeds."""
        try:
            await self._backend.delete(f"/invites/{token}")
        except NotFound:
            raise NotFound("invite already used or expired: ask your admin for a new one") from None

    async def delete_invite(self, token: str) -> None:
        try:
            await self._backend.delete(f"/invites/{token}")
        except NotFound:
            pass


def _secrets_item(name: str, secrets: UserSecrets) -> Item:
    body = secrets.model_copy(update={"revision": 0}).model_dump_json().encode()
    return Item(key=f"/user_secrets/{name}", value=body)


def new_user(
    name: str, roles: list[str], traits: dict[str, list[str]], created_by: str, now: datetime
) -> User:
    return User(
        metadata=Metadata(name=name),
        spec=UserSpec(roles=roles, traits=traits, created_by=created_by, created=now),
    )
