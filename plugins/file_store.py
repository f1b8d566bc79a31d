"""The file store: every run in its own folder, in Sacred's FileStorageObserver layout.

::

    <basedir>/<id>/run.json       the run record, replaced at every event
    <basedir>/<id>/config.json    the final configuration
    <basedir>/<id>/cout.txt       captured output, appended at every heartbeat
    <basedir>/<id>/metrics.json   Sacred's metrics format (parallel lists per name)
    <basedir>/<id>/metrics.jsonl  expkit's append-only metrics log, one line per batch
    <basedir>/<id>/info.json      ``run.info``, only once it is non-empty
    <basedir>/<id>/<artifacts>
    <basedir>/_sources/<stem>_<md5><ext>
    <basedir>/_resources/<stem>_<md5><ext>
    <basedir>/_index/runs.jsonl   one summary line per finished run (see below)

Unlike Sacred's observer it never loses or tears a file: JSON files are
replaced atomically, ids are claimed with ``os.mkdir`` so concurrent processes
get distinct ones, ``metrics.json`` is rewritten only when the number of points
has doubled (the log holds every point in between), and artifact names cannot
leave the run folder.

The index makes listing thousands of runs cheap: when a run ends the observer
appends one line (the run's summary: id, experiment, status, times, result,
config, meta without its options) with a single ``O_APPEND`` write, so lines of
concurrent processes never interleave. :class:`FileStoreReader` folds it (the
last line of an id wins) and treats it as a cache: runs it does not know (still
running, queued, written by Sacred, or whose line is torn) are read from their
folders, and the index is rebuilt (:func:`rebuild_index`) when it is missing or
mostly superseded lines. Running runs are not indexed: their heartbeat changes
all the time, and there are few of them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import stat
import threading
from collections.abc import Iterable
from typing import Any

import attrs

from expkit.errors import ExpkitError, UsageError
from expkit.observers import RunObserver, utc_isoformat_json
from expkit.pluginmanager import hookimpl
from expkit.records import RunRecord, edited_meta
from expkit.serialize import dumps, format_time, parse_time, to_data
from expkit.utils import file_md5, redact_url, replace_file

log = logging.getLogger("expkit")

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
COUT_FILE = "cout.txt"
METRICS_FILE = "metrics.json"
METRICS_LOG = "metrics.jsonl"
INFO_FILE = "info.json"
# In a folder of its own: Sacred-era readers skip "_" folders they cannot read as runs,
# but would stumble over a plain file beside the run folders.
INDEX_FILE = os.path.join("_index", "runs.jsonl")
SOURCES_DIR = "_sources"
RESOURCES_DIR = "_resources"
# Artifacts may not take these names: the store itself writes them.
RESERVED_NAMES = frozenset({RUN_FILE, CONFIG_FILE, COUT_FILE, METRICS_FILE, METRICS_LOG, INFO_FILE})

_COUT_TAIL = 1000  # characters of cout.txt remembered to check that new output extends it
_MAX_ID_TRIES = 10_000
_CHUNK = 1 << 20


class FileStorageObserver(RunObserver):
    """Store runs as folders under ``basedir`` (Sacred's ``FileStorageObserver``).

    ``template`` is accepted for compatibility and ignored: expkit renders no
    Mako reports. With ``copy_sources=False`` sources are recorded by absolute
    path instead of being copied to ``_sources``; with ``copy_artifacts=False``
    resources already inside ``basedir`` are recorded where they are and
    artifacts are symlinked into the run folder instead of copied.
    Stored resource paths are relative to ``basedir`` (Sacred made them relative
    to the working directory).
    """

    VERSION = "FileStorageObserver-0.7.0"

    def __init__(
        self,
        basedir: str | os.PathLike[str],
        resource_dir: str | os.PathLike[str] | None = None,
        source_dir: str | os.PathLike[str] | None = None,
        template: str | os.PathLike[str] | None = None,
        priority: int = 20,
        copy_artifacts: bool = True,
        copy_sources: bool = True,
    ) -> None:
        if not os.fspath(basedir):
            raise UsageError("FileStorageObserver needs a folder: basedir is empty")
        # Absolute, so that a run that changes its working directory still writes here.
        self.basedir = os.path.abspath(basedir)
        self.resource_dir = os.path.abspath(
            resource_dir or os.path.join(self.basedir, RESOURCES_DIR)
        )
        self.source_dir = os.path.abspath(source_dir or os.path.join(self.basedir, SOURCES_DIR))
        self.template = template
        self.priority = priority
        self.copy_artifacts = copy_artifacts
        self.copy_sources = copy_sources
        self.dir: str | None = None
        self.run_entry: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        # Per-run state: one observer may record several runs one after the other.
        self.dir = None
        self.run_entry = {}
        self.config = {}
        self.info = {}
        self._cout_len = 0
        self._cout_tail = ""
        self._info_text: str | None = None
        self._points = 0
        self._points_saved: int | None = None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileStorageObserver):
            return self.basedir == other.basedir
        return NotImplemented

    def __hash__(self) -> int:
        return hash((FileStorageObserver, self.basedir))

    def __repr__(self) -> str:
        return f"FileStorageObserver({self.basedir!r})"

    def resume(self, _id: Any) -> None:
        """Go on recording the stored run ``_id``: its spooled events are being replayed."""
        with self._lock:
            self._reset()
            path = os.path.join(self.basedir, _checked_id(_id))
            if not os.path.isdir(path):
                raise UsageError(f"cannot resume run {_id!r}: no folder {path}")
            self.dir = path
            self.run_entry = _load_json(self._path(RUN_FILE), {})
            self.config = _load_json(self._path(CONFIG_FILE), {})
            self.info = _load_json(self._path(INFO_FILE), {})
            if self.info:
                self._info_text = dumps(self.info)
            try:
                with open(self._path(COUT_FILE), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                text = ""
            self._cout_len, self._cout_tail = len(text), text[-_COUT_TAIL:]
            # A batch torn by the failure is replayed whole: new lines must not extend it.
            _cut_torn_line(self._path(METRICS_LOG))
            metrics = read_metrics_log(self._path(METRICS_LOG))
            self._points = sum(len(m.get("steps", ())) for m in metrics.values())
            self._points_saved = self._points if metrics else None

    # --- events ----------------------------------------------------------------

    def queued_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        queue_time: datetime.datetime,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> str:
        """Create the run folder of a queued run; its sources are also copied into it."""
        with self._lock:
            self._reset()
            run_id = self._make_run_dir(_id)
            meta = dict(meta_info or {})
            meta.setdefault("queue_time", queue_time)
            self.config = config
            self.run_entry = {
                "experiment": self._experiment_entry(ex_info),
                "command": command,
                "host": dict(host_info or {}),
                "meta": meta,
                "status": "QUEUED",
            }
            self._save_json(CONFIG_FILE, config)
            self._save_run()
            if self.copy_sources:
                # A queued run keeps its own copy of the code it is to run.
                base = ex_info.get("base_dir") or ""
                for relpath, _ in _source_pairs(ex_info):
                    self._copy_source(os.path.join(base, relpath), relpath)
            return run_id

    def started_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        start_time: datetime.datetime,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> str:
        """Create the run folder and write run.json, config.json and an empty cout.txt."""
        with self._lock:
            self._reset()
            run_id = self._make_run_dir(_id)
            self.config = config
            self.run_entry = {
                "experiment": self._experiment_entry(ex_info),
                "command": command,
                "host": dict(host_info or {}),
                "start_time": format_time(start_time),
                "meta": dict(meta_info or {}),
                "status": "RUNNING",
                "resources": [],
                "artifacts": [],
                "heartbeat": None,
            }
            self._save_json(CONFIG_FILE, config)
            self._save_run()
            with open(self._path(COUT_FILE), "a", encoding="utf-8"):
                pass
            return run_id

    def heartbeat_event(
        self, info: dict, captured_out: str, beat_time: datetime.datetime, result: Any
    ) -> None:
        """Append new output to cout.txt, update run.json and (when changed) info.json."""
        with self._lock:
            self._save_cout(captured_out or "")
            self.run_entry["heartbeat"] = format_time(beat_time)
            self.run_entry["result"] = result
            self._save_run()
            self.info = info or {}
            self._save_info()

    def completed_event(self, stop_time: datetime.datetime, result: Any) -> None:
        """Mark the run COMPLETED with its result."""
        with self._lock:
            self.run_entry["stop_time"] = format_time(stop_time)
            self.run_entry["result"] = result
            self.run_entry["status"] = "COMPLETED"
            self._finish()

    def interrupted_event(self, interrupt_time: datetime.datetime, status: str) -> None:
        """Mark the run with ``status`` (INTERRUPTED, TIMEOUT or a custom one)."""
        with self._lock:
            self.run_entry["stop_time"] = format_time(interrupt_time)
            self.run_entry["status"] = status
            self._finish()

    def failed_event(self, fail_time: datetime.datetime, fail_trace: list[str]) -> None:
        """Mark the run FAILED and keep its traceback."""
        with self._lock:
            self.run_entry["stop_time"] = format_time(fail_time)
            self.run_entry["status"] = "FAILED"
            self.run_entry["fail_trace"] = list(fail_trace or [])
            self._finish()

    def resource_event(self, filename: str) -> None:
        """Keep the input file ``filename`` in ``_resources`` (once per content)."""
        with self._lock:
            filename = os.path.abspath(filename)
            _check_readable_file(filename, "resource")
            if not self.copy_artifacts and _is_inside(filename, self.basedir):
                self._record_resource(filename, filename)
            else:
                self._record_resource(filename, _store_by_md5(filename, self.resource_dir))

    def copied_resource_event(self, filename: str, original: str) -> None:
        """Keep ``filename`` in ``_resources``, named and recorded as the resource ``original``."""
        with self._lock:
            _check_readable_file(filename, "resource")
            stored = _store_by_md5(filename, self.resource_dir, name=original)
            self._record_resource(str(original), stored)

    def _record_resource(self, original: str, stored: str) -> None:
        entry = [original, os.path.relpath(stored, self.basedir)]
        resources = self.run_entry.setdefault("resources", [])
        if entry not in resources:
            resources.append(entry)
        self._save_run()

    def artifact_event(
        self,
        name: str,
        filename: str,
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> None:
        """Copy ``filename`` to ``<run folder>/<name>``; ``name`` may hold subfolders."""
        with self._lock:
            _check_readable_file(filename, "artifact")
            if name is None:
                name = os.path.basename(filename)
            target = _checked_target(self._rundir(), name, "artifact")
            if target is None:
                raise UsageError(f"artifact name {name!r} is not a file name")
            if self.copy_artifacts:
                _copy_atomic(filename, target)
            else:
                _symlink_atomic(os.path.abspath(filename), target)
            artifacts = self.run_entry.setdefault("artifacts", [])
            if name not in artifacts:
                artifacts.append(name)
            self._save_run()

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        """Append the new points to the metrics log; refresh metrics.json when they doubled."""
        series = []
        for name, metric in (metrics_by_name or {}).items():
            times = [
                t.isoformat(timespec="microseconds") if isinstance(t, datetime.datetime) else t
                for t in metric.get("timestamps", ())
            ]
            steps, values = metric.get("steps", ()), metric.get("values", ())
            series.append((name, steps, _json_list(times).encode(), values))
        self._add_metrics(series)

    def log_metric_columns(self, columns: dict, info: dict) -> None:
        """:meth:`log_metrics` for the columns of a run, without a datetime per point."""
        self._add_metrics(
            [
                (name, c["steps"], utc_isoformat_json(c["timestamps"]), c["values"])
                for name, c in columns.items()
            ]
        )

    def _add_metrics(self, series: list[tuple[Any, Any, bytes, Any]]) -> None:
        with self._lock:
            parts, count = _metrics_json(series)
            if count:
                _append_parts(self._path(METRICS_LOG), [*parts, b"\n"])
                self._points += count
            saved = self._points_saved
            # Rewriting only after doubling keeps the total work linear in the points.
            if saved is None or (self._points > saved and self._points >= 2 * saved):
                try:
                    # The first batch is the whole log: its text is metrics.json as it is.
                    self._save_metrics(parts if self._points == count else None)
                except OSError as exc:
                    # The points are in the log already: failing here would make a replay
                    # record them twice. metrics.json is rebuilt at the next chance.
                    log.debug("metrics.json not refreshed: %s", exc)

    def join(self) -> None:
        """Nothing to wait for: every event is written before it returns."""

    # --- helpers -----------------------------------------------------------------

    def _rundir(self) -> str:
        if self.dir is None:
            raise ExpkitError("FileStorageObserver got a run event before the run started")
        return self.dir

    def _path(self, name: str) -> str:
        return os.path.join(self._rundir(), name)

    def _make_run_dir(self, _id: Any) -> str:
        os.makedirs(self.basedir, exist_ok=True)
        if _id is not None:
            name = _checked_id(_id)
            path = os.path.join(self.basedir, name)
            try:
                os.mkdir(path)
            except FileExistsError:
                raise UsageError(f"run folder {path} already exists: choose another id") from None
            self.dir = path
            return name
        candidate = _max_numeric_id(self.basedir) + 1
        for _ in range(_MAX_ID_TRIES):
            path = os.path.join(self.basedir, str(candidate))
            try:
                os.mkdir(path)  # atomic: exactly one process wins each number
            except FileExistsError:
                candidate += 1
                continue
            self.dir = path
            return str(candidate)
        raise ExpkitError(f"could not create a new run folder in {self.basedir}")

    def _copy_source(self, path: str, relpath: str) -> None:
        try:
            target = _checked_target(self._rundir(), relpath, "source")
        except UsageError:
            return  # outside base_dir or named like a store file: it is still in _sources
        if target is not None and os.path.isfile(path):
            _copy_atomic(path, target)

    def _experiment_entry(self, ex_info: dict) -> dict:
        # A copy: the same ex_info goes to the other observers (Sacred rewrote it in place).
        entry = dict(ex_info or {})
        base = entry.get("base_dir") or ""
        sources = []
        for relpath, _ in _source_pairs(entry):
            path = os.path.abspath(os.path.join(base, relpath))
            stored = path
            if self.copy_sources and os.path.isfile(path):
                # A source deleted since it was found is recorded by path rather than
                # failing the whole start.
                stored = os.path.relpath(_store_by_md5(path, self.source_dir), self.basedir)
            sources.append([relpath, stored])
        entry["sources"] = sources
        return entry

    def _save_json(self, name: str, obj: Any) -> None:
        _write_atomic(self._path(name), dumps(obj))

    def _save_run(self) -> None:
        self._save_json(RUN_FILE, self.run_entry)

    def _save_cout(self, text: str) -> None:
        written, tail = self._cout_len, self._cout_tail
        if len(text) >= written and text[written - len(tail) : written] == tail:
            if len(text) > written:
                _append_text(self._path(COUT_FILE), text[written:])
        else:
            # The filter rewrote earlier output: replace the file once.
            _write_atomic(self._path(COUT_FILE), text)
        self._cout_len = len(text)
        self._cout_tail = text[-_COUT_TAIL:]

    def _save_info(self) -> None:
        if not self.info and self._info_text is None:
            return  # Sacred writes no info.json while the info is empty
        text = dumps(self.info)
        if text != self._info_text:
            _write_atomic(self._path(INFO_FILE), text)
            self._info_text = text

    def _save_metrics(self, parts: list[bytes] | None = None) -> None:
        if parts is None:
            # Compact: an indented dump takes json's slow pure-Python path, and this is big.
            parts = [_compact(read_metrics_log(self._path(METRICS_LOG))).encode()]
        replace_file(self._path(METRICS_FILE), lambda f: _write_parts(f, parts))
        self._points_saved = self._points

    def _finish(self) -> None:
        if self._points_saved is not None and self._points != self._points_saved:
            self._save_metrics()
        self._save_run()
        self._append_index()

    def _append_index(self) -> None:
        run_id = os.path.basename(self._rundir())
        line = _index_line(_summary(run_id, to_data(self.run_entry), to_data(self.config)))
        try:
            _append_bytes(os.path.join(self.basedir, INDEX_FILE), line)
        except OSError as exc:
            # The index is a cache: readers find this run from its folder.
            log.debug("%s not updated: %s", INDEX_FILE, exc)


# --- plugin hooks -------------------------------------------------------------------


def _folder_of(url: str) -> str | None:
    """The folder of ``file://PATH`` or of a plain path; ``None`` for other schemes."""
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path:
            raise UsageError(f"store URL {url!r} names no folder: write file://PATH")
        return path
    if "://" in url:
        return None
    if not url:
        raise UsageError("store path is empty: give a folder or file://PATH")
    return url


@hookimpl
def expkit_store_for_url(url: str) -> FileStorageObserver | None:
    """Claim ``file://PATH`` and plain paths."""
    folder = _folder_of(url)
    return None if folder is None else FileStorageObserver(folder)


@hookimpl
def expkit_reader_for_url(url: str) -> FileStoreReader | None:
    """Read the stores of :func:`expkit_store_for_url`: ``file://PATH`` and plain paths."""
    folder = _folder_of(url)
    return None if folder is None else FileStoreReader(folder, url)


@hookimpl
def expkit_store_schemes() -> list[str]:
    """The file store claims ``file://`` (and plain paths)."""
    return ["file"]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import FileStorageObserver``."""
    return FileStorageObserver if name == "FileStorageObserver" else None


# --- reading -------------------------------------------------------------------------


def read_run(basedir: str | os.PathLike[str], run_id: Any) -> dict:
    """The record of run ``run_id`` under ``basedir``: run.json plus config, info and metrics.

    The result has run.json's keys and ``_id``, ``config``, ``info`` and
    ``metrics`` (Sacred's metrics format). Metrics come from the append log
    when there is one, since it is never behind metrics.json.
    """
    rundir = os.path.join(os.fspath(basedir), str(run_id))
    run_path = os.path.join(rundir, RUN_FILE)
    if not os.path.isfile(run_path):
        raise UsageError(f"no run {str(run_id)!r} in {os.fspath(basedir)} (no {run_path})")
    record = _load_json(run_path)
    record["_id"] = str(run_id)
    record["config"] = _load_json(os.path.join(rundir, CONFIG_FILE), default={})
    record["info"] = _load_json(os.path.join(rundir, INFO_FILE), default={})
    log = os.path.join(rundir, METRICS_LOG)
    if os.path.exists(log):
        record["metrics"] = read_metrics_log(log)
    else:
        record["metrics"] = _load_json(os.path.join(rundir, METRICS_FILE), default={})
    return record


def read_metrics_log(path: str | os.PathLike[str]) -> dict:
    """Rebuild Sacred's metrics dict from an append log; a torn last line is skipped."""
    metrics: dict[str, dict[str, list]] = {}
    if not os.path.exists(path):
        return metrics
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # the process died while writing this batch
            for name, batch in json.loads(line).items():
                series = metrics.setdefault(name, {"steps": [], "timestamps": [], "values": []})
                for key, values in series.items():
                    values.extend(batch[key])
    return metrics


def _load_json(path: str, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        if default is None:
            raise
        return default
    except ValueError as exc:
        raise ExpkitError(f"{path} is not valid JSON: {exc}") from None


_FINAL = frozenset({"COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT"})
_SUMMARY_KEYS = ("command", "start_time", "stop_time", "heartbeat", "result", "meta")


class FileStoreReader:
    """Read the runs of a file store: summaries from its index, everything from the folders."""

    def __init__(self, basedir: str | os.PathLike[str], url: str | None = None) -> None:
        self.basedir = os.path.abspath(basedir)
        self.url = url if url is not None else os.fspath(basedir)
        self._redacted_url = redact_url(self.url)  # once: every record names it
        if not os.path.isdir(self.basedir):
            raise UsageError(f"no file store at {self.basedir}: the folder does not exist")

    def __repr__(self) -> str:
        return f"FileStoreReader({self.basedir!r})"

    def list_runs(self) -> list[RunRecord]:
        """Every run as a summary (no output, metrics, host or experiment info), in id order."""
        index_path = os.path.join(self.basedir, INDEX_FILE)
        indexed, lines, intact = _fold_index(index_path)
        summaries: dict[str, dict] = {}
        repaired: list[dict] = []
        for name in _run_folders(self.basedir):
            summary = indexed.get(name)
            if summary is None or summary.get("status") not in _FINAL:
                # Unknown to the index, or maybe changed since: the folder is the truth.
                summary = self._summary_from_folder(name)
                if summary is None:
                    continue
                if summary.get("status") in _FINAL:
                    repaired.append(summary)
            summaries[name] = summary
        ordered = sorted(summaries.values(), key=_id_order)
        if not intact or lines > 3 * len(ordered) + 64:
            # Missing, torn at the end, or mostly superseded lines: write it anew.
            _write_index(index_path, ordered)
        elif repaired:
            with contextlib.suppress(OSError):  # a read-only store is still listed
                _append_bytes(index_path, b"".join(_index_line(s) for s in repaired))
        return [self._record(s) for s in ordered]

    def get_run(self, run_id: Any) -> RunRecord:
        """Everything recorded about run ``run_id``; :class:`KeyError` when there is none."""
        rundir = self._rundir(run_id)
        name = os.path.basename(rundir)
        data = read_run(self.basedir, name)
        try:
            with open(os.path.join(rundir, COUT_FILE), encoding="utf-8", errors="replace") as f:
                captured_out = f.read()
        except FileNotFoundError:
            captured_out = ""
        summary = _summary(name, data, data["config"])
        meta = data.get("meta")
        return attrs.evolve(
            self._record(summary),
            meta=meta if isinstance(meta, dict) else {},  # all of it: the summary's is cut
            host=data.get("host") or {},
            experiment_info=data.get("experiment") or {},
            info=data["info"],
            fail_trace=data.get("fail_trace"),
            artifacts=tuple(data.get("artifacts") or ()),
            resources=tuple(
                (path, self._stored_md5(stored)) for path, stored in _resource_pairs(data)
            ),
            captured_out=captured_out,
            metrics=_metrics_with_times(data["metrics"]),
        )

    def read_source(self, run_id: Any, name: str) -> bytes:
        """The stored copy of the run's source file ``name`` (relative to its base dir)."""
        entry = _load_json(os.path.join(self._rundir(run_id), RUN_FILE))
        for relpath, stored in _source_pairs(entry.get("experiment") or {}):
            if relpath == name:
                return _read_bytes(os.path.join(self.basedir, stored), f"source {name!r}")
        raise KeyError(f"run {str(run_id)!r} in {self.basedir} has no source {name!r}")

    def read_artifact(self, run_id: Any, name: str) -> bytes:
        """The content of the run's artifact ``name``."""
        rundir = self._rundir(run_id)
        entry = _load_json(os.path.join(rundir, RUN_FILE))
        # Only listed names are read: they were checked to stay inside the run folder.
        if name not in (entry.get("artifacts") or ()):
            raise KeyError(f"run {str(run_id)!r} in {self.basedir} has no artifact {name!r}")
        return _read_bytes(os.path.join(rundir, name), f"artifact {name!r}")

    def read_resource(self, run_id: Any, path: str) -> bytes:
        """The stored copy of the input file the run recorded under its original ``path``."""
        entry = _load_json(os.path.join(self._rundir(run_id), RUN_FILE))
        for original, stored in _resource_pairs(entry):
            if original == path:
                return _read_bytes(os.path.join(self.basedir, stored), f"resource {path!r}")
        raise KeyError(f"run {str(run_id)!r} in {self.basedir} has no resource {path!r}")

    def edit_run(
        self, run_id: Any, *, comment: str | None = None, tags: list[str] | None = None
    ) -> None:
        """Set the run's ``meta.comment`` and ``meta.tags`` in run.json (and in the index)."""
        rundir = self._rundir(run_id)
        path = os.path.join(rundir, RUN_FILE)
        entry = _load_json(path)
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        entry["meta"] = edited_meta(meta, comment, tags)
        _write_atomic(path, dumps(entry))
        if entry.get("status") in _FINAL:
            # The index would otherwise keep listing the run as it was before the edit.
            config = _load_json(os.path.join(rundir, CONFIG_FILE), default={})
            line = _index_line(_summary(os.path.basename(rundir), entry, config))
            with contextlib.suppress(OSError):  # the index is a cache: rebuilt when stale
                _append_bytes(os.path.join(self.basedir, INDEX_FILE), line)

    def delete_run(self, run_id: Any) -> None:
        """Remove the run's folder (its sources in ``_sources`` may be shared and stay)."""
        import shutil  # not at the top: every run loads this plugin, few delete runs

        shutil.rmtree(self._rundir(run_id))

    def _rundir(self, run_id: Any) -> str:
        try:
            name = _checked_id(run_id)
        except UsageError:
            raise KeyError(f"no run {str(run_id)!r} in {self.basedir}") from None
        rundir = os.path.join(self.basedir, name)
        if not os.path.isfile(os.path.join(rundir, RUN_FILE)):
            raise KeyError(f"no run {name!r} in {self.basedir}")
        return rundir

    def _stored_md5(self, stored: str) -> str:
        try:
            return file_md5(os.path.join(self.basedir, stored))
        except OSError:
            return ""  # recorded but gone: the run is still readable, read_resource says why

    def _summary_from_folder(self, name: str) -> dict | None:
        rundir = os.path.join(self.basedir, name)
        try:
            entry = _load_json(os.path.join(rundir, RUN_FILE))
            config = _load_json(os.path.join(rundir, CONFIG_FILE), default={})
        except FileNotFoundError:
            return None  # not a run folder, or a run whose start is being written
        except ExpkitError as exc:
            log.warning("skipping run %s: %s", name, exc)
            return None
        if not isinstance(entry, dict):
            log.warning("skipping run %s: %s holds no JSON object", name, RUN_FILE)
            return None
        return _summary(name, entry, config)

    def _record(self, summary: dict) -> RunRecord:
        return RunRecord(
            id=summary["id"],
            store=self._redacted_url,
            experiment=summary.get("experiment") or "",
            status=summary.get("status") or "",
            command=summary.get("command"),
            start_time=_time(summary.get("start_time")),
            stop_time=_time(summary.get("stop_time")),
            heartbeat=_time(summary.get("heartbeat")),
            config=summary.get("config") or {},
            result=summary.get("result"),
            meta=summary.get("meta") or {},
        )


def rebuild_index(basedir: str | os.PathLike[str]) -> int:
    """Write ``<basedir>/_index/runs.jsonl`` anew from the run folders; return the run count."""
    reader = FileStoreReader(basedir)
    summaries = [
        s for name in _run_folders(reader.basedir) if (s := reader._summary_from_folder(name))
    ]
    _write_index(os.path.join(reader.basedir, INDEX_FILE), sorted(summaries, key=_id_order))
    return len(summaries)


def _summary(run_id: str, entry: dict, config: Any) -> dict:
    """The index line of a run: what listing and filtering need, small enough to read 10,000."""
    experiment = entry.get("experiment")
    summary = {
        "id": run_id,
        "experiment": experiment.get("name") if isinstance(experiment, dict) else None,
        "status": entry.get("status"),
        "config": config if isinstance(config, dict) else {},
    }
    for key in _SUMMARY_KEYS:
        summary[key] = entry.get(key)
    if isinstance(summary["meta"], dict):
        # The command-line options and config docs take most of the space; no listing shows them.
        summary["meta"] = {
            k: v for k, v in summary["meta"].items() if k not in ("options", "config_docs")
        }
    return summary


def _index_line(summary: dict) -> bytes:
    return (_compact(summary) + "\n").encode("utf-8", errors="replace")


def _fold_index(path: str) -> tuple[dict[str, dict], int, bool]:
    """The last summary of every id in the index, its number of lines, and whether it is
    there and whole (appending after a torn line would damage the next one too)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}, 0, False
    except OSError as exc:
        log.warning("cannot read %s (%s): reading the run folders instead", path, exc)
        return {}, 0, False
    folded: dict[str, dict] = {}
    lines = 0
    damaged = False
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        lines += 1
        try:
            summary = json.loads(line)
            folded[str(summary["id"])] = summary
        except (ValueError, TypeError, KeyError):
            # A torn or damaged line: its run is read from its folder instead.
            damaged = True
    return folded, lines, not damaged and (not data or data.endswith(b"\n"))


def _write_index(path: str, summaries: Iterable[dict]) -> None:
    data = b"".join(_index_line(s) for s in summaries)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        replace_file(path, lambda f: f.write(data))
    except OSError as exc:
        log.debug("%s not rewritten: %s", path, exc)


def _run_folders(basedir: str) -> list[str]:
    with os.scandir(basedir) as entries:
        return [
            entry.name
            for entry in entries
            if entry.name not in (SOURCES_DIR, RESOURCES_DIR, os.path.dirname(INDEX_FILE))
            and not entry.name.startswith(".")
            and entry.is_dir()
        ]


def _id_order(summary: dict) -> tuple:
    name = str(summary["id"])
    return (0, int(name), "") if name.isascii() and name.isdigit() else (1, 0, name)


def _time(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None  # not a time expkit or Sacred wrote: shown as unknown


def _metrics_with_times(metrics: dict) -> dict[str, dict]:
    return {
        name: {
            "steps": list(series.get("steps", ())),
            "values": list(series.get("values", ())),
            "timestamps": [_time(t) for t in series.get("timestamps", ())],
        }
        for name, series in metrics.items()
    }


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ExpkitError(
            f"{what} is recorded but cannot be read from {path}: {exc.strerror}"
        ) from None


# --- files ------------------------------------------------------------------------------


def _checked_id(_id: Any) -> str:
    name = str(_id)
    if (
        not name
        or name in {".", "..", SOURCES_DIR, RESOURCES_DIR}
        or "/" in name
        or os.sep in name
        or (os.altsep and os.altsep in name)
        or "\0" in name
    ):
        raise UsageError(f"run id {name!r} cannot be a folder name in the file store")
    return name


def _max_numeric_id(basedir: str) -> int:
    best = 0
    with os.scandir(basedir) as entries:
        for entry in entries:
            name = entry.name
            if name.isascii() and name.isdigit() and entry.is_dir():
                best = max(best, int(name))
    return best


def _resource_pairs(entry: dict) -> Iterable[tuple[str, str]]:
    """``(original path, stored path relative to basedir)`` of each resource in ``run.json``."""
    for item in entry.get("resources") or ():
        if isinstance(item, list | tuple) and len(item) >= 2:
            yield str(item[0]), str(item[1])


def _source_pairs(ex_info: dict) -> Iterable[tuple[str, str]]:
    for source in ex_info.get("sources") or ():
        if isinstance(source, (list, tuple)):
            yield source[0], source[1]
        else:  # an expkit.records.Source
            yield source.name, source.md5


def _checked_target(rundir: str, name: str, what: str) -> str | None:
    """The path of ``name`` inside ``rundir`` (subfolders created), or a UsageError.

    Returns ``None`` for names that designate no file (``""``, ``"sub/"``). No
    existing part of the path may be a symlink, so nothing lands outside ``rundir``.
    """
    if "\0" in name:
        raise UsageError(f"{what} name {name!r} contains a NUL character")
    unix = name.replace(os.sep, "/")
    if os.altsep:
        unix = unix.replace(os.altsep, "/")
    parts = [p for p in unix.split("/") if p not in ("", ".")]
    if os.path.isabs(name) or os.path.splitdrive(name)[0] or ".." in parts:
        raise UsageError(f"{what} name {name!r} would be stored outside the run folder {rundir}")
    if not parts or unix.endswith("/"):
        return None
    if len(parts) == 1 and parts[0].casefold() in RESERVED_NAMES:
        reserved = ", ".join(sorted(RESERVED_NAMES))
        raise UsageError(
            f"{what} name {name!r} is reserved for the file store (reserved: {reserved})"
        )
    folder = rundir
    for part in parts[:-1]:
        folder = os.path.join(folder, part)
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            os.mkdir(folder)
            continue
        if stat.S_ISLNK(mode):
            raise UsageError(
                f"{what} name {name!r} goes through the symlink {folder}, "
                f"which could lead outside the run folder {rundir}"
            )
        if not stat.S_ISDIR(mode):
            raise UsageError(f"{what} name {name!r} uses {folder} as a folder, but it is a file")
    target = os.path.join(folder, parts[-1])
    if os.path.isdir(target) and not os.path.islink(target):
        raise UsageError(f"{what} name {name!r} is an existing folder of the run ({target})")
    return target


def _check_readable_file(filename: str, what: str) -> None:
    if not os.path.exists(filename):
        raise UsageError(f"{what} file {filename} does not exist")
    if not os.path.isfile(filename):
        raise UsageError(f"{what} {filename} is not a file (folders cannot be stored)")


def _is_inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _store_by_md5(path: str, store_dir: str, name: str | None = None) -> str:
    """Copy ``path`` to ``store_dir/<stem>_<md5><ext>`` of ``name`` (default: ``path``) once."""
    stem, ext = os.path.splitext(os.path.basename(name or path))
    target = os.path.join(store_dir, f"{stem}_{file_md5(path)}{ext}")
    if not os.path.exists(target):
        os.makedirs(store_dir, exist_ok=True)
        _copy_atomic(path, target)
    return target


def _write_atomic(path: str, text: str) -> None:
    """Replace ``path`` by ``text``: readers see the old file or the new one, never a part."""
    data = text.encode("utf-8", errors="replace")
    replace_file(path, lambda f: f.write(data))


def _copy_atomic(source: str, path: str) -> None:
    def fill(out: Any) -> None:
        with open(source, "rb") as src:
            while chunk := src.read(_CHUNK):
                out.write(chunk)

    replace_file(path, fill)


def _symlink_atomic(source: str, path: str) -> None:
    temp = f"{path}.{os.urandom(6).hex()}.tmp"
    os.symlink(source, temp)
    os.replace(temp, path)


def _append_bytes(path: str, data: bytes) -> None:
    """Append ``data`` with one ``O_APPEND`` write: concurrent appenders never interleave."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _cut_torn_line(path: str) -> None:
    """Cut off the end of ``path`` after its last newline: a line a failed write left half."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        end = pos = f.seek(0, os.SEEK_END)
        keep = 0
        while pos > 0:
            start = max(0, pos - _CHUNK)
            f.seek(start)
            newline = f.read(pos - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        if keep < end:
            f.truncate(keep)


def _append_text(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8", errors="replace", newline="") as f:
        f.write(text)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=True)


def _json_list(values: Any) -> str:
    """``values`` as a compact JSON array; what json cannot write goes through ``to_data``."""
    try:
        return json.dumps(values, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError):
        return json.dumps(to_data(list(values)), separators=(",", ":"), allow_nan=True)


def _metrics_json(series: list[tuple[Any, Any, bytes, Any]]) -> tuple[list[bytes], int]:
    """The compact JSON object of a batch ``[(name, steps, timestamps as JSON, values)]``
    in pieces (so that no copy of it all is made), and the number of points in it.

    The text is what :func:`_compact` gives for ``{name: {"steps", "timestamps", "values"}}``.
    """
    parts = [b"{"]
    count = 0
    for name, steps, times, values in sorted(series, key=lambda s: str(s[0])):
        if not len(steps):
            continue
        head = f'{"," if count else ""}{json.dumps(str(name))}:{{"steps":{_json_list(steps)}'
        values_text = f',"values":{_json_list(values)}}}'
        parts += [head.encode(), b',"timestamps":', times, values_text.encode()]
        count += len(steps)
    parts.append(b"}")
    return parts, count


def _write_parts(f: Any, parts: list[bytes]) -> None:
    for part in parts:
        f.write(part)


def _append_parts(path: str, parts: list[bytes]) -> None:
    with open(path, "ab") as f:
        _write_parts(f, parts)
