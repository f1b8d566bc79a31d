"""``expkit runs SUBCOMMAND``: find, read, compare, fetch from and remove stored runs.

Every store is read through the reader of the backend that claims its URL
(``expkit_store_backends``); the store is ``--store URL``, else ``[tool.expkit] store``,
else ``runs/`` under the project root, as for ``expkit run``. Run ids may be given
as a unique prefix (see :func:`expkit.runs.fetch_run`).
"""

from __future__ import annotations

import datetime
import json
import math
import sys
from collections.abc import Iterable
from typing import IO, Any

import attrs

from expkit.errors import UsageError
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl
from expkit.records import RunRecord
from expkit.serialize import format_time, to_data, utcnow
from expkit.utils import printable, redact_url, rounded, suggest


@attrs.frozen
class Subcommand:
    """One ``expkit runs`` subcommand as its help shows it."""

    synopsis: str
    summary: str
    options: tuple[str, ...] = ()  # the dests of its options, in the order shown


TABLE_LIMIT = 200  # runs a table shows unless --all or --limit
_SELECTION = ("experiment", "status", "since", "until", "sort", "descending", "limit")
SUBCOMMANDS = {
    "list": Subcommand(
        "list [FILTER ...]",
        "the runs as a table that fits the terminal",
        (*_SELECTION, "all", "columns", "wide", "json"),
    ),
    "show": Subcommand(
        "show ID", "everything recorded about a run, a sparkline for each metric", ("json",)
    ),
    "diff": Subcommand(
        "diff ID ID [ID ...]",
        "what differs between runs, from config to metrics",
        ("json",),
    ),
    "rm": Subcommand("rm ID [ID ...]", "delete runs, after asking", ("yes",)),
    "export": Subcommand(
        "export [FILTER ...]",
        "the selected runs in full, a JSON object a line",
        (*_SELECTION, "output"),
    ),
    "metrics": Subcommand(
        "metrics ID [NAME]", "every logged value of a run's metrics", ("csv", "json")
    ),
    "artifact": Subcommand(
        "artifact ID NAME", "an artifact's content, to standard output or a file", ("output",)
    ),
}
_FILTER_HELP = """\
A FILTER is KEY OP VALUE, with OP one of == != < <= > >=, all of which must hold:
  'C>1'  'dataset.name==iris'  'status==FAILED'  'metrics.loss<0.1'  'info.best.C>=2'
KEY is a config entry (dotted: optimizer.lr), a run field (id, experiment, status,
command, result, result.acc, start_time, duration), metrics.NAME (the last value
logged), info.X (the run's info), or config.X for a config entry named like those.
The same keys name columns (--columns) and the sort order (--sort). VALUE is a
Python literal or one word; a key no listed run has is an error that says so."""

# Longest a value is shown in a table before it is shortened (not with --wide).
_VALUE_WIDTH = 24
_LABEL_VALUE_WIDTH = 16
_SPARK_WIDTH = 30
_BLOCKS = "▁▂▃▄▅▆▇█"
_ASCII_BLOCKS = "_.-=+*#@"


@hookimpl
def expkit_addoption(parser: Any) -> None:
    parser.addcommand(
        "runs", "runs SUBCOMMAND", "list, show, diff, rm, export, metrics, artifact", (), "runs"
    )
    group = parser.getgroup("runs", "finding and comparing stored runs (expkit runs --help)")
    group.addoption(
        "--experiment",
        default=None,
        metavar="NAME",
        help="only this experiment (a name, glob or file)",
    )
    group.addoption("--status", default=None, metavar="S", help="only this status (S,S: several)")
    group.addoption("--since", default=None, metavar="ISO", help="only runs started then or after")
    group.addoption("--until", default=None, metavar="ISO", help="only runs started before")
    group.addoption(
        "--sort", default=None, metavar="KEY", help="sort by KEY, smallest first (default: newest)"
    )
    group.addoption("--descending", action="store_true", help="sort from the largest down")
    group.addoption("--limit", type=int, default=None, metavar="N", help="at most N runs")
    group.addoption(
        "--all",
        action="store_true",
        help=f"every run (a table shows the first {TABLE_LIMIT} unless --limit says otherwise)",
    )
    group.addoption(
        "--columns",
        action="append",
        default=[],
        metavar="KEYS",
        help="the columns after id, comma-separated keys: --columns status,C,metrics.loss",
    )
    group.addoption(
        "--wide", action="store_true", help="every config entry, whole values, however wide"
    )
    group.addoption("--json", action="store_true", help="print JSON")
    group.addoption("--csv", action="store_true", help="print CSV: metric,step,value,timestamp")
    group.addoption("--yes", action="store_true", help="delete without asking")
    group.addoption("--output", default=None, metavar="FILE", help="write to FILE (also -o FILE)")


# --- shared with rerun and sync ----------------------------------------------------------------


def store_url(config: Any) -> str:
    """The store the command reads: ``--store``, ``[tool.expkit] store`` or ``runs/``."""
    urls = list(config.getoption("stores") or ())
    if len(urls) > 1:
        raise UsageError(f"expkit {config.command} reads one store; got --store {len(urls)} times")
    if urls:
        return urls[0]
    store = config.settings.store
    if store:
        return store if "://" in store else str(config.rootdir / store)
    return str(config.rootdir / "runs")


def reader_for(pm: Any, url: str) -> Any:
    """The reader of the store at ``url``; a URL no plugin reads is a usage error."""
    from expkit.runs import reader_for_url

    return reader_for_url(url, pm)


