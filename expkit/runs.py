"""Find stored runs: the Python side of ``expkit runs`` over every store.

::

    from expkit.runs import runs, get_run

    best = runs("runs/", where=["C>1", 'dataset.name=="iris"'], status="COMPLETED",
                sort="result", limit=5)
    record = get_run("mongodb://localhost/sacred", 7)

A filter is ``KEY OP VALUE`` with ``OP`` one of ``== != < <= > >=``. ``KEY`` is a
dotted path into the config (``optimizer.lr``), or one of the run's own fields:
``id``, ``experiment``, ``status``, ``command``, ``result`` (``result.acc`` when
the result is a dict), ``start_time``, ``stop_time``, ``heartbeat``, ``duration``
(seconds), ``metrics.NAME`` (the last value logged under ``NAME``, which may hold
dots and slashes: ``metrics.train/loss``), ``info.X`` (a dotted path into the
run's info dict), or ``config.X`` when a config entry is named like one of those.
``VALUE`` is a Python literal (``0.1``, ``"iris"``, ``[1, 2]``, ``True``) or a bare
word, taken as a string (``status==FAILED``). Filters are parsed by hand, never
evaluated. A run that lacks the key, or whose value cannot be ordered against
``VALUE``, does not match; a key that none of the runs has is a :class:`UsageError`
naming the keys it may have meant.

Sorting puts values of one kind together, in this order whichever the direction:
numbers, booleans, times, text, lists, dicts, then the runs without the key (or
with ``null``); the direction orders the values within each kind.

A run id that names no run is tried as the start of one (``2a1a`` for TinyDB's
``2a1a0c...``): a prefix of at least 4 characters that starts exactly one id names
that run. Numeric ids (file and MongoDB stores) are never abbreviated: ``1`` never
means run ``15``.
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
from expkit.store import Query, StoreReader, id_candidates, numeric_id
from expkit.utils import parse_literal, redact_url, suggest

__all__ = [
    "Filter",
    "RunNotFoundError",
    "fetch_run",
    "get_run",
    "lookup",
    "needs_full_record",
    "parse_filter",
    "probably_dead",
    "reader_for_url",
    "runs",
    "select_runs",
    "short_ids",
    "to_dataframe",
    "unknown_key_error",
]

PROBABLY_DEAD = "PROBABLY_DEAD"
# Sacred's, and a RUNNING run whose heartbeat stopped.
STATUSES = ("QUEUED", "RUNNING", "COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT", PROBABLY_DEAD)
# Omniboard calls a run dead after 120 s without a heartbeat, that is 3 of its intervals.
DEAD_AFTER_BEATS = 3
_RUN_FIELDS = ("id", "experiment", "status", "command", "result")
_SORT_FIELDS = ("start_time", "stop_time", "heartbeat", "duration")
# Keys into what only a whole record holds (summaries leave metrics out, some stores info).
_RECORD_FIELDS = ("metrics", "info")
# Run ids shown in a table are cut to this many characters, or more where that is ambiguous.
SHORT_ID_LENGTH = 8
# A run id may be abbreviated to no fewer characters than this (git's shortest, too).
MIN_PREFIX = 4

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
}
_KEY = re.compile(r"[A-Za-z_][\w\-]*(\.[\w\-/]+)*")
_OPERATOR = re.compile(r"==|!=|<=|>=|<|>")
_BARE_WORD = re.compile(r"[\w.\-+:/@]+")


class RunNotFoundError(UsageError, KeyError):
    """The store holds no run with the id asked for (nor one it is the start of)."""

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
            actual, expected = numeric_id(actual), numeric_id(expected)
        if isinstance(actual, datetime.datetime) and isinstance(expected, str):
            try:
                expected = _naive_utc(datetime.datetime.fromisoformat(expected))
            except ValueError:
                return False
            actual = _naive_utc(actual)
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
    _check_kind(text, pos, key.group(), value)
    return Filter(text, key.group(), op.group(), value)


def _check_kind(text: str, pos: int, key: str, value: Any) -> None:
    # A time or a duration against a value of another kind matches nothing: said, not silent.
    if value is None:
        return  # stop_time==None: the runs without one
    if key in ("start_time", "stop_time", "heartbeat"):
        try:
            datetime.datetime.fromisoformat(value if isinstance(value, str) else "")
        except ValueError:
            what = f"{key} compares with an ISO date or time, as in {key}>'2024-05-01'"
            raise _filter_error(text, pos + 1, f"{what}; got {value!r}") from None
    elif key == "duration" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        what = "duration compares with a number of seconds, as in duration<60"
        raise _filter_error(text, pos + 1, f"{what}; got {value!r}")


def lookup(record: RunRecord, key: str) -> tuple[bool, Any]:
    """``(found, value)`` of a filter, sort or column ``key`` in ``record``."""
    first, _, rest = key.partition(".")
    if first in _RUN_FIELDS:
        value = numeric_id(record.id) if first == "id" else getattr(record, first)
        return _dig(value, rest) if rest else (True, value)
    if first in _SORT_FIELDS and not rest:
        if first == "duration":
            duration = record.duration
            return duration is not None, None if duration is None else duration.total_seconds()
        return True, getattr(record, first)
    if first == "metrics" and rest:
        values = ((record.metrics or {}).get(rest) or {}).get("values") or ()
        return (True, values[-1]) if values else (False, None)
    if first == "info" and rest:
        return _dig(record.info, rest)
    if first == "config" and rest:
        return _dig(record.config, rest)
    return _dig(record.config, key)


def needs_full_record(key: str) -> bool:
    """Whether ``key`` reads what only :meth:`get_run` returns (``metrics.X``, ``info.X``)."""
    first, dot, _ = key.partition(".")
    return bool(dot) and first in _RECORD_FIELDS


def known_keys(records: Iterable[RunRecord]) -> list[str]:
    """Every key :func:`lookup` finds in some of ``records``, run fields first."""
    from expkit.configuration import flatten

    keys: dict[str, None] = dict.fromkeys((*_RUN_FIELDS, *_SORT_FIELDS))
    for record in records:
        if isinstance(record.result, dict):
            keys.update(dict.fromkeys(f"result.{k}" for k, _ in flatten(record.result)))
        keys.update(dict.fromkeys(k for k, _ in flatten(record.config)))
        keys.update(dict.fromkeys(f"metrics.{name}" for name in record.metrics or ()))
        keys.update(dict.fromkeys(f"info.{k}" for k, _ in flatten(record.info or {})))
    return list(keys)


def unknown_key_error(key: str, what: str, records: list[RunRecord]) -> UsageError:
    """The error for ``key`` (used in ``what``) that none of ``records`` has, with near misses."""
    import difflib  # only when a key is wrong

    # Near misses of the key itself, or of what follows metrics./info./result./config.:
    # "loss" is most likely the metric "metrics.loss".
    names: dict[str, str] = {}
    for known in known_keys(records):
        names.setdefault(known, known)
        first, dot, rest = known.partition(".")
        if dot and first in ("metrics", "info", "result"):
            names.setdefault(rest, known)
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)
    meant = list(dict.fromkeys(names[c] for c in close))
    hint = f" (did you mean {' or '.join(repr(m) for m in meant)}?)" if meant else ""
    n = len(records)
    runs_text = "the run" if n == 1 else f"any of the {n} runs"
    return UsageError(f"{what}: {key!r} is not a key of {runs_text}{hint}")


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
    """The reader of the runs at ``store_url``; a URL nobody reads is a UsageError."""
    from expkit.store import open_reader

    return open_reader(plugin_manager or _default_plugin_manager(), str(store_url))


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
    beat_interval: float = 10.0,
) -> list[RunRecord]:
    """The runs in ``store_url`` that pass every filter, sorted and cut to ``limit``.

    ``where`` holds filters (see the module doc), all of which must hold.
    ``experiment`` is a name, a glob pattern, or a file of module experiments
    (``exp_iris.py`` for ``exp_iris.py::exp_rbf_svm``). ``status`` is one status or several
    (case does not matter; ``PROBABLY_DEAD`` picks running runs that have not beaten
    for 3 of their ``beat_interval``, in seconds: the project's ``beat_interval``).
    ``since``/``until`` bound the start time (datetimes or ISO text, UTC). ``sort``
    is a run field or a config key; runs without it come last. ``sweep`` keeps the
    points of one sweep (its id, as ``expkit run`` prints it, or the start of it).
    The records are summaries, unless a filter or the sort key reads ``metrics.`` or
    ``info.``: use :func:`get_run` for a run's output and metrics.
    """
    reader = reader_for_url(store_url, plugin_manager)
    try:
        return select_runs(
            reader,
            where=where,
            experiment=experiment,
            status=status,
            since=since,
            until=until,
            sort=sort,
            descending=descending,
            limit=limit,
            sweep=sweep,
            beat_interval=beat_interval,
        )
    finally:
        _close(reader)


def select_runs(
    reader: Any,
    where: str | Iterable[str] = (),
    experiment: str | None = None,
    status: str | Iterable[str] | None = None,
    since: datetime.datetime | str | None = None,
    until: datetime.datetime | str | None = None,
    sort: str | None = "start_time",
    descending: bool = True,
    limit: int | None = None,
    sweep: str | None = None,
    beat_interval: float = 10.0,
) -> list[RunRecord]:
    """:func:`runs` through an open ``reader``, which it asks for whole runs where needed."""
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
            if not (PROBABLY_DEAD in wanted and probably_dead(record, now, beat_interval)):
                return False
        if start is not None and (record.start_time is None or record.start_time < start):
            return False
        return not (end is not None and (record.start_time is None or record.start_time > end))

    # A store that selects runs itself gets what it can answer from summaries: metrics and
    # info keys stay with the core, and so does a name that may be a file of experiments.
    whole = [k for k in [*(f.key for f in filters), sort or ""] if needs_full_record(k)]
    # A name that may be a file of experiments, or a sweep: chosen by the core, after the store.
    widened = (experiment is not None and _may_be_a_file(experiment)) or sweep is not None
    pushed = Query(
        None if widened else experiment,
        frozenset(wanted) if wanted else None,
        start,
        end,
        tuple(f for f in filters if not needs_full_record(f.key)),
        None if whole else sort,
        descending,
        None if whole or widened else limit,
    )
    candidates, exact = _select(reader, pushed)
    candidates = [r for r in candidates if keep(r)]  # a store's selection is checked, too
    exact = exact and not whole and not widened
    if whole:
        candidates = full_records(reader, candidates)
    selected = candidates if exact else [r for r in candidates if _passes(r, filters)]
    if not selected and filters:
        if exact:  # the store filtered: the runs the filters chose from, to check the keys
            broad = attrs.evolve(pushed, where=(), sort=None, limit=None)
            candidates = [r for r in _select(reader, broad)[0] if keep(r)]
        for f in filters:
            if candidates and not any(lookup(r, f.key)[0] for r in candidates):
                sample = full_records(reader, candidates[:_SUGGESTION_SAMPLE])
                raise unknown_key_error(f.key, f"wrong filter: {f.text}", sample)
    if exact:
        return selected
    if sort:
        if selected and not any(lookup(r, sort)[0] for r in selected):
            sample = full_records(reader, selected[:_SUGGESTION_SAMPLE])
            raise unknown_key_error(sort, f"cannot sort by {sort!r}", sample)
        selected = _sorted(selected, sort, descending)
    return selected if limit is None else selected[:limit]


def _select(reader: Any, query: Query) -> tuple[list[RunRecord], bool]:
    if isinstance(reader, StoreReader):
        return reader.select(query)
    return list(reader.list_runs()), False  # a reader of a plugin written before the layer


def _passes(record: RunRecord, filters: list[Filter]) -> bool:
    return all(f.matches(record) for f in filters)


def _may_be_a_file(pattern: str) -> bool:
    return "::" not in pattern and not any(c in pattern for c in "*?[")


# Near misses of a mistyped key are looked for in this many whole runs at most.
_SUGGESTION_SAMPLE = 50


def full_records(reader: Any, records: Iterable[RunRecord]) -> list[RunRecord]:
    """``records`` read whole (metrics, info, output); runs deleted meanwhile are left out."""
    found = []
    for record in records:
        if record.metrics is not None:
            found.append(record)  # whole already
            continue
        try:
            found.append(reader.get_run(record.id))
        except KeyError:
            continue
    return found


def get_run(store_url: str, run_id: Any, plugin_manager: Any = None) -> RunRecord:
    """Everything ``store_url`` holds about run ``run_id``: config, output, metrics, host, ...

    ``run_id`` may be the start of a longer id (see the module doc). An unknown id raises
    :class:`RunNotFoundError` (a :class:`UsageError` and a :class:`KeyError`).
    """
    reader = reader_for_url(store_url, plugin_manager)
    try:
        return fetch_run(reader, run_id, store_url)
    finally:
        _close(reader)


def fetch_run(reader: Any, run_id: Any, store_url: str = "") -> RunRecord:
    """Run ``run_id`` in full from ``reader``: the id as typed, as a number, or a unique prefix.

    A prefix of several ids is a :class:`UsageError` listing them; no match at all is a
    :class:`RunNotFoundError`. ``store_url`` only names the store in those messages.
    """
    for candidate in id_candidates(run_id):
        try:
            return reader.get_run(candidate)
        except KeyError:
            continue
    where = redact_url(str(store_url or getattr(reader, "url", "") or "the store"))
    prefix = str(run_id)
    matches = [r.id for r in reader.list_runs() if _abbreviates(prefix, r.id)]
    if len(matches) == 1:
        return reader.get_run(matches[0])
    if matches:
        shown = ", ".join(str(m) for m in sorted(matches, key=str)[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise UsageError(
            f"run id {prefix!r} is ambiguous in the store {where}: it starts "
            f"{len(matches)} run ids ({shown}{more}); give more of the id"
        )
    raise RunNotFoundError(f"no run {prefix!r} in the store {where}")


def short_ids(ids: Iterable[Any], among: Iterable[Any] = ()) -> dict[str, str]:
    """Each of ``ids`` as text, cut to :data:`SHORT_ID_LENGTH` characters or as many more
    as keep it apart from every id in ``among`` (the whole store); numeric ids stay whole."""
    others = sorted({str(i) for i in among} | {str(i) for i in ids})
    shown = {}
    for run_id in map(str, ids):
        if run_id.isdigit() or len(run_id) <= SHORT_ID_LENGTH:
            shown[run_id] = run_id
            continue
        length = SHORT_ID_LENGTH
        for other in others:
            if other != run_id:
                length = max(length, _common_prefix(run_id, other) + 1)
        shown[run_id] = run_id[:length]
    return shown


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


def _abbreviates(prefix: str, run_id: Any) -> bool:
    # A number never stands for a longer one: run 1 deleted, "1" must not mean run 15; nor
    # does a prefix shorter than git's shortest ("1" must not mean 1b2db113... either).
    text = str(run_id)
    if len(prefix) < MIN_PREFIX or text.isdigit():
        return False
    return text.startswith(prefix) and text != prefix


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _statuses(status: str | Iterable[str] | None) -> set[str] | None:
    if status is None:
        return None
    given = [status] if isinstance(status, str) else list(status)
    wanted = {s.strip().upper() for part in given for s in str(part).split(",") if s.strip()}
    for name in sorted(wanted - set(STATUSES)):
        near = suggest(name, STATUSES)
        if near:  # a typo; a status far from all is an interrupt's own (Sacred's STATUS)
            raise UsageError(f"no run has the status {name!r}{near}")
    return wanted


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
    # "exp_iris.py" picks the experiments of that file, named "exp_iris.py::NAME".
    return name == pattern or name.startswith(pattern + "::") or fnmatch.fnmatchcase(name, pattern)


def _sorted(records: list[RunRecord], key: str, descending: bool) -> list[RunRecord]:
    """Sorted by ``key``: kinds in a fixed order, the direction within each; missing last."""
    kinds: dict[int, list[tuple[Any, RunRecord]]] = {}
    missing: list[RunRecord] = []
    for record in records:
        found, value = lookup(record, key)
        if not found or value is None:
            missing.append(record)
        else:
            kind, comparable = _sort_key(value)
            kinds.setdefault(kind, []).append((comparable, record))
    ordered: list[RunRecord] = []
    for kind in sorted(kinds):
        group = sorted(kinds[kind], key=lambda pair: pair[0], reverse=descending)
        ordered.extend(record for _, record in group)
    return ordered + missing


def _sort_key(value: Any) -> tuple[int, Any]:
    """``(kind, comparable)``: numbers, NaN, booleans, times, text, lists, dicts, the rest.

    Values of one kind always compare, however deep: a list's are its items' keys."""
    if isinstance(value, bool):
        return (2, int(value))
    if isinstance(value, (int, float)):
        return (1, 0) if value != value else (0, value)  # NaN: after every number
    if isinstance(value, datetime.timedelta):
        return (0, value.total_seconds())
    if isinstance(value, datetime.datetime):
        return (3, _naive_utc(value))
    if isinstance(value, str):
        return (4, value)
    if isinstance(value, (list, tuple)):
        return (5, tuple(_sort_key(v) for v in value))
    if isinstance(value, dict):
        return (6, tuple(sorted((str(k), _sort_key(v)) for k, v in value.items())))
    return (7, repr(value))
