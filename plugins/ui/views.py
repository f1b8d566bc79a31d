"""What the pages show, as JSON data: the runs table, a run, a comparison, a sweep or study.

Every function here takes records (and the :class:`~expkit_plugins.ui.stores.StoreView`
they came from) and returns plain data; the API sends it as it is and the pages
render it, so the two always show the same thing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import mimetypes
import shlex
from collections.abc import Callable
from typing import Any

import attrs

from expkit.errors import UsageError
from expkit.records import RunRecord
from expkit.runs import PROBABLY_DEAD, probably_dead, select_runs
from expkit.serialize import to_data, utcnow
from expkit_plugins.runs import compare, dependencies, differing_keys, flatten, source_names
from expkit_plugins.ui import series

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_COLUMNS = 40  # config columns shown; MLflow's table breaks down with thousands
SHORT_VALUE = 300  # characters of JSON a table cell gets before it is cut
OUTPUT_TAIL = 64 * 1024  # characters of output a run page starts with
MAX_OUTPUT_CHUNK = 1024 * 1024
PREVIEW_BYTES = 64 * 1024
IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/svg+xml"}
)
TEXT_SUFFIXES = frozenset(
    {".txt", ".log", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".md", ".rst", ".py"}
    | {".toml", ".cfg", ".ini", ".out", ".err", ".html", ".xml", ".tex", ".sh"}
)
_HIDDEN_META = ("options", "config_docs", "comment", "tags")
# Columns of the page that are no keys of `expkit runs list`: the page sorts them as text.
_PAGE_COLUMNS: dict[str, Callable[[RunRecord], str]] = {
    "comment": lambda record: record.meta.get("comment") or "",
    "tags": lambda record: ",".join(tags_of(record)),
}


@attrs.frozen
class RunQuery:
    """What the runs table asks for: ``runs list`` filters, sort order and grouping."""

    where: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    experiment: str | None = None
    sort: str = "start_time"
    descending: bool = True
    grouped: bool = True


@attrs.frozen
class Selection:
    """The runs a query picks, in order, and the config columns that differ among them."""

    records: tuple[RunRecord, ...]
    flat: tuple[dict, ...]
    columns: tuple[str, ...]
    hidden_columns: int
    group_sizes: dict


# --- the runs table -----------------------------------------------------------------------


def select(
    listing: Any,
    query: RunQuery,
    fetch: Callable[[str], RunRecord] | None = None,
    beat: float = 10.0,
    options_of: Callable[[RunRecord], dict] | None = None,
) -> Selection:
    """The runs of ``listing`` that pass ``query``, picked and ordered by the code of
    ``expkit runs list``; a bad filter or a key no run has is its :class:`UsageError`.
    ``options_of`` gives a run's options, for its heartbeat interval (PROBABLY_DEAD).

    ``fetch`` reads a whole run, for filters and sorts on ``metrics.X`` and ``info.X``.
    """
    cached = listing.derived.get(query)
    if cached is not None:
        return cached
    by_text = query.sort in _PAGE_COLUMNS
    # Which running runs are probably dead is decided here, by each run's own heartbeat
    # interval: select_runs knows only one interval for all.
    statuses = {s.upper() for s in query.status}
    dead_wanted = PROBABLY_DEAD in statuses
    asked = (statuses - {PROBABLY_DEAD}) | {"RUNNING"} if dead_wanted else query.status
    records = select_runs(
        _Listed(listing.records, fetch),
        where=query.where,
        experiment=query.experiment,
        status=asked or None,  # none given: every status (an empty set: none)
        sort=None if by_text else query.sort,
        descending=query.descending,
        beat_interval=beat,
    )
    if dead_wanted:
        now = utcnow()
        records = [
            r for r in records if r.status in statuses or is_probably_dead(r, now, beat, options_of)
        ]
    if by_text:
        records = _sorted_by_text(records, query.sort, query.descending)
    flats = _flat_configs(listing)
    picked = [(r, flats.get(str(r.id)) or flatten(r.config)) for r in records]
    group_sizes: dict = {}
    for record, _ in picked:
        key = group_of(record)
        if key is not None:
            group_sizes[key] = group_sizes.get(key, 0) + 1
    if query.grouped and group_sizes:
        picked = _grouped(picked)
    columns = differing_keys([flat for _, flat in picked])
    selection = Selection(
        records=tuple(r for r, _ in picked),
        flat=tuple(f for _, f in picked),
        columns=tuple(columns[:MAX_COLUMNS]),
        hidden_columns=max(0, len(columns) - MAX_COLUMNS),
        group_sizes=group_sizes,
    )
    # Which runs are probably dead changes with the clock, not with the listing.
    if PROBABLY_DEAD not in {s.upper() for s in query.status}:
        if len(listing.derived) > 32:
            listing.derived.clear()
        listing.derived[query] = selection
    return selection


def prepare(listing: Any, beat: float = 10.0) -> None:
    """Derive what the runs table's first page needs, before any page asks for it."""
    select(listing, RunQuery(), beat=beat)