def close(reader: Any) -> None:
    """Let go of a reader's or a store's connection, for those that hold one."""
    if callable(getattr(reader, "close", None)):
        reader.close()


def fetch(reader: Any, url: str, run_id: Any) -> RunRecord:
    """Run ``run_id`` in full: the id as typed, as a number, or a unique prefix of one."""
    from expkit.runs import fetch_run

    return fetch_run(reader, run_id, url)


def flatten(config: dict) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; an empty dict stays a value."""
    from expkit.configuration import flatten as leaves

    return dict(leaves(config))


def source_names(record: RunRecord) -> list[str]:
    """The relative names of the sources a run stored."""
    return [str(entry[0]) for entry in record.experiment_info.get("sources") or ()]


def read_sources(reader: Any, record: RunRecord) -> dict[str, bytes]:
    """The content of each source the run stored; a name outside its base dir is refused."""
    sources = {}
    for name in source_names(record):
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise UsageError(f"run {record.id} has a source outside its base dir: {name!r}")
        sources[name] = reader.read_source(record.id, name)
    return sources


def dependencies(record: RunRecord) -> dict[str, str]:
    """The run's packages as ``{name: version}``."""
    found = {}
    for dep in record.experiment_info.get("dependencies") or ():
        name, _, version = str(dep).partition("==")
        found[name] = version
    return found


def source_diff(old: bytes | None, new: bytes | None, old_name: str, new_name: str) -> list[str]:
    """The unified diff, line by line, of two versions of a source (``None``: missing)."""
    import difflib  # here: every `python exp.py` loads this plugin, few compare runs

    diff = difflib.unified_diff(
        _lines(old), _lines(new), fromfile=old_name, tofile=new_name, lineterm=""
    )
    return list(diff)


def _lines(data: bytes | None) -> list[str]:
    return [] if data is None else data.decode("utf-8", errors="replace").splitlines()


def as_json(record: RunRecord) -> dict:
    """The whole record as JSON data (times as ISO strings)."""
    data = to_data(attrs.asdict(record, recurse=False))
    data["duration"] = _seconds(record.duration)
    return data


def _beat(config: Any) -> float:
    return config.settings.beat_interval or 10.0


def _seconds(delta: datetime.timedelta | None) -> float | None:
    return None if delta is None else delta.total_seconds()


def shown_status(
    record: RunRecord, now: datetime.datetime | None = None, beat_interval: float = 10.0
) -> str:
    """The status, with a RUNNING run whose heartbeat is stale as ``PROBABLY_DEAD``."""
    if record.status != "RUNNING":
        return record.status  # most runs of a long listing: no heartbeat to look at
    from expkit.runs import probably_dead

    return "PROBABLY_DEAD" if probably_dead(record, now or utcnow(), beat_interval) else "RUNNING"


# --- the command -------------------------------------------------------------------------------


@hookimpl(trylast=True)
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "runs":
        return None
    args = list(config.getoption("paths") or ())
    sub = args[0] if args else None
    if config.getoption("help"):
        print(help_text(config, sub if sub in SUBCOMMANDS else None))
        return ExitCode.OK
    if sub not in SUBCOMMANDS:
        got = f" {sub!r}" if sub else ""
        raise UsageError(
            f"expkit runs needs a subcommand{got}: one of {', '.join(SUBCOMMANDS)} "
            "(e.g. 'expkit runs list'; 'expkit runs --help' says more)"
        )
    output = _output(config, sub)
    url = store_url(config)
    reader = reader_for(config.pluginmanager, url)
    try:
        # `expkit runs metrics 3 --csv | head`: a closed pipe ends it quietly (expkit.cli).
        return _subcommand(config, reader, url, sub, args[1:], output)
    finally:
        close(reader)


def help_text(config: Any, sub: str | None = None) -> str:
    """``expkit runs --help``, or one subcommand's help."""
    import textwrap

    store = (
        "Runs are read from --store URL, else [tool.expkit] store, else runs/ under the\n"
        "project root. An ID may be the start of a longer one (2a1a for 2a1a0c9e...)."
    )
    if sub is not None:
        command = SUBCOMMANDS[sub]
        summary = command.summary[0].upper() + command.summary[1:]
        lines = [f"usage: expkit runs {command.synopsis} [options]", "", f"{summary}.", ""]
        if "FILTER" in command.synopsis:
            lines += [_FILTER_HELP, ""]
        options = config.parser.format_options([*command.options, "stores", "plugins"])
        return "\n".join([*lines, options.rstrip(), "", store])
    lines = ["usage: expkit runs SUBCOMMAND [ARGS] [options]", "", store, "", "subcommands:"]
    for command in SUBCOMMANDS.values():
        lines.append(f"  {command.synopsis:<22}{command.summary}")
        flags = " ".join(config.parser.option_strings(dest)[-1] for dest in command.options)
        lines += textwrap.wrap(flags, 78, initial_indent=" " * 24, subsequent_indent=" " * 24)
    lines += ["", _FILTER_HELP, "", "'expkit runs SUBCOMMAND --help' shows a subcommand's options."]
    return "\n".join(lines)


def _output(config: Any, sub: str) -> str | None:
    # `-o` is `expkit run`'s KEY=VALUE; for export and artifact it names the output file.
    given = list(config.getoption("overrides") or ())
    output = config.getoption("output")
    if given and sub not in ("export", "artifact"):
        raise UsageError(f"expkit runs {sub} takes no -o (it sets config entries of expkit run)")
    if len(given) + (output is not None) > 1:
        raise UsageError(f"expkit runs {sub} writes one file: give -o FILE once")
    return given[0] if given else output


