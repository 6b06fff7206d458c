"""Access requests for cgsh and cgctl: a typed client, waiting, and assuming grants.

    create ──> wait (long polls by revision: a change made at any moment after create
               answered is seen, however fast a reviewer is) ──> assume

Assuming a grant re-issues the profile's certificates with the request ids. The
certificates from login ("standing": the user's own roles) are kept aside in
`keys/standing` while a grant is in use, so `cgsh request drop` goes back to them, and
grants are always issued from them (a grant never shortens the next one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from certgate.api.bundle import CertBundle
from certgate.client.cluster import ClusterAPI, connect_profile
from certgate.client.profile import Profile
from certgate.errors import AccessDenied, CertgateError, NotFound
from certgate.rpc.identity_files import IdentityFiles, new_key

# Seconds one wait call may hold (auth caps it; under the proxy's read timeout).
WAIT_CALL_SECONDS = 10
# How many requests a list asks for unless told (auth's own default; it allows 10,000).
DEFAULT_LIST = 1000


@dataclass(frozen=True)
class Review:
    author: str
    verdict: str
    reason: str
    created: str


@dataclass(frozen=True)
class AccessRequestView:
    """What a client needs of one request (the resource as the API returns it)."""

    id: str
    revision: int
    user: str
    roles: list[str]
    resources: list[str]
    reason: str
    state: str
    created: str
    pending_expires: str
    access_expires: str | None
    reviewers: list[str]
    reviews: list[Review]
    resolve_reason: str
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccessRequestView:
        spec = data["spec"]
        return cls(
            id=data["metadata"]["name"],
            revision=int(data["metadata"].get("revision", 0)),
            user=spec["user"],
            roles=list(spec["roles"]),
            resources=[f"{r['kind']}/{r['name']}" for r in spec.get("resources", [])],
            reason=spec.get("reason", ""),
            state=spec["state"],
            created=spec["created"],
            pending_expires=spec["pending_expires"],
            access_expires=spec.get("access_expires"),
            reviewers=list(spec.get("suggested_reviewers", [])),
            reviews=[
                Review(r["author"], r["verdict"], r.get("reason", ""), r["created"])
                for r in spec.get("reviews", [])
            ],
            resolve_reason=spec.get("resolve_reason", ""),
            raw=data,
        )

    @property
    def what(self) -> str:
        return ", ".join(self.resources) if self.resources else ", ".join(self.roles)

    def access_active(self) -> bool:
        if self.state != "APPROVED" or not self.access_expires:
            return False
        return datetime.fromisoformat(self.access_expires) > datetime.now(UTC)


class RequestsAPI:
    def __init__(self, cluster: ClusterAPI) -> None:
        self._cluster = cluster

    def create(
        self,
        roles: Sequence[str],
        resources: Sequence[str],
        reason: str,
        reviewers: Sequence[str],
        max_duration: str | None,
        request_ttl: str | None,
    ) -> tuple[AccessRequestView, bool]:
        """The request and True; or the caller's pending request for the very same
        thing, made earlier, and False."""
        body: dict[str, Any] = {
            "roles": list(roles),
            "resources": list(resources),
            "reason": reason,
            "reviewers": list(reviewers),
        }
        if max_duration:
            body["max_duration"] = max_duration
        if request_ttl:
            body["request_ttl"] = request_ttl
        data, status = self._cluster.call_status("POST", "/access_requests", body)
        return AccessRequestView.from_dict(data), status == 201

    def all(self, limit: int = DEFAULT_LIST) -> list[AccessRequestView]:
        """The newest `limit` requests the caller may see (auth caps the answer)."""
        found = self._cluster.call("GET", "/access_requests", params={"limit": str(limit)})
        return [AccessRequestView.from_dict(d) for d in found]

    def get(self, ref: str) -> AccessRequestView:
        return AccessRequestView.from_dict(self._cluster.call("GET", f"/access_requests/{ref}"))

    def review(self, ref: str, verdict: str, reason: str) -> AccessRequestView:
        data = self._cluster.call(
            "POST", f"/access_requests/{ref}/reviews", {"verdict": verdict, "reason": reason}
        )
        return AccessRequestView.from_dict(data)

    def wait(
        self,
        request: AccessRequestView,
        on_change: Callable[[AccessRequestView], None] | None = None,
        timeout: float | None = None,
    ) -> AccessRequestView:
        """The request once it is no longer pending (or as it is after `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while request.state == "PENDING":
            if deadline is not None and time.monotonic() >= deadline:
                break
            data = self._cluster.call(
                "GET",
                f"/access_requests/{request.id}/wait",
                params={"after": request.revision, "timeout": WAIT_CALL_SECONDS},
            )
            changed = AccessRequestView.from_dict(data)
            if changed.revision != request.revision and on_change is not None:
                on_change(changed)
            request = changed
        return request

    def search(self, kind: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        params = [("kind", kind), *(("label", f"{k}={v}") for k, v in labels.items())]
        found: list[dict[str, Any]] = self._cluster.call("GET", "/access_search", params=params)
        return found

    def requestable(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._cluster.call("GET", "/my/requestable")
        return answer

    def suggest(self, node: str, login: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._cluster.call(
            "GET", "/access_suggest", params={"node": node, "login": login}
        )
        return answer


# the profile's certificates --------------------------------------------------------


def _standing_dir(profile: Profile) -> Any:
    return profile.keys_dir / "standing"


def standing_identity(profile: Profile, current: IdentityFiles) -> IdentityFiles:
    """The login certificates: the `current` ones when they carry no grant, else the
    ones kept aside when the first grant was assumed (`current` if none were)."""
    if not current.bundle.identity.request_ids:
        return current
    try:
        return IdentityFiles.load(_standing_dir(profile))
    except NotFound:
        return current


def _renew(profile: Profile, using: IdentityFiles, request_ids: Sequence[str]) -> IdentityFiles:
    key_pem, public_key = new_key()
    cluster = connect_profile(profile, using)
    try:
        data = cluster.call(
            "POST", "/certs/renew", {"public_key": public_key, "request_ids": list(request_ids)}
        )
    finally:
        cluster.close()
    return IdentityFiles(key_pem=key_pem, bundle=CertBundle.from_dict(data))


def assume(profile: Profile, request_ids: Sequence[str], keep_current: bool = True) -> CertBundle:
    """Re-issue the profile's certificates with these grants (and, with `keep_current`,
    the ones already in use that are still active)."""
    current = profile.identity()
    standing = standing_identity(profile, current)
    wanted = list(request_ids)
    if keep_current and current.bundle.identity.request_ids:
        api = RequestsAPI(connect_profile(profile, standing))
        try:
            for old in current.bundle.identity.request_ids:
                try:
                    if old not in wanted and api.get(old).access_active():
                        wanted.append(old)
                except CertgateError:
                    continue  # gone or no longer readable: not carried on
        finally:
            api._cluster.close()
    issued = _renew(profile, standing, wanted)
    if standing is current:
        standing.save(_standing_dir(profile))
    profile.save_keys(issued)
    return issued.bundle


def drop(profile: Profile) -> CertBundle:
    """Back to the login certificates (while they last; else new ones from them)."""
    current = profile.identity()
    if not current.bundle.identity.request_ids:
        return current.bundle
    standing = standing_identity(profile, current)
    if standing is current:
        raise AccessDenied("the certificates from your login are gone: run cgsh login")
    if standing.bundle.identity.expires <= datetime.now(UTC):
        raise AccessDenied("the certificates from your login have expired: run cgsh login")
    profile.save_keys(standing)
    return standing.bundle


def grant_status(profile: Profile, request_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The grants the profile's certificates carry: who approved, until when (the ids
    and why not, when auth cannot be asked: offline, expired, locked)."""
    if not request_ids:
        return []
    out: list[dict[str, Any]] = []
    try:
        cluster = connect_profile(profile)
    except CertgateError as exc:
        return [{"id": ref, "error": exc.message} for ref in request_ids]
    try:
        api = RequestsAPI(cluster)
        for ref in request_ids:
            try:
                found = api.get(ref)
            except CertgateError as exc:
                out.append({"id": ref, "error": exc.message})
                continue
            out.append(
                {
                    "id": found.id,
                    "requested": found.what,
                    "state": found.state,
                    "approved": found.resolve_reason,
                    "access_expires": found.access_expires,
                }
            )
    finally:
        cluster.close()
    return out


def with_request_hint(
    profile: Profile, node: str, login: str, refusal: CertgateError
) -> CertgateError:
    """`refusal` with, when a role the user may request would allow `login` on `node`,
    the exact command to request it (the refusal as it was otherwise)."""
    try:
        cluster = connect_profile(profile)
    except CertgateError:
        return refusal
    try:
        suggestion = RequestsAPI(cluster).suggest(node, login)
    except CertgateError:
        return refusal
    finally:
        cluster.close()
    roles = suggestion.get("roles") or []
    resource = suggestion.get("resource")
    if roles:
        which = ", ".join(f'"{r}"' for r in roles)
        noun = "role" if len(roles) == 1 else "roles"
        command = f'cgsh request create --roles={roles[0]} --reason="..."'
        hint = f"you may request {noun} {which}, which would allow it: {command}"
    elif resource:
        command = f'cgsh request create --resource={resource} --reason="..."'
        hint = f"you may request access to {resource}: {command}"
    else:
        return refusal
    return type(refusal)(f"{refusal.message}; {hint}")