def runs_page(
    store: Any,
    query: RunQuery,
    offset: int,
    limit: int,
    now: datetime.datetime,
    beat: float,
) -> dict:
    """One page of the runs table: rows, columns, the total and the store's state."""
    listing = store.listing()
    selection = select(listing, query, store.record, beat, store.options_of)
    page = range(offset, min(offset + limit, len(selection.records)))
    return {
        "store": store.index,
        "store_url": store.url,
        "store_error": listing.error,
        "total": len(selection.records),
        "all": len(listing.records),
        "offset": offset,
        "limit": limit,
        "sort": query.sort,
        "descending": query.descending,
        "columns": list(selection.columns),
        "hidden_columns": selection.hidden_columns,
        "rows": [
            run_row(selection.records[i], selection.flat[i], selection, now, beat, store)
            for i in page
        ],
    }


def run_row(
    record: RunRecord,
    flat: dict,
    selection: Selection,
    now: datetime.datetime,
    beat: float,
    store: Any = None,
) -> dict:
    """A row of the runs table (``store``: where a running run's options are found)."""
    group = group_of(record)
    return {
        "id": to_data(record.id),
        "experiment": record.experiment,
        "status": record.status,
        "probably_dead": is_probably_dead(
            record, now, beat, None if store is None else store.options_of
        ),
        "start_time": to_data(record.start_time),
        "stop_time": to_data(record.stop_time),
        "heartbeat": to_data(record.heartbeat),
        "duration": _seconds(record.duration),
        "result": short(record.result),
        "config": {k: short(flat[k]) for k in selection.columns if k in flat},
        "comment": record.meta.get("comment") or "",
        "tags": tags_of(record),
        "group": None
        if group is None
        else {
            "kind": group[0],
            "key": group[1],
            "size": selection.group_sizes.get(group, 0),
            "position": _group_position(record, group[0]),
        },
    }


def short(value: Any) -> Any:
    """``value`` as JSON data, or as cut JSON text (``{"cut": ...}``) when it is long."""
    data = to_data(value)
    if isinstance(data, (dict, list)) or (isinstance(data, str) and len(data) > SHORT_VALUE):
        text = data if isinstance(data, str) else json.dumps(data, sort_keys=True)
        if len(text) > SHORT_VALUE:
            return {"cut": text[:SHORT_VALUE] + "…"}
    return data


def beat_of(record: RunRecord, default: float, options: dict | None = None) -> float | None:
    """The heartbeat interval the run was started with (``meta.options["--beat-interval"]``,
    or ``options`` given), else ``default`` (the server's setting); ``None``: the run beats
    only at its end."""
    if options is None:
        options = record.meta.get("options")
    raw = options.get("--beat-interval") if isinstance(options, dict) else None
    if raw is None or isinstance(raw, bool):
        return default
    try:
        beat = float(raw)
    except (TypeError, ValueError):
        return default
    if math.isnan(beat):
        return default
    return beat if beat > 0 else None


def is_probably_dead(
    record: RunRecord,
    now: datetime.datetime,
    default_beat: float,
    options_of: Callable[[RunRecord], dict] | None = None,
) -> bool:
    """Whether the run says RUNNING but missed three of its own heartbeats. A run that
    beats only at its end cannot be told dead: it is taken as running.

    A summary (of a listing) holds no options: ``options_of`` finds them for it."""
    if record.status != "RUNNING":
        return False
    options = None if options_of is None else options_of(record)
    beat = beat_of(record, default_beat, options)
    return beat is not None and probably_dead(record, now, beat)


