"""``expkit runs list|show|diff|rm|export``: find, read, compare and remove stored runs.

Every store is read through the reader its plugin returns from
``expkit_reader_for_url``; the store is ``--store URL``, else ``[tool.expkit] store``,
else ``runs/`` under the project root, as for ``expkit run``.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Iterable
from typing import Any

import attrs

from expkit.errors import UsageError
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl
from expkit.records import RunRecord
from expkit.serialize import to_data, utcnow
from expkit.utils import redact_url

SUBCOMMANDS = ("list", "show", "diff", "rm", "export")
_RESULT_WIDTH = 24
_VALUE_WIDTH = 16


@hookimpl
def expkit_addoption(parser: Any) -> None:
    group = parser.getgroup("runs", "finding and comparing stored runs (expkit runs ...)")
    group.addoption("--status", default=None, metavar="S", help="runs list: only this status")
    group.addoption(
        "--experiment", default=None, metavar="NAME", help="runs list: only this experiment"
    )
    group.addoption("--since", default=None, metavar="ISO", help="runs list: started at or after")
    group.addoption("--until", default=None, metavar="ISO", help="runs list: started before")
    group.addoption("--sort", default=None, metavar="KEY", help="runs list: sort by KEY")
    group.addoption(
        "--descending", action="store_true", help="runs list: sort from the largest down"
    )
    group.addoption("--limit", type=int, default=None, metavar="N", help="runs list: at most N")
    group.addoption("--json", action="store_true", help="runs list/show/diff: print JSON")
    group.addoption("--yes", action="store_true", help="runs rm: delete without asking")
    group.addoption("--output", default=None, metavar="FILE", help="runs export: write to FILE")


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
    """Run ``run_id`` in full; the id as typed, or as a number for stores with numeric ids."""
    for candidate in _id_candidates(run_id):
        try:
            return reader.get_run(candidate)
        except KeyError:
            continue
    raise UsageError(f"no run {run_id} in {redact_url(url)}")


def _id_candidates(run_id: Any) -> list[Any]:
    if isinstance(run_id, str) and run_id.isdigit():
        return [run_id, int(run_id)]
    return [run_id]


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
    from expkit.runs import probably_dead

    if record.status == "RUNNING" and probably_dead(record, now or utcnow(), beat_interval):
        return "PROBABLY_DEAD"
    return record.status


# --- the command -------------------------------------------------------------------------------


@hookimpl(trylast=True)
def expkit_cmdline_main(config: Any) -> int | None:
    if config.command != "runs":
        return None
    args = list(config.getoption("paths") or ())
    if not args or args[0] not in SUBCOMMANDS:
        got = f" {args[0]!r}" if args else ""
        raise UsageError(
            f"expkit runs needs a subcommand{got}: one of {', '.join(SUBCOMMANDS)} "
            "(e.g. 'expkit runs list')"
        )
    url = store_url(config)
    reader = reader_for(config.pluginmanager, url)
    try:
        return _subcommand(config, reader, url, args[0], args[1:])
    finally:
        close(reader)


def _subcommand(config: Any, reader: Any, url: str, sub: str, rest: list[str]) -> int:
    if sub == "list":
        return _list(config, url, rest)
    if sub == "show":
        if len(rest) != 1:
            raise UsageError("expkit runs show takes one run id: expkit runs show ID")
        return _show(config, fetch(reader, url, rest[0]))
    if sub == "diff":
        if len(rest) < 2:
            raise UsageError("expkit runs diff takes two or more run ids: expkit runs diff 1 2")
        return _diff(config, reader, [fetch(reader, url, i) for i in rest])
    if sub == "rm":
        if not rest:
            raise UsageError("expkit runs rm takes one or more run ids: expkit runs rm 3")
        return _rm(config, reader, url, [fetch(reader, url, i) for i in rest])
    return _export(config, reader, url, rest)


def _parse_time(text: str | None, option: str) -> datetime.datetime | None:
    if text is None:
        return None
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is no ISO time (e.g. 2024-05-01 or 2024-05-01T12:00)"
        ) from None


def _select(config: Any, url: str, filters: list[str]) -> list[RunRecord]:
    from expkit.runs import runs

    sort = config.getoption("sort")
    order = {"sort": sort, "descending": bool(config.getoption("descending"))} if sort else {}
    sweeps = config.getoption("sweeps") or []  # --sweep ID: the option expkit run sweeps with
    if len(sweeps) > 1:
        raise UsageError("expkit runs list takes one --sweep ID")
    return runs(
        url,
        where=filters,
        experiment=config.getoption("experiment"),
        status=config.getoption("status"),
        since=_parse_time(config.getoption("since"), "--since"),
        until=_parse_time(config.getoption("until"), "--until"),
        limit=config.getoption("limit"),
        plugin_manager=config.pluginmanager,
        sweep=sweeps[0] if sweeps else None,
        **order,
    )


def _list(config: Any, url: str, filters: list[str]) -> int:
    records = _select(config, url, filters)
    now = utcnow()
    if config.getoption("json"):
        rows = []
        for record in records:
            row = as_json(record)
            row["status"] = shown_status(record, now, _beat(config))
            rows.append(row)
        print(json.dumps(rows, indent=2, sort_keys=True))
        return ExitCode.OK
    if not records:
        print(f"no runs in {redact_url(url)}" + (" match" if filters else ""))
        return ExitCode.OK
    flat = [flatten(r.config) for r in records]
    keys = differing_keys(flat)
    header = ["id", "experiment", "status", "start", "duration", "result", *keys]
    rows = [
        [
            str(r.id),
            r.experiment,
            shown_status(r, now, _beat(config)),
            _short_time(r.start_time),
            _short_duration(r.duration),
            _short(r.result, _RESULT_WIDTH),
            *(_short(f.get(k, ""), _VALUE_WIDTH) if k in f else "" for k in keys),
        ]
        for r, f in zip(records, flat)
    ]
    print(table(header, rows))
    print(f"{len(records)} run(s) in {redact_url(url)}")
    return ExitCode.OK


def differing_keys(flat_configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose value is not the same in every one of the configs."""
    keys: dict[str, None] = {}
    for flat in flat_configs:
        keys.update(dict.fromkeys(flat))
    missing = object()
    return [
        k
        for k in keys
        if len({json.dumps(to_data(f.get(k, missing)), sort_keys=True) for f in flat_configs}) > 1
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, separated by two spaces."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    head = "  ".join(cell.ljust(w) for cell, w in zip(header, widths)).rstrip()
    return "\n".join([head, *lines])


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(to_data(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def _short_time(t: datetime.datetime | None) -> str:
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
        f"run {record.id} of {record.experiment} in {record.store}",
        f"status:     {shown_status(record, beat_interval=beat_interval)}",
        f"command:    {record.command or ''}",
        f"started:    {_short_time(record.start_time)}",
        f"stopped:    {_short_time(record.stop_time)}",
        f"heartbeat:  {_short_time(record.heartbeat)}",
        f"duration:   {_short_duration(record.duration)}",
        f"result:     {json.dumps(to_data(record.result))}",
        "config:",
        *_indented(f"{k} = {json.dumps(to_data(v))}" for k, v in flatten(record.config).items()),
        "host:",
        *_indented(f"{k}: {json.dumps(to_data(v))}" for k, v in sorted(record.host.items())),
        "git:",
        *_indented(_repository_line(r) for r in info.get("repositories") or ()),
        "dependencies:",
        *_indented(f"{n}=={v}" for n, v in sorted(dependencies(record).items())),
        f"base dir:   {info.get('base_dir') or ''}",
        f"main file:  {info.get('mainfile') or ''}",
        "sources:",
        *_indented(source_names(record)),
        "metrics:",
        *_indented(_metric_lines(record.metrics or {})),
        "artifacts:",
        *_indented(record.artifacts),
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


def _repository_line(repo: dict) -> str:
    dirty = " (dirty)" if repo.get("dirty") else ""
    return f"{repo.get('url')} @ {repo.get('commit')}{dirty}"


def _meta_lines(meta: dict) -> list[str]:
    # The options dict repeats every command-line flag; only the ones set say something.
    lines = []
    for key, value in sorted(meta.items()):
        if key == "options" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if v not in (None, False, [], {})}
        lines.append(f"{key}: {json.dumps(to_data(value), sort_keys=True)}")
    return lines


def _metric_lines(metrics: dict[str, dict]) -> list[str]:
    lines = []
    for name, entry in sorted(metrics.items()):
        values = [v for v in entry.get("values") or () if isinstance(v, (int, float))]
        steps = entry.get("steps") or ()
        if not values:
            lines.append(f"{name}: {len(steps)} value(s)")
            continue
        lines.append(
            f"{name}: {len(steps)} value(s), last {values[-1]:.6g}, "
            f"min {min(values):.6g}, max {max(values):.6g}"
        )
    return lines


# --- diff --------------------------------------------------------------------------------------


def compare(reader: Any, records: list[RunRecord]) -> dict:
    """What differs between the runs (the first against each other): JSON data."""
    first = records[0]
    flat = [flatten(r.config) for r in records]
    missing = object()
    config = {
        k: [to_data(f.get(k)) if f.get(k, missing) is not missing else None for f in flat]
        for k in differing_keys(flat)
    }
    results = [to_data(r.result) for r in records]
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
        "config": config,
        "result": results if _differ(results) else None,
        "sources": sources,
        "dependencies": _differing([dependencies(r) for r in records]),
        "host": _differing([_host_fields(r.host) for r in records]),
        "git": _differing_lists([r.experiment_info.get("repositories") or [] for r in records]),
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


def _differing(dicts: list[dict]) -> dict[str, list[Any]]:
    keys = sorted({k for d in dicts for k in d})
    return {
        k: [to_data(d.get(k)) for d in dicts] for k in keys if _differ([d.get(k) for d in dicts])
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
    ids = [str(i) for i in report["runs"]]
    lines = [f"runs {', '.join(ids)}"]
    same = []

    def values_table(title: str, entries: dict[str, list[Any]]) -> None:
        if not entries:
            same.append(title)
            return
        rows = [[k, *(_short(v, 30) for v in vals)] for k, vals in entries.items()]
        lines.append(f"{title}:")
        lines.extend(_indented(table(["", *ids], rows).splitlines()))

    values_table("config", report["config"])
    if report["result"] is None:
        same.append("result")
    else:
        lines.append("result:")
        lines.extend(_indented(f"{i}: {json.dumps(r)}" for i, r in zip(ids, report["result"])))
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
            shown = ", ".join(_repository_line(r) for r in repos) or "(none)"
            lines.append(f"  {i}: {shown}")
    if same:
        lines.append(f"same: {', '.join(same)}")
    return lines


# --- rm and export -----------------------------------------------------------------------------


def _rm(config: Any, reader: Any, url: str, records: list[RunRecord]) -> int:
    ids = ", ".join(str(r.id) for r in records)
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


def _export(config: Any, reader: Any, url: str, filters: list[str]) -> int:
    records = _select(config, url, filters)
    output = config.getoption("output")
    out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    try:
        for summary in records:
            record = fetch(reader, url, summary.id)  # one reader for all: one connection
            out.write(json.dumps(as_json(record), sort_keys=True) + "\n")
    finally:
        if output:
            out.close()
    if output:
        print(f"exported {len(records)} run(s) to {output}")
    return ExitCode.OK
