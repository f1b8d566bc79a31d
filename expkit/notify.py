"""Notifying observers (Slack, Telegram): the run's fields, the templates, one HTTP POST.

A notification is sent once, with a timeout; when it cannot be sent, a warning says why
and the run goes on. It is not spooled for later: a late "completed" message would
mislead more than a missing one.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from expkit.errors import UsageError
from expkit.observers import RunObserver

log = logging.getLogger("expkit.notify")

DEFAULT_PRIORITY = 10
DEFAULT_TIMEOUT = 10.0

_PERIODS = (
    ("year", 365 * 24 * 3600),
    ("month", 30 * 24 * 3600),
    ("day", 24 * 3600),
    ("hour", 3600),
    ("minute", 60),
    ("second", 1),
)


def elapsed_text(delta: datetime.timedelta) -> str:
    """``delta`` as Sacred words it: ``"1 hour, 2 seconds"``, or ``"less than a second"``."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "less than a second"
    parts = []
    for name, length in _PERIODS:
        count, seconds = divmod(seconds, length)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    return ", ".join(parts)


def load_settings(filename: str | os.PathLike) -> dict:
    """The settings in a JSON, TOML or YAML file (the config file formats expkit reads)."""
    from expkit.configuration import load_config_file
    from expkit.pluginmanager import get_plugin_manager

    return load_config_file(os.fspath(filename), get_plugin_manager())


def post_json(url: str, payload: Mapping, timeout: float, opener: Any = None) -> bytes:
    """POST ``payload`` as JSON to ``url``; the response body, or ``OSError`` naming the status."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json", "Accept": "text/plain, application/json"},
        method="POST",
    )
    open_url = opener.open if opener is not None else urllib.request.urlopen
    try:
        with open_url(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace").strip()
        raise OSError(f"HTTP {exc.code} {exc.reason}: {body[:200]}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None


class NotifyingObserver(RunObserver):
    """An observer that sends a message when a run starts, completes, fails or is interrupted.

    A ``*_text`` template is formatted with the run's fields: ``_id``, ``config``,
    ``experiment`` (``{experiment[name]}``), ``command``, ``host_info``, ``start_time``, and
    at the end ``elapsed_time`` with ``result`` and ``stop_time``, ``status`` and
    ``interrupt_time``, or ``error``, ``fail_trace`` and ``fail_time``. ``None`` sends nothing.
    """

    service = "notification"
    started_text: str | None = None
    completed_text: str | None = None
    interrupted_text: str | None = None
    failed_text: str | None = None

    def __init__(self, priority: int, timeout: float) -> None:
        self.priority = priority
        self.timeout = timeout
        self.run: dict | None = None

    def started_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        start_time: datetime.datetime,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> None:
        """Remember the run's fields; send ``started_text`` (quietly) if there is one."""
        self.run = {
            "_id": _id,
            "config": config,
            "start_time": start_time,
            "experiment": ex_info,
            "command": command,
            "host_info": host_info,
        }
        self._notify("started", quiet=True)

    def completed_event(self, stop_time: datetime.datetime, result: Any) -> None:
        """Send ``completed_text``."""
        self._end(stop_time, result=result, stop_time=stop_time)
        self._notify("completed", quiet=self._quiet_completion())

    def interrupted_event(self, interrupt_time: datetime.datetime, status: str) -> None:
        """Send ``interrupted_text``."""
        self._end(interrupt_time, status=status, interrupt_time=interrupt_time)
        self._notify("interrupted", quiet=False)

    def failed_event(self, fail_time: datetime.datetime, fail_trace: list[str]) -> None:
        """Send ``failed_text``; ``{error}`` is the last line of the traceback."""
        trace = list(fail_trace or [])
        error = trace[-1].strip() if trace else ""
        self._end(fail_time, fail_trace=trace, error=error, fail_time=fail_time)
        self._notify("failed", quiet=False)

    def _end(self, when: datetime.datetime, **fields: Any) -> None:
        if self.run is None:
            self.run = {}  # an event without a start (a resumed run): the fields we have
        start = self.run.get("start_time")
        self.run.update(fields)
        self.run["elapsed_time"] = elapsed_text(when - start) if start else "an unknown time"

    def _quiet_completion(self) -> bool:
        return False

    def _fields(self) -> dict:
        return dict(self.run or {})

    # Sacred's names for the filled-in messages.
    def get_started_text(self) -> str:
        """``started_text`` filled in with the run's fields."""
        return str(self.started_text).format(**self._fields())

    def get_completed_text(self) -> str:
        """``completed_text`` filled in with the run's fields."""
        return str(self.completed_text).format(**self._fields())

    def get_interrupted_text(self) -> str:
        """``interrupted_text`` filled in with the run's fields."""
        return str(self.interrupted_text).format(**self._fields())

    def get_failed_text(self) -> str:
        """``failed_text`` filled in with the run's fields."""
        return str(self.failed_text).format(**self._fields())

    def _notify(self, event: str, quiet: bool) -> None:
        if getattr(self, f"{event}_text") is None:
            return
        try:
            text = getattr(self, f"get_{event}_text")()
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            log.warning(
                "%s %s_text cannot be filled in (%s: %s); fields: %s",
                self.service,
                event,
                type(exc).__name__,
                exc,
                ", ".join(sorted(self._fields())),
            )
            return
        try:
            self.send(text, quiet)
        except OSError as exc:
            log.warning("%s message for the %s run not sent: %s", self.service, event, exc)

    def send(self, text: str, quiet: bool) -> None:
        """Deliver one message; ``OSError`` when it could not be delivered."""
        raise NotImplementedError


def check_settings(
    settings: Mapping,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    filename: Any,
    what: str,
) -> None:
    """A clear error when a settings file lacks a required key or has an unknown one."""
    where = f"{what} settings file {os.fspath(filename)!r}"
    missing = [k for k in required if k not in settings]
    if missing:
        raise UsageError(f"{where} lacks {', '.join(map(repr, missing))}")
    unknown = sorted(set(settings) - set(required) - set(optional))
    if unknown:
        known = ", ".join(required + optional)
        raise UsageError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {known}")