def _subcommand(
    config: Any, reader: Any, url: str, sub: str, rest: list[str], output: str | None
) -> int:
    if sub == "list":
        return _list(config, reader, url, rest)
    if sub == "export":
        return _export(config, reader, url, rest, output)
    usage = {
        "show": ("one run id", 1, 1),
        "diff": ("two or more run ids", 2, None),
        "rm": ("one or more run ids", 1, None),
        "metrics": ("a run id and maybe a metric name", 1, 2),
        "artifact": ("a run id and an artifact name", 2, 2),
    }
    what, least, most = usage[sub]
    if len(rest) < least or (most is not None and len(rest) > most):
        raise UsageError(f"expkit runs {sub} takes {what}: expkit runs {SUBCOMMANDS[sub].synopsis}")
    if sub == "show":
        return _show(config, fetch(reader, url, rest[0]))
    if sub == "diff":
        return _diff(config, reader, [fetch(reader, url, i) for i in rest])
    if sub == "rm":
        return _rm(config, reader, url, [fetch(reader, url, i) for i in rest])
    if sub == "metrics":
        return _metrics(config, fetch(reader, url, rest[0]), rest[1] if len(rest) > 1 else None)
    return _artifact(reader, fetch(reader, url, rest[0]), rest[1], output)


def _parse_time(text: str | None, option: str) -> datetime.datetime | None:
    if text is None:
        return None
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is no ISO time (e.g. 2024-05-01 or 2024-05-01T12:00)"
        ) from None


def _select(
    config: Any, reader: Any, filters: list[str], limit: int | None = None
) -> list[RunRecord]:
    from expkit.runs import select_runs

    sort = config.getoption("sort")
    order = {"sort": sort, "descending": bool(config.getoption("descending"))} if sort else {}
    sweeps = config.getoption("sweeps") or []  # --sweep ID: the option expkit run sweeps with
    if len(sweeps) > 1:
        raise UsageError("expkit runs list takes one --sweep ID")
    return select_runs(
        reader,
        where=filters,
        experiment=config.getoption("experiment"),
        status=config.getoption("status"),
        since=_parse_time(config.getoption("since"), "--since"),
        until=_parse_time(config.getoption("until"), "--until"),
        limit=config.getoption("limit") if limit is None else limit,
        sweep=sweeps[0] if sweeps else None,
        beat_interval=_beat(config),
        **order,
    )


# --- list --------------------------------------------------------------------------------------

# Where a long value loses characters: names and paths in the middle, JSON at the end,
# experiment names ("exp_iris.py::exp_rbf_svm") at the start.
MIDDLE, END, START = "middle", "end", "start"

# Columns that do not fit go in this order: duration, start time, the config columns (the
# rightmost first), result, experiment. The id and the status always stay.
_KEEP, _DURATION, _START, _CONFIG, _RESULT, _EXPERIMENT = 0, 1, 2, 3, 4, 5


@attrs.frozen
class Column:
    """A column of the runs table: its cells, how narrow it may get and how much it matters."""

    header: str
    cells: list[str]
    narrowest: int | None = None  # None: never shortened
    priority: int = _KEEP  # columns that do not fit go lowest priority first
    cut: str = MIDDLE


def _list(config: Any, reader: Any, url: str, filters: list[str]) -> int:
    from expkit.runs import full_records, needs_full_record, short_ids

    # A table is for reading: the first runs, unless asked for more (one more to know).
    paged = not (config.getoption("json") or config.getoption("all"))
    paged = paged and config.getoption("limit") is None
    records = _select(config, reader, filters, TABLE_LIMIT + 1 if paged else None)
    more = paged and len(records) > TABLE_LIMIT
    records = records[:TABLE_LIMIT] if more else records
    if config.getoption("json"):
        now = utcnow()
        rows = []
        for record in records:
            row = as_json(record)
            row["status"] = shown_status(record, now, _beat(config))
            rows.append(row)
        print(json.dumps(rows, indent=2, sort_keys=True))
        return ExitCode.OK
    where = redact_url(url)
    if not records:
        narrowed = filters or any(config.getoption(o) is not None for o in _SELECTION[:4])
        print(f"no runs in {where}" + (" match" if narrowed else ""))
        return ExitCode.OK
    keys = _chosen_keys(config)
    if keys is not None:
        if any(needs_full_record(k) for k in keys):
            records = full_records(reader, records)
        _check_columns(keys, records)
    ids = short_ids([r.id for r in records], _every_id(reader, records))
    wide = bool(config.getoption("wide"))
    columns = runs_table(records, ids, keys, wide, _beat(config))
    hidden: list[str] = []
    if not wide:
        import shutil  # here: every `python exp.py` loads this plugin, few list runs

        width = shutil.get_terminal_size((80, 24)).columns
        columns, hidden = fit(columns, width)
    rows = [list(row) for row in zip(*(c.cells for c in columns))]
    print(table([c.header for c in columns], rows))
    experiments = {r.experiment for r in records}
    of = f" of {printable(next(iter(experiments)))}" if len(experiments) == 1 else ""
    if more:
        footer = f"{_first_runs(config)}{of} in {where}; more with --all or --limit N"
    else:
        footer = f"{_count(len(records), 'run')}{of} in {where}"
    if hidden:
        footer += f"; not shown: {', '.join(hidden)} (see --wide)"
    print(footer)
    return ExitCode.OK