def version_of(record: RunRecord) -> str:
    """What an edit is checked against: the run (its id and start time, which tell it
    from a later run stored under a deleted one's id) and its comment and tags."""
    data = [to_data(record.id), to_data(record.start_time), record.meta.get("comment") or ""]
    data.append(tags_of(record))
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def tags_of(record: RunRecord) -> list[str]:
    """The run's tags (``meta.tags``), as a list of strings."""
    tags = record.meta.get("tags")
    return [str(t) for t in tags] if isinstance(tags, list) else []


def group_of(record: RunRecord) -> tuple[str, str] | None:
    """``("sweep", id)`` or ``("study", name)`` when the run is part of one."""
    sweep = record.meta.get("sweep")
    if isinstance(sweep, dict) and sweep.get("id") is not None:
        return ("sweep", str(sweep["id"]))
    study = record.meta.get("study")
    if isinstance(study, dict) and study.get("name") is not None:
        return ("study", str(study["name"]))
    return None


# --- sweeps and studies -------------------------------------------------------------------


def groups(store: Any) -> list[dict]:
    """Every sweep and study in the store, with its size and statuses."""
    found: dict[tuple[str, str], dict] = {}
    for record in store.listing().records:
        key = group_of(record)
        if key is None:
            continue
        entry = found.setdefault(
            key, {"kind": key[0], "key": key[1], "runs": 0, "statuses": {}, "experiment": ""}
        )
        entry["runs"] += 1
        entry["experiment"] = entry["experiment"] or record.experiment
        entry["statuses"][record.status] = entry["statuses"].get(record.status, 0) + 1
    return list(found.values())


def group_report(store: Any, kind: str, key: str) -> dict:
    """A sweep's or study's runs: each one's parameters and result; :class:`KeyError` if none."""
    members = [r for r in store.listing().records if group_of(r) == (kind, key)]
    if not members:
        raise KeyError(f"no {kind} {key!r} in {store.url}")
    members.sort(key=lambda r: _position_order(_group_position(r, kind)))
    flats = [flatten(r.config) for r in members]
    params = _group_params(members, flats)
    results = [to_data(r.result) for r in members]
    return {
        "store": store.index,
        "kind": kind,
        "key": key,
        "experiment": members[0].experiment,
        "params": params,
        "objectives": _objectives(results),
        "runs": [
            {
                "id": to_data(r.id),
                "status": r.status,
                "position": _group_position(r, kind),
                "params": {p: short(f.get(p)) for p in params},
                "result": results[i],
            }
            for i, (r, f) in enumerate(zip(members, flats))
        ],
    }


def _group_params(members: list[RunRecord], flats: list[dict]) -> list[str]:
    declared: dict[str, None] = {}
    for record in members:
        sweep = record.meta.get("sweep")
        named = sweep.get("params") if isinstance(sweep, dict) else None
        if isinstance(named, (dict, list)):  # {name: value} or [name, ...]
            declared.update(dict.fromkeys(str(k) for k in named))
    if declared:
        return list(declared)
    # A study (or a sweep that names no parameters): what varies, but the per-run seed.
    return [k for k in differing_keys(flats) if k != "seed"]


def _objectives(results: list[Any]) -> list[str]:
    """What a group's runs can be plotted against: the result, or each number in it."""
    if any(_is_number(r) for r in results):
        return ["result"]
    keys: dict[str, None] = {}
    for result in results:
        if isinstance(result, dict):
            keys.update(dict.fromkeys(f"result.{k}" for k, v in result.items() if _is_number(v)))
    return list(keys)


def _group_position(record: RunRecord, kind: str) -> Any:
    entry = record.meta.get(kind)
    if not isinstance(entry, dict):
        return None
    return to_data(entry.get("index" if kind == "sweep" else "trial"))


def _position_order(position: Any) -> tuple:
    return (0, position) if _is_number(position) else (1, str(position))


# --- one run ------------------------------------------------------------------------------


