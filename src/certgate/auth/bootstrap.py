"""First start of a cluster: its name, its four CAs and the preset roles.

Safe to run on every start and from several auth servers at once: each piece is
created only if absent, and a lost creation race reads what the winner wrote.
"""

from __future__ import annotations

from certgate.api.authority import CA_TYPES, CAType, CertAuthority
from certgate.api.role import Role
from certgate.auth.ca import check_cluster_name, generate_authority
from certgate.auth.presets import preset_roles
from certgate.backend.base import Backend, Item
from certgate.clock import Clock
from certgate.errors import AlreadyExists, BadParameter, NotFound
from certgate.services.store import ResourceStore

CLUSTER_NAME_KEY = "/cluster/name"


async def ensure_cluster_name(backend: Backend, wanted: str) -> str:
    try:
        stored = (await backend.get(CLUSTER_NAME_KEY)).value.decode()
    except NotFound:
        # A new cluster: a name no certificate can carry is refused here, at start, with
        # one line, not later in the middle of a join. (A stored name stays as it is.)
        check_cluster_name(wanted)
        try:
            await backend.create(Item(key=CLUSTER_NAME_KEY, value=wanted.encode()))
            return wanted
        except AlreadyExists:
            stored = (await backend.get(CLUSTER_NAME_KEY)).value.decode()
    if wanted and stored != wanted:
        raise BadParameter(
            f'this data dir belongs to cluster "{stored}", not "{wanted}": '
            "use another data dir or the original cluster_name"
        )
    return stored


async def ensure_authorities(
    authorities: ResourceStore[CertAuthority], cluster_name: str, clock: Clock
) -> dict[CAType, CertAuthority]:
    result: dict[CAType, CertAuthority] = {}
    for ca_type in CA_TYPES:
        try:
            result[ca_type] = await authorities.get(ca_type)
            continue
        except NotFound:
            pass
        ca = generate_authority(ca_type, cluster_name, clock.now())
        try:
            result[ca_type] = await authorities.create(ca)
        except AlreadyExists:
            result[ca_type] = await authorities.get(ca_type)
    return result


async def ensure_preset_roles(roles: ResourceStore[Role]) -> list[str]:
    """Creates the preset roles that are missing; returns their names."""
    created = []
    for role in preset_roles():
        try:
            await roles.create(role)
            created.append(role.name)
        except AlreadyExists:
            pass
    return created