def _first_runs(config: Any) -> str:
    """What a table cut at TABLE_LIMIT shows: the newest runs, or the first in --sort's order."""
    sort = config.getoption("sort")
    if not sort:
        return f"the {TABLE_LIMIT} newest runs"
    order = f"descending {sort}" if config.getoption("descending") else sort
    return f"the first {TABLE_LIMIT} runs by {order}"


def _every_id(reader: Any, records: list[RunRecord]) -> list[Any]:
    # Short ids must be apart from every id of the store; numbers are never shortened.
    if all(str(r.id).isdigit() for r in records):
        return []
    return [r.id for r in reader.list_runs()]


def _chosen_keys(config: Any) -> list[str] | None:
    given = config.getoption("columns") or []
    keys = [k.strip() for part in given for k in part.split(",") if k.strip()]
    return [k for k in keys if k != "id"] if given else None


def _check_columns(keys: list[str], records: list[RunRecord]) -> None:
    from expkit.runs import lookup, unknown_key_error

    for key in keys:
        if key != "config" and not any(lookup(r, key)[0] for r in records):
            raise unknown_key_error(key, "--columns", records)


def runs_table(
    records: list[RunRecord],
    ids: dict[str, str],
    keys: list[str] | None = None,
    wide: bool = False,
    beat_interval: float = 10.0,
) -> list[Column]:
    """The columns of ``expkit runs list``: ``keys`` after the id, else the default ones.

    The default: experiment (when there are several), status, start time, duration,
    result, then the config entries that differ among the runs of each experiment (all
    entries with ``wide``): a column each for one experiment, ``KEY=VALUE`` pairs in one
    ``config`` column for several.
    """
    from expkit.runs import lookup

    now = utcnow()
    cap = None if wide else _VALUE_WIDTH
    times = _time_format(records)

    def column(
        key: str, found: list[tuple[bool, Any]], narrowest: int | None, priority: int
    ) -> Column:
        cut = _cut_of(key)
        most = None if key == "experiment" else cap  # names are cut only to fit
        cells = [
            _cell(key, value, most, cut, record, now, beat_interval, times)
            for value, record in zip(found, records)
        ]
        return Column(key, cells, narrowest, priority, cut)

    columns = [Column("id", [ids[str(r.id)] for r in records])]
    if keys is not None:
        for key in keys:
            if key == "config":
                columns.append(_labels(records, cap))
            else:
                columns.append(column(key, [lookup(r, key) for r in records], 10, _CONFIG))
        return columns
    experiments = {r.experiment for r in records}
    if len(experiments) > 1 or wide:
        columns.append(
            column("experiment", [(True, r.experiment) for r in records], 16, _EXPERIMENT)
        )
    for key, priority in (("status", _KEEP), ("start_time", _START), ("duration", _DURATION)):
        columns.append(column(key, [lookup(r, key) for r in records], None, priority))
    columns.append(column("result", [(True, r.result) for r in records], 14, _RESULT))
    if wide:
        config_keys = list(dict.fromkeys(k for r in records for k in flatten(r.config)))
    elif len(experiments) == 1:
        config_keys = _differing_by_experiment(records)[records[0].experiment]
    else:
        columns.append(_labels(records, _LABEL_VALUE_WIDTH))
        return columns
    for key in config_keys:
        columns.append(column(key, [lookup(r, f"config.{key}") for r in records], 10, _CONFIG))
    return columns


def _differing_by_experiment(records: list[RunRecord]) -> dict[str, list[str]]:
    # The seed differs from run to run unless it was fixed: it is no choice worth a column.
    grouped: dict[str, list[dict]] = {}
    for record in records:
        grouped.setdefault(record.experiment, []).append(flatten(record.config))
    return {
        name: [k for k in differing_keys(configs) if k != "seed"]
        for name, configs in grouped.items()
    }


def _labels(records: list[RunRecord], cap: int | None) -> Column:
    keys = _differing_by_experiment(records)
    cells = []
    for record in records:
        flat = flatten(record.config)
        pairs = [f"{k}={_value_text(flat[k], cap)}" for k in keys[record.experiment] if k in flat]
        cells.append(" ".join(pairs))
    return Column("config", cells, 20, _CONFIG, END)


def _cut_of(key: str) -> str:
    if key == "experiment":
        return START
    return END if key == "result" or key.startswith("result.") else MIDDLE


def _time_format(records: list[RunRecord]) -> str:
    # As `ls -l` does: the year only when some run started in another year than this one.
    year = utcnow().year
    same = all(r.start_time is None or r.start_time.year == year for r in records)
    return "%m-%d %H:%M" if same else "%Y-%m-%d %H:%M"


def _cell(
    key: str,
    found_value: tuple[bool, Any],
    cap: int | None,
    cut: str,
    record: RunRecord,
    now: datetime.datetime,
    beat_interval: float,
    times: str,
) -> str:
    found, value = found_value
    if not found:
        return ""
    if key == "status":
        return shown_status(record, now, beat_interval)
    if key == "duration":
        return _short_duration(None if value is None else datetime.timedelta(seconds=value))
    if isinstance(value, datetime.datetime):
        return value.strftime(times)
    return _value_text(value, cap, cut)


