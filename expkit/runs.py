"""Find stored runs: the Python side of ``expkit runs`` over every store.

::

    from expkit.runs import runs, get_run

    best = runs("runs/", where=["C>1", 'dataset.name=="iris"'], status="COMPLETED",
                sort="result", limit=5)
    record = get_run("mongodb://localhost/sacred", 7)

A filter is ``KEY OP VALUE`` with ``OP`` one of ``== != < <= > >=``. ``KEY`` is a
dotted path into the config (``optimizer.lr``), or one of the run's own fields:
``id``, ``experiment``, ``status``, ``command``, ``result`` (``result.acc`` when
the result is a dict), ``config.X`` when a config entry is named like those.
``VALUE`` is a Python literal (``0.1``, ``"iris"``, ``[1, 2]``, ``True``) or a bare
word, taken as a string (``status==FAILED``). Filters are parsed by hand, never
evaluated. A run that lacks the key, or whose value cannot be ordered against
``VALUE``, does not match.
"""

from __future__ import annotations

import datetime
import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from expkit.errors import UsageError
from expkit.records import RunRecord
from expkit.serialize import utcnow
from expkit.utils import parse_literal, redact_url

__all__ = [
    "Filter",
    "RunNotFoundError",
    "get_run",
    "parse_filter",
    "probably_dead",
    "reader_for_url",
    "runs",
    "to_dataframe",
]

PROBABLY_DEAD = "PROBABLY_DEAD"
# Omniboard calls a run dead after 120 s without a heartbeat, that is 3 of its intervals.
DEAD_AFTER_BEATS = 3
_RUN_FIELDS = ("id", "experiment", "status", "command", "result")
_SORT_FIELDS = ("start_time", "stop_time", "heartbeat", "duration")

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}
_KEY = re.compile(r"[A-Za-z_][\w\-]*(\.[\w\-]+)*")
_OPERATOR = re.compile(r"==|!=|<=|>=|<|>")
_BARE_WORD = re.compile(r"[\w.\-+:/@]+")


class RunNotFoundError(UsageError, KeyError):
    """The store holds no run with the id asked for."""

    __str__ = UsageError.__str__  # KeyError would show the message quoted


@attrs.frozen
class Filter:
    """One parsed ``KEY OP VALUE`` filter; :meth:`matches` tests a run against it."""

    text: str
    key: str
    op: str
    value: Any

    def matches(self, record: RunRecord) -> bool:
        """Whether ``record`` has ``key`` and its value compares with ``value`` as asked."""
        found, actual = lookup(record, self.key)
        if not found:
            return False
        expected = self.value
        if self.key == "status" and isinstance(expected, str):
            expected = expected.upper()
        if self.key == "id":
            actual, expected = _comparable_id(actual), _comparable_id(expected)
        try:
            return bool(_OPERATORS[self.op](actual, expected))
        except TypeError:
            return False  # e.g. a number against a string: no order, no match


def parse_filter(text: str) -> Filter:
    """Parse ``KEY OP VALUE``; a malformed filter is a one-line :class:`UsageError`."""
    pos = _skip_spaces(text, 0)
    key = _KEY.match(text, pos)
    if key is None:
        what = "expected a key such as C or dataset.name"
        raise _filter_error(text, pos + 1, f"{what}; got {_describe(text, pos)}")
    pos = _skip_spaces(text, key.end())
    op = _OPERATOR.match(text, pos)
    if op is None:
        what = "expected one of == != < <= > >="
        hint = " (compare with '==')" if text[pos : pos + 1] == "=" else ""
        raise _filter_error(text, pos + 1, f"{what}; got {_describe(text, pos)}{hint}")
    pos = _skip_spaces(text, op.end())
    raw = text[pos:].strip()
    if not raw:
        raise _filter_error(text, pos + 1, "expected a value; got end of input")
    if raw[0] in "=<>!":
        raise _filter_error(text, pos + 1, f"unexpected {raw[0]!r} after {op.group()!r}")
    try:
        value = parse_literal(raw)
    except ValueError as exc:
        raise _filter_error(text, pos + 1, str(exc)) from None
    if value == raw and not _BARE_WORD.fullmatch(raw):
        # "C>1 and D<2" would otherwise compare C with the text "1 and D<2".
        what = f"{raw!r} is neither a Python literal nor one word; quote a text value"
        raise _filter_error(text, pos + 1, what)
    return Filter(text, key.group(), op.group(), value)


