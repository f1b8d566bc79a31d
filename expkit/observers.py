"""Sacred's observer interface; the stores themselves live in plugins.

``from expkit.observers import FileStorageObserver`` works because this module
asks the loaded plugins for any name it does not define itself.
"""

from __future__ import annotations

import datetime
from typing import Any


class RunObserver:
    """Base class of Sacred-style observers: override the events you need."""

    priority = 0

    def queued_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        queue_time: datetime.datetime,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> Any:
        """The run was queued; return its id or ``None``."""

    def started_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        start_time: datetime.datetime,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> Any:
        """The run started; return its id or ``None`` to accept the one given."""

    def heartbeat_event(
        self, info: dict, captured_out: str, beat_time: datetime.datetime, result: Any
    ) -> None:
        """Periodic update while the run runs, and once at its end."""

    def completed_event(self, stop_time: datetime.datetime, result: Any) -> None:
        """The run returned ``result``."""

    def interrupted_event(self, interrupt_time: datetime.datetime, status: str) -> None:
        """The run was interrupted with ``status``."""

    def failed_event(self, fail_time: datetime.datetime, fail_trace: list[str]) -> None:
        """The run raised; ``fail_trace`` is the formatted traceback."""

    def resource_event(self, filename: str) -> None:
        """The run used the input file ``filename``."""

    def artifact_event(
        self,
        name: str,
        filename: str,
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> None:
        """The run added ``filename`` as artifact ``name``."""

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        """New metric values: ``{name: {"steps", "values", "timestamps", "name"}}``."""

    def join(self) -> None:
        """Wait until everything sent has been stored."""


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    from expkit.pluginmanager import get_plugin_manager

    cls = get_plugin_manager().hook.expkit_observer_class(name=name)
    if cls is None:
        raise AttributeError(f"module 'expkit.observers' has no attribute {name!r}")
    return cls