def _value_text(value: Any, cap: int | None, cut: str = MIDDLE) -> str:
    """A value as a table shows it: text as it is, floats to 6 digits, the rest as JSON."""
    if isinstance(value, str):
        text = " ".join(value.split()) if "\n" in value else value
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif type(value) is int:  # as JSON writes it, without the cost of writing JSON
        text = str(value)
    else:
        text = json.dumps(rounded(to_data(value)), sort_keys=True)
        cut = END
    return text if cap is None else shorten(text, cap, cut)


def shorten(text: str, width: int, cut: str = MIDDLE) -> str:
    """``text`` cut to ``width`` characters, an ellipsis where it lost some (see MIDDLE)."""
    if len(text) <= width:
        return text
    dots = _ellipsis()
    room = max(width - len(dots), 1)
    if cut == END:
        return text[:room] + dots
    if cut == START:
        return dots + text[len(text) - room :]
    head = (room + 1) // 2
    tail = room - head
    return text[:head] + dots + (text[len(text) - tail :] if tail else "")


def fit(columns: list[Column], width: int) -> tuple[list[Column], list[str]]:
    """The columns within ``width`` characters, and the headers of those left out.

    Columns are shortened first, lowest priority first and as far as each may be; then
    the ones that still do not fit are left out, lowest priority first (the rightmost of
    equals), and the rest shortened again.
    """
    hidden: list[str] = []
    shown = list(columns)
    while True:
        widths = _narrowed(shown, width)
        droppable = [c for c in shown if c.priority != _KEEP]
        if _total(widths) <= width or not droppable:
            break
        lowest = min(c.priority for c in droppable)
        drop = [c for c in droppable if c.priority == lowest][-1]
        hidden.append(drop.header)
        shown.remove(drop)
    fitted = []
    for column, w in zip(shown, widths):
        cells = [shorten(cell, w, column.cut) for cell in column.cells]
        fitted.append(attrs.evolve(column, header=shorten(column.header, w), cells=cells))
    return fitted, hidden


def _narrowed(columns: list[Column], width: int) -> list[int]:
    widths = [max(len(cell) for cell in [c.header, *c.cells]) for c in columns]
    floors = [w if c.narrowest is None else min(w, c.narrowest) for c, w in zip(columns, widths)]
    for priority in sorted({c.priority for c in columns}):
        # Among columns of one priority, the one with the most to spare gives first.
        group = [i for i, c in enumerate(columns) if c.priority == priority]
        while _total(widths) > width:
            i = max(group, key=lambda j: widths[j] - floors[j])
            if widths[i] <= floors[i]:
                break
            widths[i] -= 1
    return widths


def _total(widths: list[int]) -> int:
    return sum(widths) + 2 * (len(widths) - 1)


def differing_keys(dicts: list[dict[str, Any]]) -> list[str]:
    """The keys whose value is not the same in every one of ``dicts`` (or missing in some)."""
    keys = dict.fromkeys(k for d in dicts for k in d)
    return [k for k in keys if _differs(dicts, k)]


def _differs(dicts: list[dict[str, Any]], key: str) -> bool:
    """Whether ``key`` is missing in some of ``dicts`` or its JSON text is not the same."""
    if any(key not in d for d in dicts):
        return True
    first = dicts[0][key]
    kind, text = type(first), None
    for d in dicts[1:]:
        value = d[key]
        # Equal values of these kinds have one text (floats but 0.0 and -0.0), and most
        # columns hold them: 10,000 runs are compared without writing 10,000 texts.
        if (
            type(value) is kind
            and value == first
            and (kind in _ONE_TEXT or (kind is float and value))
        ):
            continue
        if text is None:
            text = _as_text(first)
        if _as_text(value) != text:
            return True
    return False


_ONE_TEXT = (str, int, bool, type(None))


def _as_text(value: Any) -> str:
    return json.dumps(to_data(value), sort_keys=True)


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, separated by two spaces; control characters
    in a cell are escaped (a name must not rewrite the terminal)."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    head = "  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip()
    return "\n".join([head, *lines])


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _ellipsis() -> str:
    return "…" if _unicode() else "..."


def _unicode() -> bool:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        (_BLOCKS + "…").encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(to_data(value))
    return shorten(text, width, END)


def _long_time(t: datetime.datetime | None) -> str:
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _short_duration(delta: datetime.timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.2f}s"
    return str(datetime.timedelta(seconds=round(seconds)))


# --- show --------------------------------------------------------------------------------------


def _show(config: Any, record: RunRecord) -> int:
    if config.getoption("json"):
        data = as_json(record)
        data["status"] = shown_status(record, beat_interval=_beat(config))
        print(json.dumps(data, indent=2, sort_keys=True))
        return ExitCode.OK
    print("\n".join(describe(record, _beat(config))))
    return ExitCode.OK