def lookup(record: RunRecord, key: str) -> tuple[bool, Any]:
    """``(found, value)`` of a filter or sort ``key`` in ``record``."""
    first, _, rest = key.partition(".")
    if first in _RUN_FIELDS:
        value = _comparable_id(record.id) if first == "id" else getattr(record, first)
        return _dig(value, rest) if rest else (True, value)
    if first in _SORT_FIELDS and not rest:
        return True, getattr(record, first)
    if first == "config" and rest:
        return _dig(record.config, rest)
    return _dig(record.config, key)


def probably_dead(
    record: RunRecord,
    now: datetime.datetime | None = None,
    beat_interval: float = 10.0,
) -> bool:
    """Whether ``record`` says RUNNING but has not beaten for more than 3 intervals.

    ``now`` defaults to the current UTC time (stores keep naive UTC times).
    """
    if record.status != "RUNNING":
        return False
    last = record.heartbeat or record.start_time
    if last is None:
        return False
    now = utcnow() if now is None else _naive_utc(now)
    return now - _naive_utc(last) > datetime.timedelta(seconds=DEAD_AFTER_BEATS * beat_interval)


def reader_for_url(store_url: str, plugin_manager: Any = None) -> Any:
    """The reader a store plugin gives for ``store_url``; a URL nobody reads is a UsageError."""
    pm = plugin_manager or _default_plugin_manager()
    reader = pm.hook.expkit_reader_for_url(url=str(store_url))
    if reader is None:
        schemes = sorted({s for part in pm.hook.expkit_store_schemes() for s in part or ()})
        known = ", ".join(s + "://" for s in schemes) or "none"
        raise UsageError(
            f"no store plugin reads {redact_url(str(store_url))!r}; "
            f"known schemes: {known} (or a plain folder path)"
        )
    return reader


def runs(
    store_url: str,
    where: str | Iterable[str] = (),
    experiment: str | None = None,
    status: str | Iterable[str] | None = None,
    since: datetime.datetime | str | None = None,
    until: datetime.datetime | str | None = None,
    sort: str | None = "start_time",
    descending: bool = True,
    limit: int | None = None,
    plugin_manager: Any = None,
    sweep: str | None = None,
) -> list[RunRecord]:
    """The runs in ``store_url`` that pass every filter, sorted and cut to ``limit``.

    ``where`` holds filters (see the module doc), all of which must hold.
    ``experiment`` is a name or a glob pattern. ``status`` is one status or several
    (case does not matter; ``PROBABLY_DEAD`` picks running runs that stopped beating).
    ``since``/``until`` bound the start time (datetimes or ISO text, UTC). ``sort``
    is a run field or a config key; runs without it come last. ``sweep`` keeps the
    points of one sweep (its id, as ``expkit run`` prints it, or the start of it).
    The records are summaries: use :func:`get_run` for a run's output and metrics.
    """
    filters = [parse_filter(where)] if isinstance(where, str) else [parse_filter(w) for w in where]
    wanted = _statuses(status)
    start = _time_bound(since, "since")
    end = _time_bound(until, "until")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise UsageError(f"limit must be a whole number >= 0, got {limit!r}")
    now = utcnow()

    def keep(record: RunRecord) -> bool:
        if experiment is not None and not _name_matches(record.experiment, experiment):
            return False
        if sweep is not None and not _sweep_id(record).startswith(sweep):
            return False
        if wanted is not None and record.status.upper() not in wanted:
            if not (PROBABLY_DEAD in wanted and probably_dead(record, now)):
                return False
        if start is not None and (record.start_time is None or record.start_time < start):
            return False
        if end is not None and (record.start_time is None or record.start_time > end):
            return False
        return all(f.matches(record) for f in filters)

    reader = reader_for_url(store_url, plugin_manager)
    try:
        selected = [r for r in reader.list_runs() if keep(r)]
    finally:
        _close(reader)
    if sort:
        selected = _sorted(selected, sort, descending)
    return selected if limit is None else selected[:limit]


