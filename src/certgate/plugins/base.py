"""The plugin loop: follow access requests through the proxy, say what changed.

    ResourceView (watch, reconnects with backoff)  --on change-->  _pending[id] = latest
                                                                     |  (never blocks the watch)
    _work(): for each pending request: next_step() -> Notifier call -> save the record

Requests are handled one at a time, so a chat's rate limit is met by one caller. A step
that fails for now (the chat is down, rate limited past our retries) puts its request
back, and the loop waits with backoff, and at least as long as the chat's Retry-After
asked; a request that changes meanwhile is handled as it is by then, never as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import replace

from pydantic import BaseModel

from certgate.api.codec import to_dict
from certgate.errors import CertgateError, ConnectionProblem
from certgate.plugins.config import PluginConfig
from certgate.plugins.notifier import Notifier, RateLimited, RecipientRefused
from certgate.plugins.request_info import EXPIRED, RequestInfo
from certgate.plugins.state import MessageRecord, PluginState, RequestRecord, StateFile
from certgate.plugins.steps import Step, next_step
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.watcher import ResourceView

log = logging.getLogger("certgate.plugins")

KIND = "access_request"
# The auth API's watch route, as the proxy serves it to users (and plugins).
WATCH_PATH = "/v1/api/watch"
MAX_BACKOFF = 60.0
# How long a stopping plugin waits for the call it is making.
STOP_GRACE = 10.0


class PluginRunner:
    def __init__(
        self,
        name: str,
        config: PluginConfig,
        notifier: Notifier,
        state_file: StateFile,
        auth: AsyncAuthClient,
    ) -> None:
        self._name = name
        self._config = config
        self._notifier = notifier
        self._file = state_file
        self._auth = auth
        self._state = PluginState()
        # request id -> the request as last seen (None: it is gone). Insertion order is
        # the order to handle them in.
        self._pending: dict[str, RequestInfo | None] = {}
        self._wake = asyncio.Event()
        self._failures = 0

    async def run(self) -> None:
        self._state = self._file.load()
        view = ResourceView(self._auth, [KIND], self._changed, path=WATCH_PATH)
        view.start()
        try:
            while True:
                try:
                    await view.wait_ready(timeout=30)
                    break
                except ConnectionProblem:  # no snapshot within 30 s
                    log.warning("no access requests from %s yet: still trying", self._auth.base_url)
            self._first_snapshot(view)
            log.info(
                "%s plugin ready: %d requests known, following %s",
                self._name,
                len(self._state.requests),
                self._auth.base_url,
            )
            await self._work()
        finally:
            await view.close()

    def _first_snapshot(self, view: ResourceView) -> None:
        """Catch up with what happened while the plugin was not running."""
        present = {to_dict(resource)["metadata"]["name"] for resource in view.all(KIND)}
        for rid in self._state.requests:
            if rid not in present:
                self._pending.setdefault(rid, None)  # removed while we were away
        if not self._state.initialized:
            # A first start: what was resolved before is history, not news.
            for rid, request in self._pending.items():
                if request is not None and request.resolved and rid not in self._state.requests:
                    self._state.requests[rid] = RequestRecord(request, quiet=True)
            self._state.initialized = True
            self._file.save(self._state)
        self._wake.set()

    async def _changed(self, kind: str, name: str, resource: BaseModel | None) -> None:
        # Runs inside the watch loop: only note the change; _work sends.
        request = RequestInfo.from_resource(to_dict(resource)) if resource is not None else None
        self._pending.pop(name, None)  # handled after whatever was already waiting
        self._pending[name] = request
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                rid = next(iter(self._pending))
                request = self._pending.pop(rid)
                try:
                    await self._handle(rid, request)
                    self._failures = 0
                except ConnectionProblem as exc:
                    if rid not in self._pending:  # nothing newer arrived meanwhile
                        self._pending[rid] = request
                    self._failures += 1
                    delay = min(MAX_BACKOFF, 2.0**self._failures) * (0.5 + random.random() / 2)
                    if isinstance(exc, RateLimited):
                        # Every step waits: they all go to the chat that asked.
                        delay = max(delay, exc.retry_after)
                    log.warning("request %s: %s; trying again in %.0fs", rid, exc.message, delay)
                    await asyncio.sleep(delay)

    async def _handle(self, rid: str, request: RequestInfo | None) -> None:
        record = self._state.requests.get(rid)
        if request is None:
            if record is None:
                return
            # Gone from the cluster: a message still showing it pending would mislead.
            last = record.request
            if not last.resolved:
                gone = replace(last, state=EXPIRED, resolve_reason="removed from the cluster")
                await self._say_all(gone, record)
            del self._state.requests[rid]
            self._file.save(self._state)
            return
        if record is None:
            record = RequestRecord(request)
            self._state.requests[rid] = record
        record.request = request
        await self._say_all(request, record)

    async def _say_all(self, request: RequestInfo, record: RequestRecord) -> None:
        recipients = self._notifier.recipients(request)
        while (step := next_step(request, record, recipients)) is not None:
            call = asyncio.ensure_future(self._say_and_save(step, request, record))
            try:
                await asyncio.shield(call)
            except asyncio.CancelledError:
                # Stopping (SIGTERM): the call in flight may finish and be recorded
                # first, so a clean stop never sends a message twice.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_GRACE):
                        await call
                raise
        if request.resolved and not record.quiet:
            # Final, and all said: from now on only its id is kept (the file stays small).
            record.quiet = True
            self._file.save(self._state)

    async def _say_and_save(self, step: Step, request: RequestInfo, record: RequestRecord) -> None:
        await self._say(step, request, record)
        self._file.save(self._state)

    async def _say(self, step: Step, request: RequestInfo, record: RequestRecord) -> None:
        """One outbound call, and what it changes in the record."""
        notifier = self._notifier
        message = record.messages.get(step.recipient)
        try:
            if step.kind == "post":
                posted = await notifier.post(step.recipient, request)
                record.messages[step.recipient] = MessageRecord(posted.ref, posted.shows)
            elif step.kind == "reply":
                assert message is not None
                await notifier.reply(step.recipient, message.ref, request, step.review)
                message.replies = step.review + 1
            elif step.kind == "update":
                assert message is not None
                await notifier.update(step.recipient, message.ref, request)
                message.shows = request.state
            else:
                await notifier.tell_requester(request)
                record.requester_told = True
        except RecipientRefused as exc:
            log.warning("request %s: %s (not tried again)", request.id, exc.message)
            _give_up(step, request, record, exc.message)
        except CertgateError:
            raise
        except Exception as exc:  # a chat answer of an unexpected shape
            raise ConnectionProblem(
                f"{step.kind} to {step.recipient or request.user}: {exc!r}"
            ) from exc


def _give_up(step: Step, request: RequestInfo, record: RequestRecord, why: str) -> None:
    """Mark a refused step done, so the next one can run."""
    message = record.messages.get(step.recipient)
    if step.kind == "post":
        record.messages[step.recipient] = MessageRecord(failed=why)
    elif step.kind == "reply" and message is not None:
        message.replies = step.review + 1
    elif step.kind == "update" and message is not None:
        message.shows = request.state
    else:
        record.requester_told = True