def describe(record: RunRecord, beat_interval: float = 10.0) -> list[str]:
    """Everything recorded about a run, as lines of text."""
    info = record.experiment_info
    lines = [
        f"run {printable(record.id)} of {printable(record.experiment)} in {record.store}",
        f"status:     {shown_status(record, beat_interval=beat_interval)}",
        f"command:    {record.command or ''}",
        f"started:    {_long_time(record.start_time)}",
        f"stopped:    {_long_time(record.stop_time)}",
        f"heartbeat:  {_long_time(record.heartbeat)}",
        f"duration:   {_short_duration(record.duration)}",
        f"result:     {json.dumps(to_data(record.result))}",
        "config:",
        *_indented(f"{k} = {json.dumps(to_data(v))}" for k, v in flatten(record.config).items()),
        "host:",
        *_indented(f"{k}: {json.dumps(to_data(v))}" for k, v in sorted(record.host.items())),
        "git:",
        *_indented(repository_line(r) for r in info.get("repositories") or ()),
        "dependencies:",
        *_indented(f"{n}=={v}" for n, v in sorted(dependencies(record).items())),
        f"base dir:   {info.get('base_dir') or ''}",
        f"main file:  {info.get('mainfile') or ''}",
        "sources:",
        *_indented(source_names(record)),
        "metrics:",
        *_indented(metric_lines(record.metrics or {})),
        "artifacts:",
        *_indented(record.artifacts),
        "resources:",
        *_indented(f"{name}  md5 {md5}" if md5 else name for name, md5 in record.resources),
    ]
    if record.meta:
        lines += ["meta:", *_indented(_meta_lines(record.meta))]
    if record.info:
        lines += ["info:", *_indented(json.dumps(to_data(record.info), indent=2).splitlines())]
    if record.fail_trace:
        lines += ["fail trace:", *_indented("".join(record.fail_trace).splitlines())]
    lines += ["captured output:", *_indented((record.captured_out or "").splitlines())]
    return lines


def _indented(lines: Iterable[str]) -> list[str]:
    return [f"  {line}" for line in lines]


def repository_line(repo: dict) -> str:
    """A stored git repository as ``URL @ COMMIT``, with ``(dirty)`` when it had changes."""
    commit = repo.get("commit")
    where = f"{repo.get('url') or '(no remote)'} @ {commit}" if commit else repo.get("url")
    return f"{where or '(unknown repository)'}{' (dirty)' if repo.get('dirty') else ''}"


def _meta_lines(meta: dict) -> list[str]:
    # The options dict repeats every command-line flag; only the ones set say something.
    lines = []
    for key, value in sorted(meta.items()):
        if key == "options" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if v not in (None, False, [], {})}
        lines.append(f"{key}: {json.dumps(to_data(value), sort_keys=True)}")
    return lines


def metric_lines(metrics: dict[str, dict]) -> list[str]:
    """One line per metric: how many values, last, min, max and a sparkline of them."""
    lines = []
    width = max((len(name) for name in metrics), default=0)
    for name, entry in sorted(metrics.items()):
        values = list(entry.get("values") or ())
        numbers = _numbers(values)
        head = f"{name + ':':<{width + 1}} {_count(len(values), 'value')}"
        if not numbers:
            lines.append(head)
            continue
        lines.append(
            f"{head}, last {_number(values[-1])}, min {min(numbers):.6g}, "
            f"max {max(numbers):.6g}  {sparkline(values)}"
        )
    return lines


def _numbers(values: Iterable[Any]) -> list[float]:
    return [
        v
        for v in values
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # NaN != NaN
    ]


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else json.dumps(to_data(value))


def sparkline(values: list[Any], width: int = _SPARK_WIDTH) -> str:
    """The values as a line of bars (``▁▂▄█``), averaged into at most ``width`` bars;
    a value that is no number is a space."""
    if not values:
        return ""
    blocks = _BLOCKS if _unicode() else _ASCII_BLOCKS
    buckets = [
        values[i * len(values) // width : (i + 1) * len(values) // width] for i in range(width)
    ]
    means = []
    for bucket in buckets if len(values) > width else [[v] for v in values]:
        numbers = _numbers(bucket)
        means.append(sum(numbers) / len(numbers) if numbers else None)
    finite = [m for m in means if m is not None and math.isfinite(m)]
    if not finite and all(m is None or m != m for m in means):
        return ""
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    scale = (len(blocks) - 1) / (high - low) if high > low else 0

    def bar(mean: float | None) -> str:
        if mean is None or mean != mean:  # no number, or inf and -inf averaged
            return " "
        if math.isinf(mean):  # off the scale: drawn at its end
            return blocks[-1] if mean > 0 else blocks[0]
        return blocks[round((mean - low) * scale)]

    return "".join(bar(m) for m in means)


# --- metrics and artifact ----------------------------------------------------------------------


def _metrics(config: Any, record: RunRecord, name: str | None) -> int:
    metrics = record.metrics or {}
    if name is not None and name not in metrics:
        known = ", ".join(sorted(metrics)) or "none"
        raise UsageError(
            f"run {record.id} has no metric {name!r}{suggest(name, metrics)}; its metrics: {known}"
        )
    chosen = {name: metrics[name]} if name is not None else dict(sorted(metrics.items()))
    if config.getoption("json"):
        print(json.dumps(to_data(chosen), indent=2, sort_keys=True))
        return ExitCode.OK
    if config.getoption("csv"):
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["metric", "step", "value", "timestamp"])
        for metric, step, value, stamp in _points(chosen):
            writer.writerow([metric, step, _csv_value(value), stamp])
        return ExitCode.OK
    if not chosen:
        print(f"run {record.id} logged no metrics")
        return ExitCode.OK
    blocks = []
    for metric, entry in chosen.items():
        rows = [
            [str(step), _number(value), stamp] for _, step, value, stamp in _points({metric: entry})
        ]
        title = f"{metric} ({_count(len(rows), 'value')})  {sparkline(entry.get('values') or [])}"
        blocks.append(
            title.rstrip()
            + "\n"
            + "\n".join(_indented(table(["step", "value", "time"], rows).splitlines()))
        )
    print("\n\n".join(blocks))
    return ExitCode.OK


