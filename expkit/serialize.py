"""Turning run data into plain JSON data, the one form every store keeps."""

from __future__ import annotations

import datetime
import json
from typing import Any

from expkit.errors import ExpkitError


class NotStorableError(ExpkitError):
    """A value of a run (its result, an info entry) cannot be kept as JSON data."""


def format_time(t: datetime.datetime | None) -> str | None:
    """ISO time that always carries microseconds (Sacred-era readers parse ``.%f``)."""
    # isoformat with timespec is strftime's "%Y-%m-%dT%H:%M:%S.%f", about five times faster.
    return None if t is None else t.isoformat(timespec="microseconds")


def parse_time(text: str | None) -> datetime.datetime | None:
    """The inverse of :func:`format_time`; also accepts times without microseconds."""
    if text is None:
        return None
    return datetime.datetime.fromisoformat(text)


def utcnow() -> datetime.datetime:
    """Naive UTC now, as Sacred records times."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


_PLAIN = (bool, int, float, str)


def to_data(obj: Any) -> Any:
    """``obj`` as JSON data: numpy scalars and arrays become numbers and lists,
    tuples become lists, times become ISO strings; anything else becomes its repr."""
    if obj is None or type(obj) in _PLAIN:
        return obj
    # Subclasses as their base type: np.float64(0.97) is 0.97, np.str_("a") is "a".
    for base in _PLAIN:
        if isinstance(obj, base):
            return base(obj) if base is not str else str.__str__(obj)
    if isinstance(obj, dict):
        return {str(k): to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_data(v) for v in obj]
    if isinstance(obj, datetime.datetime):
        return format_time(obj)
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist) and type(obj).__module__ == "numpy":
        return to_data(tolist())
    return repr(obj)


def storable_problem(value: Any) -> str | None:
    """Why ``value`` cannot be kept as JSON data (what every store keeps), or None if it can."""
    try:
        json.dumps(to_data(value), allow_nan=True)
    except RecursionError:
        return "it contains itself (or is nested deeper than Python's recursion limit)"
    except Exception as exc:  # an int too long for text, a __repr__ that raises, ...
        return str(exc) or type(exc).__name__
    return None


def dumps(obj: Any) -> str:
    """JSON text as the file store writes it: sorted keys, two-space indent."""
    return json.dumps(to_data(obj), sort_keys=True, indent=2, allow_nan=True)
