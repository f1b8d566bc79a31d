"""``SlackObserver``: a Slack message (incoming webhook) when a run completes, fails or is
interrupted, with Sacred's templates, priority and ``from_config``.

::

    from expkit.observers import SlackObserver
    ex.observers.append(SlackObserver.from_config("slack.json"))

The message is posted with the standard library (no ``requests``); if Slack cannot be
reached a warning says so and the run goes on.
"""

from __future__ import annotations

import os

from expkit.notify import (
    DEFAULT_PRIORITY,
    DEFAULT_TIMEOUT,
    NotifyingObserver,
    check_settings,
    load_settings,
    post_json,
)
from expkit.pluginmanager import hookimpl

COMPLETED_TEXT = (
    ":white_check_mark: *{experiment[name]}* completed after _{elapsed_time}_ "
    "with result=`{result}`"
)
INTERRUPTED_TEXT = ":warning: *{experiment[name]}* interrupted after _{elapsed_time}_"
FAILED_TEXT = ":x: *{experiment[name]}* failed after _{elapsed_time}_ with `{error}`"
_TEMPLATES = ("completed_text", "interrupted_text", "failed_text")


class SlackObserver(NotifyingObserver):
    """Post to a Slack incoming webhook when a run ends (Sacred's ``SlackObserver``).

    A template left ``None`` gets Sacred's default text; see :class:`NotifyingObserver`
    for the fields a template may use.
    """

    service = "Slack"

    @classmethod
    def from_config(cls, filename: str | os.PathLike) -> SlackObserver:
        """An observer from a JSON, TOML or YAML file with ``webhook_url`` and, optionally,
        ``bot_name``, ``icon``, ``priority`` and the ``*_text`` templates."""
        settings = load_settings(filename)
        optional = ("bot_name", "icon", "priority", "timeout", *_TEMPLATES)
        check_settings(settings, ("webhook_url",), optional, filename, "Slack")
        return cls(**settings)

    def __init__(
        self,
        webhook_url: str,
        bot_name: str = "expkit-bot",
        icon: str = ":angel:",
        priority: int = DEFAULT_PRIORITY,
        completed_text: str | None = None,
        interrupted_text: str | None = None,
        failed_text: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(priority, timeout)
        self.webhook_url = webhook_url
        self.bot_name = bot_name
        self.icon = icon
        self.completed_text = completed_text or COMPLETED_TEXT
        self.interrupted_text = interrupted_text or INTERRUPTED_TEXT
        self.failed_text = failed_text or FAILED_TEXT

    def __repr__(self) -> str:
        return f"SlackObserver(bot_name={self.bot_name!r})"  # the webhook URL is a secret

    def send(self, text: str, quiet: bool) -> None:
        """Post ``text`` as the bot to the webhook."""
        payload = {"username": self.bot_name, "icon_emoji": self.icon, "text": text}
        post_json(self.webhook_url, payload, self.timeout)


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import SlackObserver``."""
    return SlackObserver if name == "SlackObserver" else None


__all__ = ["SlackObserver"]
