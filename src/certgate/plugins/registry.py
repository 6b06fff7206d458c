"""Plugin name -> Notifier: the one place that names the implementations."""

from __future__ import annotations

from collections.abc import Callable

from certgate.errors import BadParameter
from certgate.plugins.config import PluginConfig
from certgate.plugins.mattermost import MattermostNotifier
from certgate.plugins.notifier import Notifier
from certgate.plugins.slack import SlackNotifier
from certgate.plugins.webhook import WebhookNotifier

NOTIFIERS: dict[str, Callable[[PluginConfig], Notifier]] = {
    "slack": SlackNotifier,
    "mattermost": MattermostNotifier,
    "webhook": WebhookNotifier,
}


def make_notifier(name: str, config: PluginConfig) -> Notifier:
    try:
        factory = NOTIFIERS[name]
    except KeyError:
        raise BadParameter(f'unknown plugin "{name}": use {", ".join(NOTIFIERS)}') from None
    return factory(config)
