"""Sacred's observer interface; the stores themselves live in plugins.

``from expkit.observers import FileStorageObserver`` works because this module
asks the loaded plugins for any name it does not define itself.
"""

from __future__ import annotations

import bisect
import datetime
import math
from collections.abc import Iterator, Sequence
from typing import Any, AnyStr

_EPOCH = datetime.datetime(1970, 1, 1)
_CHUNK = 1 << 16  # points formatted at once: bounds the memory a big batch needs on top


class RunObserver:
    """Base class of Sacred-style observers: override the events you need."""

    priority = 0

    @property
    def name(self) -> str:
        """What messages about this store call it."""
        return type(self).__name__

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

    def copied_resource_event(self, filename: str, original: str) -> None:
        """The run used the input file ``original``, now in ``filename`` (by default passed on)."""
        self.resource_event(filename)

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

    def log_metric_columns(self, columns: dict, info: dict) -> None:
        """``log_metrics`` with epoch-second timestamps (by default converted and passed on)."""
        self.log_metrics(metrics_by_name=columns_to_sacred(columns), info=info)

    def join(self) -> None:
        """Wait until everything sent has been stored."""


def deprecated_create(cls: type, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` with Sacred 0.8.7's deprecation warning for ``cls.create``."""
    import warnings

    name = cls.__name__
    warnings.warn(
        f"{name}.create(...) is deprecated. Please use {name}(...) instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    return cls(*args, **kwargs)


def QueueObserver(  # Sacred's class name, kept for imports
    observer: Any, interval: float = 20.0, retry_interval: float = 10.0
) -> Any:
    """Sacred's queue around an observer: ``observer`` itself, since expkit queues every store.

    Every store's events are delivered by a guard that retries a failing store and spools
    what it cannot write (docs: Stores), which is what Sacred's background queue was for.
    """
    return observer


def columns_to_sacred(columns: dict) -> dict:
    """``log_metric_columns``' argument as ``log_metrics``' (UTC datetimes for timestamps)."""
    # Copies: an observer that changes its lists must not change what the stores got.
    return {
        name: {
            "steps": list(series["steps"]),
            "values": list(series["values"]),
            "timestamps": utc_datetimes(series["timestamps"]),
            "name": name,
        }
        for name, series in columns.items()
    }


def utc_datetimes(stamps: Sequence[float]) -> list[datetime.datetime]:
    """Seconds since the epoch as naive UTC datetimes, as ``datetime.utcfromtimestamp`` gives."""
    out: list[datetime.datetime] = []
    make = datetime.datetime
    for second, micros in _split_seconds(stamps):
        y, mo, d, h, mi, s = _utc(second).timetuple()[:6]
        out += [make(y, mo, d, h, mi, s, us) for us in map(round, micros)]
    return out


def utc_isoformat(stamps: Sequence[float]) -> list[str]:
    """:func:`utc_datetimes` as ``isoformat(timespec="microseconds")`` strings, made faster."""
    out: list[str] = []
    for second, micros in _split_seconds(stamps):
        out += _format_micros(second, micros, "%s.%%06.0f,").split(",")
    return out


def utc_isoformat_json(stamps: Sequence[float]) -> bytes:
    """The JSON array of :func:`utc_isoformat` as ASCII, made without a string per point."""
    parts = [
        _format_micros(second, micros, b'"%s.%%06.0f",')
        for second, micros in _split_seconds(stamps)
    ]
    return b"[" + b",".join(parts) + b"]"


def _utc(second: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(seconds=second)


def _format_micros(second: int, micros: list, pattern: AnyStr) -> AnyStr:
    # One % over a whole run of points costs half of formatting them one by one (bytes are
    # faster still); "%.0f" rounds half to even, as datetime does.
    prefix = _utc(second).isoformat()
    template = pattern % (prefix.encode() if isinstance(pattern, bytes) else prefix)
    return (template * len(micros))[:-1] % tuple(micros)


def _split_seconds(stamps: Sequence[float]) -> Iterator[tuple[int, list]]:
    """``stamps`` as runs of (whole second, microseconds in it, still to be rounded), in order.

    The microseconds round as in ``datetime.utcfromtimestamp``: the fraction of the
    truncated seconds times 10**6, half to even, carried into the next second at 10**6.
    """
    if not isinstance(stamps, list):
        stamps = list(stamps)
    n = len(stamps)
    if n and stamps[0] >= 0 and stamps == sorted(stamps):
        # After 1970 and in order, the usual case: each second is one slice, found by bisection.
        start = 0
        while start < n:
            second = int(stamps[start])
            end = min(bisect.bisect_left(stamps, second + 1, start), start + _CHUNK)
            shift = float(second).__rsub__
            micros = list(map((1e6).__mul__, map(shift, stamps[start:end])))
            carried = bisect.bisect_left(micros, 999_999.5)  # these round to 10**6
            if carried:
                yield second, micros[:carried]
            if carried < len(micros):
                yield second + 1, [0] * (len(micros) - carried)
            start = end
        return
    runs: list[tuple[int, list]] = []
    for t in stamps:
        second, us = _split_one(t)
        if runs and runs[-1][0] == second and len(runs[-1][1]) < _CHUNK:
            runs[-1][1].append(us)
        else:
            runs.append((second, [us]))
    yield from runs


def _split_one(t: float) -> tuple[int, int]:
    frac, whole = math.modf(t)
    us = round(frac * 1e6)
    second = int(whole)
    if us >= 1_000_000:
        return second + 1, us - 1_000_000
    if us < 0:
        return second - 1, us + 1_000_000
    return second, us


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    from expkit.pluginmanager import get_plugin_manager

    cls = get_plugin_manager().hook.expkit_observer_class(name=name)
    if cls is None:
        raise AttributeError(f"module 'expkit.observers' has no attribute {name!r}")
    return cls