def run_detail(
    store: Any, record: RunRecord, now: datetime.datetime, beat: float, allow_delete: bool
) -> dict:
    """Everything about a run but its output and metric values, which have their own calls."""
    info = record.experiment_info
    docs = _config_docs(record.meta)
    meta = {k: v for k, v in record.meta.items() if k not in _HIDDEN_META}
    options = record.meta.get("options")
    if isinstance(options, dict):
        meta["options"] = {k: v for k, v in options.items() if v not in (None, False, [], {})}
    dead = is_probably_dead(record, now, beat)
    group = group_of(record)
    return {
        "store": store.index,
        "store_url": store.url,
        "id": to_data(record.id),
        "experiment": record.experiment,
        "status": record.status,
        "probably_dead": dead,
        "running": record.status == "RUNNING" and not dead,
        "beat_interval": beat_of(record, beat),
        "version": version_of(record),
        "command": record.command,
        "start_time": to_data(record.start_time),
        "stop_time": to_data(record.stop_time),
        "heartbeat": to_data(record.heartbeat),
        "duration": _seconds(record.duration),
        "result": to_data(record.result),
        "fail_trace": "".join(record.fail_trace) if record.fail_trace else None,
        "config": [
            {"key": k, "value": to_data(v), "doc": docs.get(k, "")}
            for k, v in flatten(record.config).items()
        ],
        "comment": record.meta.get("comment") or "",
        "tags": tags_of(record),
        "meta": to_data(meta),
        "info": to_data(record.info),
        "host": to_data(record.host),
        "git": repositories(info.get("repositories")),
        "dependencies": [f"{n}=={v}" for n, v in sorted(dependencies(record).items())],
        "base_dir": info.get("base_dir"),
        "mainfile": info.get("mainfile"),
        "sources": source_names(record),
        "artifacts": [{"name": a, "kind": artifact_kind(a)} for a in record.artifacts],
        "resources": [{"path": p, "md5": m} for p, m in record.resources],
        "metrics": metric_summaries(store, record),
        "output_size": len(record.captured_out or ""),
        "rerun": rerun_command(store.url, record),
        "editable": store.editable,
        "deletable": allow_delete and store.deletable,
        "group": None if group is None else {"kind": group[0], "key": group[1]},
    }


def repositories(value: Any) -> list[dict]:
    """The run's git entries, each with a url, a commit and whether it was dirty, whatever
    a damaged or partial record holds (an entry without a url, or no list at all)."""
    entries = value if isinstance(value, list) else [] if value is None else [value]
    shown = []
    for entry in entries:
        entry = to_data(entry) if isinstance(entry, dict) else {"url": to_data(entry)}
        shown.append(
            {
                "url": entry.get("url") or "",
                "commit": entry.get("commit") or "",
                "dirty": bool(entry.get("dirty")),
            }
        )
    return shown


def metric_summaries(store: Any, record: RunRecord) -> list[dict]:
    """Per metric: name, number of points, last, smallest and largest value logged, and
    how many values are NaN or infinite."""
    return [
        {"name": name, **store.series(str(record.id), name, series.summary)}
        for name in sorted(record.metrics or {})
    ]


def output_chunk(
    record: RunRecord, offset: int | None, now: datetime.datetime, beat: float
) -> dict:
    """Captured output from character ``offset`` on (``None``: its last part)."""
    text = record.captured_out or ""
    reset = False
    if offset is None:
        offset = max(0, len(text) - OUTPUT_TAIL)
    elif offset > len(text):
        offset, reset = 0, True  # rewritten shorter (carriage returns folded): start again
    end = min(len(text), offset + MAX_OUTPUT_CHUNK)
    dead = is_probably_dead(record, now, beat)
    return {
        "text": text[offset:end],
        "offset": offset,
        "next": end,
        "size": len(text),
        "reset": reset,
        "status": record.status,
        "probably_dead": dead,
        "running": record.status == "RUNNING" and not dead,
        # A running run's output reaches its store with each of its heartbeats.
        "beat_interval": beat_of(record, beat),
        "heartbeat": to_data(record.heartbeat),
        "stop_time": to_data(record.stop_time),
        "duration": _seconds(record.duration),
        "result": to_data(record.result),
    }


def artifact_kind(name: str) -> str:
    """``image`` (shown), ``text`` (previewed) or ``file`` (downloaded)."""
    content_type, _ = mimetypes.guess_type(name)
    if content_type in IMAGE_TYPES:
        return "image"
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix in TEXT_SUFFIXES or (content_type or "").startswith("text/"):
        return "text"
    return "file"


def preview(data: bytes) -> dict:
    """The start of an artifact as text, or why it has none (binary)."""
    head = data[:PREVIEW_BYTES]
    if b"\0" in head[:8192]:
        return {"text": None, "binary": True, "size": len(data), "truncated": False}
    return {
        "text": head.decode("utf-8", errors="replace"),
        "binary": False,
        "size": len(data),
        "truncated": len(data) > PREVIEW_BYTES,
    }


def rerun_command(store_url: str, record: RunRecord) -> str:
    """The command line that runs ``record`` again from its stored sources."""
    return shlex.join(["expkit", "rerun", str(record.id), "--store", store_url])


