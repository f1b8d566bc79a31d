"""A third-party store for expkit's tests, distributed on its own.

``memstore:///ABS/PATH`` appends every event of a run to the file ``/ABS/PATH``
as one JSON line: ``{"event": ..., "run_id": ..., ...the event's arguments}``.
It is registered under the ``expkit`` entry-point group by the
``expkit_memstore-1.0.dist-info`` beside this package, so putting this folder on
``sys.path`` (``PYTHONPATH``) is all it takes for expkit to load it.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from pathlib import Path
from typing import Any

from expkit.errors import UsageError
from expkit.observers import RunObserver
from expkit.pluginmanager import hookimpl
from expkit.serialize import to_data

SCHEME = "memstore"


class MemStoreObserver(RunObserver):
    """Append each event of a run to ``path`` as a JSON line."""

    priority = 5

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_absolute():
            raise UsageError(f"memstore needs an absolute path, got {str(path)!r}")
        self.run_id: Any = None

    def _write(self, event: str, **fields: Any) -> None:
        line = json.dumps(to_data({"event": event, "run_id": self.run_id, **fields}))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _begin(self, event: str, _id: Any, **fields: Any) -> Any:
        self.run_id = _id if _id is not None else uuid.uuid4().hex
        self._write(event, **fields)
        return self.run_id

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
        """Record the queued run; return its id."""
        return self._begin("queued", _id, name=ex_info["name"], command=command, config=config)

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
        """Record the start of the run; return its id."""
        return self._begin("started", _id, name=ex_info["name"], command=command, config=config)

    def resume(self, _id: Any) -> None:
        """Go on recording run ``_id`` (its spooled events are replayed)."""
        self.run_id = _id

    def heartbeat_event(
        self, info: dict, captured_out: str, beat_time: datetime.datetime, result: Any
    ) -> None:
        """Record the output and result so far."""
        self._write("heartbeat", captured_out=captured_out, result=result)

    def completed_event(self, stop_time: datetime.datetime, result: Any) -> None:
        """Record the run's result."""
        self._write("completed", result=result)

    def interrupted_event(self, interrupt_time: datetime.datetime, status: str) -> None:
        """Record the interrupt's status."""
        self._write("interrupted", status=status)

    def failed_event(self, fail_time: datetime.datetime, fail_trace: list[str]) -> None:
        """Record the failure's traceback."""
        self._write("failed", fail_trace=fail_trace)

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        """Record new metric values as ``{name: [[step, value], ...]}``."""
        points = {
            name: [list(p) for p in zip(m["steps"], m["values"])]
            for name, m in metrics_by_name.items()
        }
        if points:
            self._write("metrics", points=points)


@hookimpl
def expkit_store_for_url(url: str) -> MemStoreObserver | None:
    """Claim ``memstore:///ABS/PATH``."""
    prefix = f"{SCHEME}://"
    if not url.startswith(prefix):
        return None
    return MemStoreObserver(url[len(prefix) :])


@hookimpl
def expkit_store_schemes() -> list[str]:
    """This plugin claims ``memstore://``."""
    return [SCHEME]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import MemStoreObserver``."""
    return MemStoreObserver if name == "MemStoreObserver" else None