def get_run(store_url: str, run_id: Any, plugin_manager: Any = None) -> RunRecord:
    """Everything ``store_url`` holds about run ``run_id``: config, output, metrics, host, ...

    An unknown id raises :class:`RunNotFoundError` (a :class:`UsageError` and a
    :class:`KeyError`).
    """
    reader = reader_for_url(store_url, plugin_manager)
    try:
        return reader.get_run(run_id)
    except KeyError:
        raise RunNotFoundError(
            f"no run {run_id!r} in the store {redact_url(str(store_url))}"
        ) from None
    finally:
        _close(reader)


def to_dataframe(records: Iterable[RunRecord]) -> Any:
    """A pandas DataFrame of ``records``, one row per run, indexed by id.

    Columns: experiment, status, command, start_time, stop_time, heartbeat,
    duration, result, then every config entry under its dotted key (prefixed
    ``config.`` when it is named like one of the columns before it).
    """
    try:
        import pandas
    except ImportError:
        raise UsageError("to_dataframe needs pandas: pip install pandas") from None
    from expkit.configuration import flatten

    base = ("experiment", "status", "command", "start_time", "stop_time", "heartbeat")
    rows = []
    for record in records:
        row: dict[str, Any] = {"id": record.id}
        row.update((name, getattr(record, name)) for name in base)
        row["duration"] = record.duration
        row["result"] = record.result
        for key, value in flatten(record.config):
            row[f"config.{key}" if key in row else key] = value
        rows.append(row)
    frame = pandas.DataFrame(rows, columns=None if rows else ["id", *base, "duration", "result"])
    return frame.set_index("id")


# --- helpers --------------------------------------------------------------------------------


def _default_plugin_manager() -> Any:
    from expkit.pluginmanager import get_plugin_manager

    return get_plugin_manager()


def _close(reader: Any) -> None:
    close = getattr(reader, "close", None)
    if callable(close):
        close()


def _skip_spaces(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _describe(text: str, pos: int) -> str:
    return "end of input" if pos >= len(text) else repr(text[pos])


def _filter_error(text: str, column: int, what: str) -> UsageError:
    return UsageError(f"wrong filter: {text}: at column {column}: {what}")


def _dig(value: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _comparable_id(value: Any) -> Any:
    # File store ids are folder names ("7"), Mongo's are numbers (7): compare them alike.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


def _statuses(status: str | Iterable[str] | None) -> set[str] | None:
    if status is None:
        return None
    given = [status] if isinstance(status, str) else list(status)
    return {s.upper() for part in given for s in str(part).split(",") if s.strip()}


def _time_bound(value: datetime.datetime | str | None, name: str) -> datetime.datetime | None:
    if value is None or isinstance(value, datetime.datetime):
        return None if value is None else _naive_utc(value)
    try:
        return _naive_utc(datetime.datetime.fromisoformat(str(value)))
    except ValueError:
        raise UsageError(
            f"{name}={value!r} is not an ISO date or time (e.g. 2024-05-01 or 2024-05-01T12:00)"
        ) from None


def _naive_utc(t: datetime.datetime) -> datetime.datetime:
    if t.tzinfo is None:
        return t
    return t.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def _sweep_id(record: RunRecord) -> str:
    point = record.meta.get("sweep") if isinstance(record.meta, dict) else None
    return str(point.get("id", "")) if isinstance(point, dict) else ""


def _name_matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _sorted(records: list[RunRecord], key: str, descending: bool) -> list[RunRecord]:
    """Sorted by ``key``; values of different kinds go in groups, missing values last."""
    present: list[tuple[tuple, RunRecord]] = []
    missing: list[RunRecord] = []
    for record in records:
        found, value = lookup(record, key)
        if not found or value is None:
            missing.append(record)
        else:
            present.append((_sort_key(value), record))
    try:
        present.sort(key=lambda pair: pair[0], reverse=descending)
    except TypeError:  # values of one kind that still do not order (dicts): by text
        present.sort(key=lambda pair: repr(pair[0]), reverse=descending)
    return [record for _, record in present] + missing


def _sort_key(value: Any) -> tuple:
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (0, value)
    if isinstance(value, datetime.timedelta):
        return (0, value.total_seconds())
    if isinstance(value, datetime.datetime):
        return (1, _naive_utc(value))
    if isinstance(value, str):
        return (2, value)
    return (3, repr(value))
