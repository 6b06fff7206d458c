"""`certgate plugin NAME --config FILE`: the process around the loop (identity, client,
signals)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certgate.errors import AccessDenied, NotFound
from certgate.plugins.base import PluginRunner
from certgate.plugins.config import PluginConfig, load_plugin_config
from certgate.plugins.registry import make_notifier
from certgate.plugins.state import StateFile
from certgate.rpc.auth_client import AsyncAuthClient
from certgate.rpc.identity_files import IdentityFiles

log = logging.getLogger("certgate.plugins")

RENEW_WARNING = timedelta(days=7)


def run_plugin(name: str, config_path: Path) -> None:
    """Runs until SIGTERM or Ctrl-C; refusals at start raise (one line for the user)."""
    config = load_plugin_config(config_path, name)
    try:
        identity = IdentityFiles.load(config.identity)
    except NotFound:
        raise NotFound(
            f"no identity in {config.identity}: make one with "
            f"cgctl auth sign --user=NAME --out={config.identity}"
        ) from None
    expires = identity.bundle.identity.expires
    if expires <= datetime.now(UTC):
        raise AccessDenied(
            f"the identity in {config.identity} expired at {expires:%Y-%m-%d %H:%M} UTC: "
            "sign a new one with cgctl auth sign --user=NAME --out=DIR"
        )
    if expires - datetime.now(UTC) < RENEW_WARNING:
        log.warning(
            "the identity in %s expires at %s UTC: sign a new one soon (cgctl auth sign "
            "--user=NAME --out=DIR --overwrite) and restart the plugin",
            config.identity,
            f"{expires:%Y-%m-%d %H:%M}",
        )
    state_file = StateFile(config.state_file)
    state_file.load()  # a damaged state file stops the plugin before it says anything
    asyncio.run(_main(name, config, identity))


async def _main(name: str, config: PluginConfig, identity: IdentityFiles) -> None:
    auth = AsyncAuthClient(f"https://{config.proxy}", identity.tls_context(config.insecure))
    notifier = make_notifier(name, config)
    runner = PluginRunner(name, config, notifier, StateFile(config.state_file), auth)
    log.info(
        "%s plugin as %s (certificate valid until %s)",
        name,
        identity.bundle.identity.username,
        identity.bundle.identity.expires.isoformat(),
    )
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await runner.run()
    except asyncio.CancelledError:
        log.info("%s plugin stopping", name)
    finally:
        with contextlib.suppress(Exception):
            await notifier.close()
        await auth.close()
