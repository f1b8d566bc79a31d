"""``TelegramObserver``: a Telegram message when a run starts, completes, fails or is
interrupted, with Sacred's templates, priority and ``from_config``.

::

    from expkit.observers import TelegramObserver
    ex.observers.append(TelegramObserver.from_config("telegram.json"))

Messages go to the Bot API's ``sendMessage`` with the standard library (no
``python-telegram-bot``); ``api_url`` points elsewhere (a local Bot API server, a test).
If Telegram cannot be reached a warning says so (never showing the token) and the run
goes on.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

from expkit.errors import UsageError
from expkit.notify import (
    DEFAULT_PRIORITY,
    DEFAULT_TIMEOUT,
    NotifyingObserver,
    check_settings,
    load_settings,
    post_json,
)
from expkit.pluginmanager import hookimpl

API_URL = "https://api.telegram.org"

STARTED_TEXT = "♻ *{experiment[name]}* started at _{start_time}_ on host `{host_info[hostname]}`"
COMPLETED_TEXT = "✅ *{experiment[name]}* completed after _{elapsed_time}_ with result=`{result}`"
INTERRUPTED_TEXT = "⚠ *{experiment[name]}* interrupted after _{elapsed_time}_"
FAILED_TEXT = (
    "❌ *{experiment[name]}* failed after _{elapsed_time}_ with `{error}`\n\n"
    "Backtrace:\n```{backtrace}```"
)
_TEMPLATES = ("started_text", "completed_text", "interrupted_text", "failed_text")


class TelegramObserver(NotifyingObserver):
    """Send Telegram messages about a run to ``chat_id`` (Sacred's ``TelegramObserver``).

    ``bot`` is the bot's token, or a ``telegram.Bot`` (its ``token`` is used). The start
    message and, with ``silent_completion``, the completion message arrive without a
    notification sound. Templates may use ``{backtrace}`` besides the fields of
    :class:`NotifyingObserver`.
    """

    service = "Telegram"

    @classmethod
    def from_config(cls, filename: str | os.PathLike) -> TelegramObserver:
        """An observer from a JSON, TOML or YAML file with ``token`` and ``chat_id`` and,
        optionally, ``silent_completion``, ``priority``, ``api_url``, ``proxy_url`` (HTTP,
        with ``username`` and ``password``) and the ``*_text`` templates."""
        settings = dict(load_settings(filename))
        optional = (
            "silent_completion",
            "priority",
            "api_url",
            "timeout",
            "proxy_url",
            "username",
            "password",
            *_TEMPLATES,
        )
        check_settings(settings, ("token", "chat_id"), optional, filename, "Telegram")
        proxy_url = settings.pop("proxy_url", None)
        username, password = settings.pop("username", None), settings.pop("password", None)
        if proxy_url is not None:
            settings["proxy_url"] = _proxy_with_credentials(proxy_url, username, password)
        return cls(settings.pop("token"), **settings)

    def __init__(
        self,
        bot: Any,
        chat_id: int | str,
        silent_completion: bool = False,
        priority: int = DEFAULT_PRIORITY,
        *,
        api_url: str = API_URL,
        timeout: float = DEFAULT_TIMEOUT,
        proxy_url: str | None = None,
        started_text: str | None = STARTED_TEXT,
        completed_text: str | None = COMPLETED_TEXT,
        interrupted_text: str | None = INTERRUPTED_TEXT,
        failed_text: str | None = FAILED_TEXT,
    ) -> None:
        super().__init__(priority, timeout)
        token = bot if isinstance(bot, str) else getattr(bot, "token", None)
        if not isinstance(token, str) or not token:
            raise UsageError("TelegramObserver needs the bot's token (or a telegram.Bot)")
        self.bot = bot
        self.chat_id = chat_id
        self.silent_completion = silent_completion
        self.api_url = api_url.rstrip("/")
        self.started_text = started_text
        self.completed_text = completed_text
        self.interrupted_text = interrupted_text
        self.failed_text = failed_text
        self._token = token
        self._opener = _proxy_opener(proxy_url) if proxy_url else None

    def __repr__(self) -> str:
        return f"TelegramObserver(chat_id={self.chat_id!r})"  # the token is a secret

    def send(self, text: str, quiet: bool) -> None:
        """Send ``text`` (Markdown) to the chat; ``OSError`` when Telegram refuses it."""
        payload = {
            "chat_id": self.chat_id,
            "text": text,
            "parse_mode": "Markdown",
            "disable_notification": quiet,
        }
        url = f"{self.api_url}/bot{self._token}/sendMessage"
        body = post_json(url, payload, self.timeout, self._opener)
        try:
            answer = json.loads(body)
        except ValueError:
            raise OSError("the Bot API answered with something that is not JSON") from None
        if not (isinstance(answer, dict) and answer.get("ok")):
            raise OSError(f"the Bot API refused the message: {answer}")

    def _quiet_completion(self) -> bool:
        return bool(self.silent_completion)

    def _fields(self) -> dict:
        fields = super()._fields()
        fields.setdefault("backtrace", "".join(fields.get("fail_trace") or []))
        return fields


def _proxy_with_credentials(url: str, username: str | None, password: str | None) -> str:
    if username is None and password is None:
        return url
    parts = urllib.parse.urlsplit(url)
    user = urllib.parse.quote(username or "", safe="")
    secret = f":{urllib.parse.quote(password, safe='')}" if password is not None else ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{secret}@{host}"))


def _proxy_opener(proxy_url: str) -> Any:
    import urllib.request

    scheme = urllib.parse.urlsplit(proxy_url).scheme
    if scheme not in ("http", "https"):
        raise UsageError(
            f"proxy {scheme}:// is not supported: give an http:// or https:// proxy_url "
            "(Sacred's socks5 proxies need python-telegram-bot)"
        )
    handler = urllib.request.ProxyHandler({"http": proxy_url, "https": proxy_url})
    return urllib.request.build_opener(handler)


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import TelegramObserver``."""
    return TelegramObserver if name == "TelegramObserver" else None