# --- comparing runs -----------------------------------------------------------------------


def comparison(store: Any, records: list[RunRecord]) -> dict:
    """Two or more runs side by side: every config entry (differing ones marked), results,
    metrics, and what ``expkit runs diff`` reports (sources, packages, host, git)."""
    flats = [flatten(r.config) for r in records]
    differing = set(differing_keys(flats))
    keys: dict[str, None] = {}
    for flat in flats:
        keys.update(dict.fromkeys(flat))
    report = to_data(compare(store, records))
    if report.get("git"):
        report["git"] = [repositories(repos) for repos in report["git"]]
    metrics: dict[str, None] = {}
    for record in records:
        metrics.update(dict.fromkeys(sorted(record.metrics or {})))
    report.update(
        {
            "store": store.index,
            "store_url": store.url,
            "experiments": [r.experiment for r in records],
            "statuses": [r.status for r in records],
            "results": [to_data(r.result) for r in records],
            "config_table": [
                {
                    "key": k,
                    "values": [to_data(f[k]) if k in f else None for f in flats],
                    # A run without the entry is shown apart from one whose value is null.
                    "present": [k in f for f in flats],
                    "differs": k in differing,
                }
                for k in keys
            ],
            "metric_names": list(metrics),
        }
    )
    return report


# --- helpers ------------------------------------------------------------------------------


def parse_tags(value: Any) -> list[str]:
    """Tags as the API takes them: a list of words, or one text of comma-separated words."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise UsageError("tags must be a list of strings (or one text of comma-separated tags)")
    tags: dict[str, None] = {}
    for tag in value:
        tag = " ".join(tag.split())
        if len(tag) > 100:
            raise UsageError(f"tag {tag[:20]!r}... is longer than 100 characters")
        if tag:
            tags[tag] = None
    return list(tags)


def split_filters(text: str) -> list[str]:
    """``C>1, kernel=="rbf"`` as ``["C>1", 'kernel=="rbf"']``: split at commas and
    semicolons outside quotes and brackets."""
    parts, current, depth, quote = [], [], 0, ""
    for char in text:
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char in ",;" and depth <= 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _config_docs(meta: dict) -> dict[str, str]:
    pairs = meta.get("config_docs")
    if not isinstance(pairs, list):
        return {}
    return {str(p[0]): str(p[1]) for p in pairs if isinstance(p, list) and len(p) == 2}


class _Listed:
    """A listing read as a store: ``select_runs`` picks from the kept summaries, and reads
    whole runs through ``fetch`` (without it, the summaries are all there is)."""

    def __init__(
        self, records: tuple[RunRecord, ...], fetch: Callable[[str], RunRecord] | None
    ) -> None:
        self.records = records
        self.fetch = fetch

    def list_runs(self) -> list[RunRecord]:
        """The kept summaries."""
        return list(self.records)

    def get_run(self, run_id: Any) -> RunRecord:
        """Run ``run_id`` whole, or its summary without ``fetch``; :class:`KeyError` if none."""
        if self.fetch is not None:
            return self.fetch(str(run_id))
        for record in self.records:
            if str(record.id) == str(run_id):
                return record
        raise KeyError(run_id)


def _flat_configs(listing: Any) -> dict[str, dict]:
    flats = listing.derived.get("flat")
    if flats is None:
        flats = {str(r.id): flatten(r.config) for r in listing.records}
        listing.derived["flat"] = flats
    return flats


def _grouped(picked: list[tuple[RunRecord, dict]]) -> list[tuple[RunRecord, dict]]:
    """Each sweep's or study's runs together, where the first of them is in the order."""
    buckets: dict[Any, list] = {}
    for i, pair in enumerate(picked):
        buckets.setdefault(group_of(pair[0]) or i, []).append(pair)
    return [pair for bucket in buckets.values() for pair in bucket]


def _sorted_by_text(records: list[RunRecord], key: str, descending: bool) -> list[RunRecord]:
    """Sorted by one of the page's own text columns; runs with none of it last."""
    texts = [(_PAGE_COLUMNS[key](r), r) for r in records]
    present = sorted(((t, r) for t, r in texts if t), key=lambda p: p[0], reverse=descending)
    return [r for _, r in present] + [r for t, r in texts if not t]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seconds(delta: datetime.timedelta | None) -> float | None:
    return None if delta is None else delta.total_seconds()