def _points(metrics: dict[str, dict]) -> Iterable[tuple[str, Any, Any, str]]:
    for metric, entry in metrics.items():
        steps = entry.get("steps") or ()
        values = entry.get("values") or ()
        stamps = list(entry.get("timestamps") or ())
        stamps += [None] * (len(steps) - len(stamps))
        for step, value, stamp in zip(steps, values, stamps):
            shown = format_time(stamp) if isinstance(stamp, datetime.datetime) else stamp
            yield metric, step, value, shown or ""


def _csv_value(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) else json.dumps(to_data(value))


def _artifact(reader: Any, record: RunRecord, name: str, output: str | None) -> int:
    if name not in record.artifacts:
        known = ", ".join(record.artifacts) or "none"
        raise UsageError(
            f"run {record.id} has no artifact {name!r}{suggest(name, record.artifacts)}; "
            f"its artifacts: {known}"
        )
    data = reader.read_artifact(record.id, name)
    if output is not None and output != "-":
        with _output_file(output, "wb") as f:
            f.write(data)
        print(f"wrote artifact {name} of run {record.id} to {output} ({_count(len(data), 'byte')})")
        return ExitCode.OK
    if sys.stdout.isatty() and not _is_text(data):
        raise UsageError(
            f"artifact {name} of run {record.id} is binary ({_count(len(data), 'byte')}): "
            "write it to a file with -o FILE, or pipe it"
        )
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return ExitCode.OK


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


# --- diff --------------------------------------------------------------------------------------

_MISSING = "(missing)"


def compare(reader: Any, records: list[RunRecord]) -> dict:
    """What differs between the runs (the first against each other): JSON data.

    Keyed sections (config, metrics, dependencies, host) map each differing key to
    ``{run id: value}``; a run that lacks the key is left out of that mapping, so a
    missing key and a ``null`` value stay apart.
    """
    first = records[0]
    ids = [str(r.id) for r in records]
    flat = [flatten(r.config) for r in records]
    results = [to_data(r.result) for r in records]
    experiments = [r.experiment for r in records]
    sources: dict[str, dict[str, list[str]]] = {}
    for other in records[1:]:
        for name in sorted(set(source_names(first)) | set(source_names(other))):
            old = _read_source(reader, first, name)
            new = _read_source(reader, other, name)
            if old != new:
                lines = source_diff(old, new, f"{first.id}/{name}", f"{other.id}/{name}")
                sources.setdefault(name, {})[str(other.id)] = lines
    return {
        "runs": [to_data(r.id) for r in records],
        "experiment": dict(zip(ids, experiments)) if len(set(experiments)) > 1 else None,
        "config": _differing(ids, flat),
        "result": results if _differ(results) else None,
        "metrics": compare_metrics(ids, [r.metrics or {} for r in records]),
        "sources": sources,
        "dependencies": _differing(ids, [dependencies(r) for r in records]),
        "host": _differing(ids, [_host_fields(r.host) for r in records]),
        "git": _differing_lists([r.experiment_info.get("repositories") or [] for r in records]),
    }


def compare_metrics(ids: list[str], metrics: list[dict[str, dict]]) -> dict[str, dict]:
    """Per metric that is not the same in every run: each run's summary (points, last, min,
    max) and, for each run after the first, the first step where it differs from the first."""
    report = {}
    names = sorted({name for m in metrics for name in m})
    for name in names:
        series = {i: m[name] for i, m in zip(ids, metrics) if name in m}
        first = series.get(ids[0])
        steps = {
            i: first_differing_step(first, s) for i, s in series.items() if i != ids[0] and first
        }
        if len(series) == len(ids) and all(step is None for step in steps.values()):
            continue
        report[name] = {
            "runs": {i: _summary(s) for i, s in series.items()},
            "first_differing_step": steps,
        }
    return report


def first_differing_step(old: dict, new: dict) -> Any:
    """The first step at which two series of a metric differ (in step or value), else None."""
    a = list(zip(old.get("steps") or (), old.get("values") or ()))
    b = list(zip(new.get("steps") or (), new.get("values") or ()))
    for (step_a, value_a), (step_b, value_b) in zip(a, b):
        if step_a != step_b or json.dumps(to_data(value_a)) != json.dumps(to_data(value_b)):
            return step_a
    if len(a) != len(b):
        return (a if len(a) > len(b) else b)[min(len(a), len(b))][0]
    return None


def _summary(series: dict) -> dict:
    values = list(series.get("values") or ())
    numbers = _numbers(values)
    return {
        "points": len(values),
        "last": to_data(values[-1]) if values else None,
        "min": min(numbers) if numbers else None,
        "max": max(numbers) if numbers else None,
    }


def _read_source(reader: Any, record: RunRecord, name: str) -> bytes | None:
    if name not in source_names(record):
        return None
    try:
        return reader.read_source(record.id, name)
    except (KeyError, OSError):
        return None


def _host_fields(host: dict) -> dict:
    return {k: v for k, v in host.items() if k != "ENV"}


def _differ(values: list[Any]) -> bool:
    return len({json.dumps(to_data(v), sort_keys=True) for v in values}) > 1


def _differing(ids: list[str], dicts: list[dict]) -> dict[str, dict[str, Any]]:
    return {
        k: {i: to_data(d[k]) for i, d in zip(ids, dicts) if k in d} for k in differing_keys(dicts)
    }


def _differing_lists(lists: list[list]) -> list[Any] | None:
    return [to_data(x) for x in lists] if _differ(lists) else None


