"""The audit event catalogue: every event type certgate emits, declared once.

Each type has a stable code (for SIEM rules), the fields it carries besides the common
ones, and the kinds of service allowed to write it. Auth emits its own events; nodes,
proxies and kube services send theirs through their audit spool, and auth stores one
only if the sender's kind is listed for its type (a node cannot write `user.delete`).

Every event also carries the common fields: `event`, `code`, `time`, `uid`, and for an
event a service sent, `server` (the node's name, or "proxy"), `server_name` (the
sending service's own name) and `server_kind` (node, proxy, kube or admin), which auth
stamps from the sender's certificate. An event type that is not listed here (a newer
node's, say) is stored as `unknown`, its type kept in `unknown_event`, so it never
sinks the events sent with it.

docs/audit.md lists this catalogue; tests/unit/test_event_catalogue.py checks that the
page and the code agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kinds of writer. "auth" is the auth service itself; the others are what auth stamps
# as `server_kind` on the events a service sends.
AUTH = "auth"
NODE = "node"
PROXY = "proxy"
KUBE = "kube"
ADMIN = "admin"  # the auth host's own admin identity (cgctl there): may write any type

UNKNOWN = "unknown"

# Fields every stored event carries, or that auth stamps: a sender may not set them.
COMMON_FIELDS = ("event", "code", "time", "uid")
STAMPED_FIELDS = ("server_name", "server_kind")
RESERVED_FIELDS = (*COMMON_FIELDS, *STAMPED_FIELDS, "unknown_event")

_SESSION_SERVERS = frozenset({NODE, PROXY, KUBE})
_AUTH_ONLY = frozenset({AUTH})


@dataclass(frozen=True)
class EventType:
    name: str
    code: str
    description: str
    fields: tuple[str, ...]
    writers: frozenset[str]


def _auth(name: str, code: str, description: str, *fields: str) -> EventType:
    return EventType(name, code, description, fields, _AUTH_ONLY)


def _session(name: str, code: str, description: str, *fields: str) -> EventType:
    return EventType(name, code, description, fields, _SESSION_SERVERS)


_SESSION = ("session_id", "user", "login", "kind", "node")
_PEER = ("user", "login", "client_addr", "node")

CATALOGUE: dict[str, EventType] = {
    t.name: t
    for t in (
        _auth("user.create", "T1002I", "a user was added", "user", "name", "roles"),
        _auth("user.update", "T1003I", "a user was changed", "user", "name", "roles"),
        _auth("user.delete", "T1004I", "a user was removed", "user", "name"),
        _auth("user.invite.complete", "T1005I", "a user set up their login", "user", "addr"),
        _auth("user.reset", "T1006I", "a user's login was reset", "user", "name"),
        _auth("user.unlock", "T1007I", "a user's login lockout was cleared", "user", "name"),
        _auth("user.login", "T1000I", "a user logged in", "user", "success", "addr"),
        _auth(
            "user.login.failure",
            "T1000W",
            "a login was refused",
            "user",
            "success",
            "addr",
            "error",
        ),
        _auth(
            "user.login.locked",
            "T1001W",
            "a login was refused: too many failures",
            "user",
            "success",
            "addr",
            "error",
        ),
        _auth(
            "user.mfa.verify",
            "T1010I",
            "a signed-in user's one-time code was checked (step-up)",
            "user",
            "success",
            "addr",
            "error",
        ),
        _auth(
            "cert.create",
            "TC000I",
            "certificates were issued",
            "user",
            "roles",
            "logins",
            "expires",
            "cert_type",
            "host",
            "principals",
        ),
        _auth("cert.create.failure", "TC000W", "certificates were refused", "user", "error"),
        _auth("role.created", "T9000I", "a role was created or changed", "user", "kind", "name"),
        _auth("role.deleted", "T9001I", "a role was removed", "user", "kind", "name"),
        _auth("token.create", "TJT00I", "a join token was created", "user", "roles", "expires"),
        _auth("token.delete", "TJT01I", "a join token was removed", "user", "kind", "name"),
        _auth("join", "TJ001I", "a service joined the cluster", "name", "role", "addr"),
        _auth(
            "join.failure", "TJ001E", "a service failed to join", "name", "role", "addr", "error"
        ),
        _auth(
            "heartbeat.failure",
            "TJ002E",
            "a heartbeat was refused",
            "name",
            "node",
            "hostname",
            "addr",
            "kube_cluster",
            "error",
        ),
        _auth("resource.created", "TR000I", "a resource was created", "user", "kind", "name"),
        _auth("resource.deleted", "TR001I", "a resource was removed", "user", "kind", "name"),
        _auth(
            "lock.created",
            "TLK00I",
            "a lock was created",
            "user",
            "name",
            "target",
            "message",
            "expires",
        ),
        _auth("lock.deleted", "TLK01I", "a lock was removed", "user", "kind", "name"),
        _auth("lock.expired", "TLK02I", "a lock expired", "user", "name", "target"),
        _auth(
            "store.item.skipped",
            "TST00W",
            "a stored item that no longer decodes was left out of reads",
            "key",
            "revision",
            "error",
        ),
        _auth(
            "session.upload",
            "T2005I",
            "a session recording was stored",
            "server",
            "session_id",
            "user",
            "login",
            "node",
            "kind",
            "duration",
            "size",
            "incomplete",
            "recording_truncated",
        ),
        _auth(
            "session.upload.failure",
            "T2005W",
            "a recording upload was refused (a stored recording is write-once)",
            "server",
            "session_id",
            "node",
            "error",
        ),
        _auth(
            "session.recording.access",
            "T2012I",
            "a session recording was played or downloaded",
            "user",
            "session_id",
            "session_user",
            "node",
        ),
        _auth(
            "access_request.create",
            "T5000I",
            "an access request was created",
            "user",
            "id",
            "roles",
            "resources",
            "reason",
            "reviewers",
            "state",
        ),
        _auth(
            "access_request.update",
            "T5001I",
            "an access request was approved, denied or expired",
            "user",
            "id",
            "requester",
            "roles",
            "state",
            "reason",
            "access_expires",
        ),
        _auth(
            "access_request.review",
            "T5002I",
            "an access request was reviewed",
            "user",
            "id",
            "requester",
            "verdict",
            "reason",
            "state",
        ),
        EventType(
            "kube.request",
            "T3009I",
            "a Kubernetes API call through certgate, refused ones too",
            (
                "user",
                "kubernetes_cluster",
                "method",
                "path",
                "verb",
                "status",
                "resource_kind",
                "namespace",
                "resource_name",
                "reason",
                "kube_service",
            ),
            frozenset({KUBE, PROXY}),
        ),
        _session(
            "session.start",
            "T2000I",
            "a session started",
            *_SESSION,
            "client_addr",
            "command",
            "tty",
            "pid",
            "access_requests",
        ),
        _session(
            "session.recording.start",
            "T2006I",
            "a session's recording began (its host alone may upload it)",
            *_SESSION,
        ),
        _session(
            "session.join",
            "T2001I",
            "someone joined a live session",
            "session_id",
            "user",
            "mode",
            "session_user",
            "login",
            "node",
        ),
        _session(
            "session.leave",
            "T2003I",
            "someone left a session they joined",
            "session_id",
            "user",
            "mode",
            "session_user",
            "login",
            "node",
        ),
        _session(
            "session.end",
            "T2004I",
            "a session ended",
            *_SESSION,
            "duration",
            "reason",
            "exit_code",
            "exit_signal",
            "lock",
        ),
        # Auth writes it too: a locked user's API call (kind "api") is refused there.
        EventType(
            "session.rejected",
            "T1006W",
            "a session or login was refused",
            (*_PEER, "reason", "addr", "session_id", "kind", "method", "path", "resource", "verb"),
            _SESSION_SERVERS | _AUTH_ONLY,
        ),
        _session(
            "exec", "T3002I", "a command ran", *_SESSION, "command", "exit_code", "client_addr"
        ),
        _session(
            "port_forward",
            "T3003I",
            "a port forward was asked for",
            *_PEER,
            "kind",
            "addr",
            "allowed",
        ),
        _session(
            "agent_forward",
            "T3010I",
            "SSH agent forwarding was asked for",
            *_PEER,
            "allowed",
        ),
        _session("sftp", "TS001I", "a file transfer (SFTP) ran", *_SESSION, "path", "action"),
        EventType(
            UNKNOWN,
            "TCC00E",
            "a service sent an event type this auth does not know (kept in unknown_event)",
            ("unknown_event",),
            frozenset({NODE, PROXY, KUBE, ADMIN}),
        ),
    )
}

# Event type -> code, for readers that only need the codes.
EVENT_CODES: dict[str, str] = {name: t.code for name, t in CATALOGUE.items()}


def code_of(event: str) -> str:
    return CATALOGUE[event].code if event in CATALOGUE else CATALOGUE[UNKNOWN].code


def may_write(writer: str, event: str) -> bool:
    """Whether a writer of this kind may store `event` (the admin identity: any)."""
    if writer == ADMIN:
        return True
    kind = CATALOGUE.get(event)
    return kind is not None and writer in kind.writers


def written_by(writer: str) -> list[str]:
    """The event types a writer of this kind may store, sorted."""
    return sorted(name for name in CATALOGUE if may_write(writer, name))
