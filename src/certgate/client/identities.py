"""Identities signed by an admin for a user (`cgctl auth sign --user`): a fresh key made
here (it never leaves this host), certificates from auth, saved as an identity directory
that a plugin's `identity:` setting, or a script, points at."""

from __future__ import annotations

from pathlib import Path

from certgate.api.bundle import CertBundle
from certgate.client.cluster import ClusterAPI
from certgate.errors import BadParameter
from certgate.rpc.identity_files import IdentityFiles, new_key


def sign_user_identity(cluster: ClusterAPI, user: str, ttl: str, out: Path) -> CertBundle:
    if not user or "/" in user:
        raise BadParameter(f'invalid user name "{user}"')
    key_pem, public_key = new_key()
    data = cluster.call("POST", f"/users/{user}/certs", json={"public_key": public_key, "ttl": ttl})
    bundle = CertBundle.from_dict(data)
    try:
        IdentityFiles(key_pem=key_pem, bundle=bundle).save(out)
    except OSError as exc:
        raise BadParameter(f"cannot write {out}: {exc.strerror or exc}") from exc
    return bundle