def _diff(config: Any, reader: Any, records: list[RunRecord]) -> int:
    report = compare(reader, records)
    if config.getoption("json"):
        print(json.dumps(report, indent=2, sort_keys=True))
        return ExitCode.OK
    print("\n".join(diff_lines(report)))
    return ExitCode.OK


def diff_lines(report: dict) -> list[str]:
    """A :func:`compare` report as text."""
    from expkit.runs import short_ids

    full = [str(i) for i in report["runs"]]
    shown = short_ids(full)
    ids = [shown[i] for i in full]
    lines = [f"runs {', '.join(ids)}"]
    same = []
    if report["experiment"]:
        names = ", ".join(f"{shown[i]} {name}" for i, name in report["experiment"].items())
        lines.append(f"different experiments: {names}")
    else:
        same.append("experiment")

    def values_table(title: str, entries: dict[str, dict[str, Any]]) -> None:
        if not entries:
            same.append(title)
            return
        rows = [[k, *(_cell_or_missing(values, i) for i in full)] for k, values in entries.items()]
        lines.append(f"{title}:")
        lines.extend(_indented(table(["", *ids], rows).splitlines()))

    values_table("config", report["config"])
    if report["result"] is None:
        same.append("result")
    else:
        lines.append("result:")
        lines.extend(_indented(f"{i}: {json.dumps(r)}" for i, r in zip(ids, report["result"])))
    if report["metrics"]:
        lines.append("metrics:")
        lines.extend(_indented(_metric_table(report["metrics"], full, ids).splitlines()))
    else:
        same.append("metrics")
    if report["sources"]:
        lines.append("sources:")
        for diffs in report["sources"].values():
            for diff in diffs.values():
                lines.extend(_indented(diff))
    else:
        same.append("sources")
    values_table("dependencies", report["dependencies"])
    values_table("host", report["host"])
    if report["git"] is None:
        same.append("git")
    else:
        lines.append("git:")
        for i, repos in zip(ids, report["git"]):
            shown_repos = ", ".join(repository_line(r) for r in repos) or "(none)"
            lines.append(f"  {i}: {shown_repos}")
    if same:
        lines.append(f"same: {', '.join(same)}")
    return lines


def _cell_or_missing(values: dict[str, Any], run_id: str) -> str:
    return _short(values[run_id], 30) if run_id in values else _MISSING


def _metric_table(metrics: dict[str, dict], full: list[str], ids: list[str]) -> str:
    rows = []
    for name, entry in metrics.items():
        runs = entry["runs"]
        for n, stat in enumerate(("last", "min", "max", "points")):
            rows.append([name if n == 0 else "", stat, *(_stat(runs, i, stat) for i in full)])
        steps = entry["first_differing_step"]
        if steps:
            rows.append(["", "differs at", *(_step(steps, runs, i, full[0]) for i in full)])
    return table(["", "", *ids], rows)


def _stat(runs: dict[str, dict], run_id: str, stat: str) -> str:
    if run_id not in runs:
        return _MISSING
    value = runs[run_id][stat]
    return "" if value is None else _number(value)


def _step(steps: dict[str, Any], runs: dict[str, dict], run_id: str, first: str) -> str:
    if run_id == first:
        return ""
    if run_id not in runs:
        return _MISSING
    return "same" if steps.get(run_id) is None else f"step {steps[run_id]}"


# --- rm and export -----------------------------------------------------------------------------


def _output_file(path: str, mode: str) -> IO[Any]:
    """``path`` opened for ``-o``; one that cannot be written is the user's to change."""
    try:
        return open(path, mode, encoding=None if "b" in mode else "utf-8")
    except OSError as exc:
        raise UsageError(f"-o {path}: cannot write there: {exc.strerror or exc}") from None


def _rm(config: Any, reader: Any, url: str, records: list[RunRecord]) -> int:
    records = list({str(r.id): r for r in records}.values())  # `rm 3 3` deletes run 3 once
    running = [r for r in records if shown_status(r, beat_interval=_beat(config)) == "RUNNING"]
    if running and not config.getoption("force"):
        # Its process would go on writing, spool what the store lost, and bring it back.
        raise UsageError(
            f"run {printable(running[0].id)} is still running (its heartbeat is recent): "
            "stop it first, or delete it anyway with --force"
        )
    ids = ", ".join(printable(r.id) for r in records)
    if not config.getoption("yes"):
        sys.stdout.write(f"delete {len(records)} run(s) from {redact_url(url)}: {ids}? [y/N] ")
        sys.stdout.flush()
        try:
            answer = sys.stdin.readline() if sys.stdin is not None else ""
        except (OSError, ValueError):  # stdin closed or detached
            answer = ""
        if not answer:
            print()
            raise UsageError("no answer on stdin: nothing deleted (pass --yes to delete anyway)")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return ExitCode.OK
    for record in records:
        reader.delete_run(record.id)
    print(f"deleted {len(records)} run(s): {ids}")
    return ExitCode.OK


def _export(config: Any, reader: Any, url: str, filters: list[str], output: str | None) -> int:
    from expkit.runs import full_records

    records = _select(config, reader, filters)
    out = _output_file(output, "w") if output else sys.stdout
    try:
        for record in full_records(reader, records):  # one reader for all: one connection
            out.write(json.dumps(as_json(record), sort_keys=True) + "\n")
    finally:
        if output:
            out.close()
    if output:
        print(f"exported {_count(len(records), 'run')} to {output}")
    return ExitCode.OK
