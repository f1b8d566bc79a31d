"""The file store: every run in its own folder, in Sacred's FileStorageObserver layout.

::

    <basedir>/<id>/run.json       the run record, replaced at every event
    <basedir>/<id>/config.json    the final configuration
    <basedir>/<id>/cout.txt       captured output, appended at every heartbeat
    <basedir>/<id>/metrics.json   Sacred's metrics format (parallel lists per name)
    <basedir>/<id>/metrics.jsonl  expkit's append-only metrics log, one line per batch
    <basedir>/<id>/metrics.columns the log's numbers in binary, for fast reading (a cache)
    <basedir>/<id>/info.json      ``run.info``, only once it is non-empty
    <basedir>/<id>/<artifacts>
    <basedir>/_sources/<stem>_<md5><ext>
    <basedir>/_resources/<stem>_<md5><ext>
    <basedir>/_index/runs.jsonl   one summary line per finished run (see below)

Unlike Sacred's observer it never loses or tears a file: JSON files are
replaced atomically, ids are claimed with ``os.mkdir`` so concurrent processes
get distinct ones, ``metrics.json`` is rewritten at each heartbeat that follows
new points and, between heartbeats, only when their number has doubled (the log
holds every point in between), and artifact names cannot leave the run folder.

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
import hashlib
import io
import json
import logging
import os
import posixpath
import stat
import threading
import time
import zlib
from collections.abc import Iterable
from typing import Any

from expkit.errors import ExpkitError, UsageError
from expkit.observers import deprecated_create, utc_isoformat_json
from expkit.serialize import dumps, to_data
from expkit.store import (
    FINAL_STATUSES,
    SUMMARY_FIELDS,
    SUMMARY_META_OMITS,
    NoStoreError,
    Storage,
    StoredFile,
    StoreError,
    StoreObserver,
    StoreReader,
)
from expkit.utils import file_md5, is_inside, replace_file

from . import columns as _columns

log = logging.getLogger("expkit")

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
COUT_FILE = "cout.txt"
METRICS_FILE = "metrics.json"
METRICS_LOG = "metrics.jsonl"
METRICS_COLUMNS = "metrics.columns"
INFO_FILE = "info.json"
# In a folder of its own: Sacred-era readers skip "_" folders they cannot read as runs,
# but would stumble over a plain file beside the run folders.
INDEX_FILE = os.path.join("_index", "runs.jsonl")
SOURCES_DIR = "_sources"
RESOURCES_DIR = "_resources"
# Artifacts may not take these names: the store itself writes them.
RESERVED_NAMES = frozenset(
    {RUN_FILE, CONFIG_FILE, COUT_FILE, METRICS_FILE, METRICS_LOG, METRICS_COLUMNS, INFO_FILE}
)

_COUT_TAIL = 1000  # characters of cout.txt remembered to check that new output extends it
_MAX_ID_TRIES = 10_000
_CHUNK = 1 << 20


class FileStorage(Storage):
    """Runs as folders under ``basedir``: the primitives of the file store.

    With ``copy_sources=False`` sources are recorded by absolute path instead of
    being copied to ``_sources``; with ``copy_artifacts=False`` resources already
    inside ``basedir`` are recorded where they are and artifacts are symlinked into
    the run folder instead of copied. Stored resource paths are relative to
    ``basedir`` (Sacred made them relative to the working directory).
    """

    capabilities = frozenset({"delete", "edit"})

    def __init__(
        self,
        basedir: str | os.PathLike[str],
        resource_dir: str | os.PathLike[str] | None = None,
        source_dir: str | os.PathLike[str] | None = None,
        copy_artifacts: bool = True,
        copy_sources: bool = True,
        url: str | None = None,
    ) -> None:
        if not os.fspath(basedir):
            raise UsageError("the file store needs a folder: basedir is empty")
        # Absolute, so that a run that changes its working directory still writes here.
        self.basedir = os.path.abspath(basedir)
        if os.path.exists(self.basedir) and not os.path.isdir(self.basedir):
            # It would refuse every run, and each would wait in the spool for nothing.
            raise UsageError(f"file store path {os.fspath(basedir)!r} is a file, not a folder")
        self.url = url if url is not None else os.fspath(basedir)
        self.resource_dir = os.path.abspath(
            resource_dir or os.path.join(self.basedir, RESOURCES_DIR)
        )
        self.source_dir = os.path.abspath(source_dir or os.path.join(self.basedir, SOURCES_DIR))
        self.copy_artifacts = copy_artifacts
        self.copy_sources = copy_sources
        self.dir: str | None = None  # the folder of the run being written
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        # Per-run state: one store records several runs one after the other.
        self.dir = None
        self._cout_len = 0
        self._cout_tail = ""
        self._info_text: str | None = None
        self._points = 0
        self._points_saved: int | None = None
        self._metrics_saved_at = 0.0  # time.monotonic() of the last metrics.json rewrite
        self._metrics_saved_bytes = 0  # the size it wrote

    def __repr__(self) -> str:
        return f"FileStorage({self.basedir!r})"

    # --- writing ---

    def create(self, doc: dict) -> str:
        """Claim the run's folder (``os.mkdir``: concurrent runs get distinct ids) and fill it."""
        with self._lock:
            self._reset()
            run_id = self._make_run_dir(doc["_id"])
            self._save_json(CONFIG_FILE, doc.get("config") or {})
            self._save_json(RUN_FILE, _run_json(doc))
            if doc.get("status") == "QUEUED":
                if self.copy_sources:
                    # A queued run keeps its own copy of the code it is to run.
                    base = doc["experiment"].get("base_dir") or ""
                    for source in doc["experiment"].get("sources") or ():
                        self._copy_source(os.path.join(base, source.name), source.name)
            else:
                with open(self._path(COUT_FILE), "a", encoding="utf-8"):
                    pass
            return run_id

    def reopen(self, run_id: Any) -> dict:
        """Go on writing the stored run ``run_id`` (its spooled events are being replayed)."""
        with self._lock:
            self._reset()
            path = os.path.join(self.basedir, _checked_id(run_id))
            if not os.path.isdir(path):
                raise UsageError(f"cannot resume run {run_id!r}: no folder {path}")
            doc = self.load(run_id)
            self.dir = path
            if doc.get("info"):
                self._info_text = dumps(doc["info"])
            text = doc.get("captured_out") or ""
            self._cout_len, self._cout_tail = len(text), text[-_COUT_TAIL:]
            # A batch torn by the failure is replayed whole: new lines must not extend it.
            _cut_torn_line(self._path(METRICS_LOG))
            _cut_torn_columns(self._path(METRICS_COLUMNS), self._path(METRICS_LOG))
            metrics = read_metrics_log(self._path(METRICS_LOG))
            self._points = sum(len(m.get("steps", ())) for m in metrics.values())
            # metrics.json may be behind the log (the run was killed between two beats):
            # rewritten at the next chance.
            self._points_saved = -1 if metrics else None
            return doc

    def update(self, doc: dict, changed: frozenset[str]) -> None:
        """Write the files that hold the ``changed`` fields; index the run once it ended."""
        with self._lock:
            if self.dir is None or os.path.basename(self.dir) != str(doc["_id"]):
                # Not the run being written: an edit of a stored run.
                self._reset()
                self.dir = self._rundir(doc["_id"])
            if "config" in changed:
                self._save_json(CONFIG_FILE, doc.get("config") or {})
            if "captured_out" in changed:
                self._save_cout(doc.get("captured_out") or "")
            if "info" in changed:
                self._save_info(doc.get("info") or {})
            if "heartbeat" in changed:
                self._save_metrics_at_beat()
            if changed - {"config", "captured_out", "info"}:
                self._save_json(RUN_FILE, _run_json(doc))
            if doc.get("status") in FINAL_STATUSES and changed & _INDEXED:
                if "status" in changed:
                    self._save_metrics_if_behind()
                self._append_index(doc)

    def put_file(self, kind: str, file: StoredFile, path: str) -> str:
        """Sources and resources once per content in ``_sources``/``_resources``; artifacts
        in the run folder under their name (which may hold subfolders, never leave it)."""
        name = file.name
        with self._lock:
            if kind == "source":
                if not self.copy_sources:
                    return path
                return os.path.relpath(_store_by_md5(path, self.source_dir), self.basedir)
            if kind == "resource":
                if not self.copy_artifacts and is_inside(path, self.basedir):
                    return os.path.relpath(path, self.basedir)
                stored = _store_by_md5(path, self.resource_dir, name=name)
                return os.path.relpath(stored, self.basedir)
            target = _checked_target(self._current(), name, "artifact")
            if target is None:
                raise UsageError(f"artifact name {name!r} is not a file name")
            if self.copy_artifacts:
                _copy_atomic(path, target)
            else:
                _symlink_atomic(path, target)
            return name

    def append_metrics(self, run_id: Any, columns: dict[str, dict]) -> None:
        """Append the points to the metrics log; refresh metrics.json when they doubled."""
        series = [
            (name, c["steps"], utc_isoformat_json(c["timestamps"]), c["values"])
            for name, c in columns.items()
        ]
        with self._lock:
            parts, count = _metrics_json(series)
            if count:
                line = [*parts, b"\n"]
                start, end = _append_parts(self._path(METRICS_LOG), line)
                self._points += count
                self._append_columns(series, start, end, _crc(line))
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

    # --- reading ---

    def summaries(self) -> list[dict]:
        """Every run's summary: from the index where it is current, else from its folder."""
        if not os.path.isdir(self.basedir):
            raise NoStoreError(f"no file store at {self.basedir}: the folder does not exist")
        index_path = os.path.join(self.basedir, INDEX_FILE)
        indexed, lines, intact = _fold_index(index_path)
        summaries: dict[str, dict] = {}
        repaired: list[dict] = []
        for name in _run_folders(self.basedir):
            summary = indexed.get(name)
            if summary is None or not _current(summary, self.basedir):
                # Unknown to the index, changed since, or damaged: the folder is the truth.
                summary = self._summary_from_folder(name)
                if summary is None:
                    continue
                if summary.get("status") in FINAL_STATUSES:
                    repaired.append(summary)
            summaries[name] = summary
        ordered = sorted(summaries.values(), key=_id_order)
        if not intact or lines > 3 * len(ordered) + 64:
            # Missing, torn at the end, or mostly superseded lines: write it anew.
            _write_index(index_path, ordered)
        elif repaired:
            with contextlib.suppress(OSError):  # a read-only store is still listed
                _append_bytes(index_path, b"".join(_index_line(s) for s in repaired))
        return [_doc_from_summary(s) for s in ordered]

    def stamp(self) -> tuple[int, ...]:
        """The store folder's modification time (a run folder made or removed) and the
        index's size and time (a run ended or edited)."""
        stamp = []
        for path in (self.basedir, os.path.join(self.basedir, INDEX_FILE)):
            try:
                st = os.stat(path)
            except OSError:
                stamp += [-1, -1]
            else:
                stamp += [st.st_size, st.st_mtime_ns]
        return tuple(stamp)

    def load(self, run_id: Any) -> dict:
        """The run's document from run.json, config.json, info.json and cout.txt."""
        rundir = self._rundir(run_id)
        entry = _load_json(os.path.join(rundir, RUN_FILE))
        if not isinstance(entry, dict):
            raise StoreError(f"{os.path.join(rundir, RUN_FILE)} holds no JSON object")
        doc = _doc_from_disk(entry, os.path.basename(rundir))
        doc["_id"] = os.path.basename(rundir)
        doc["config"] = _load_json(os.path.join(rundir, CONFIG_FILE), default={}, damaged={})
        doc["info"] = _load_json(os.path.join(rundir, INFO_FILE), default={}, damaged={})
        try:
            with open(os.path.join(rundir, COUT_FILE), encoding="utf-8", errors="replace") as f:
                doc["captured_out"] = f.read()
        except FileNotFoundError:
            doc["captured_out"] = ""
        return doc

    def load_metrics(self, run_id: Any) -> dict[str, dict]:
        """The run's metrics: from the append log when there is one (never behind metrics.json)."""
        rundir = self._rundir(run_id)
        path = os.path.join(rundir, METRICS_LOG)
        if os.path.exists(path):
            return read_metrics(path, os.path.join(rundir, METRICS_COLUMNS))
        return _load_json(os.path.join(rundir, METRICS_FILE), default={}, damaged={})

    def read_file(self, run_id: Any, kind: str, file: StoredFile) -> bytes:
        """A stored source or resource (by its path in the store, else by its name in
        ``_sources``/``_resources``) or an artifact (by name)."""
        # Only files in the store are read: a run.json edited or copied in from elsewhere
        # must not make a reader (expkit ui) serve whatever file it names.
        if kind == "artifact":
            rundir = self._rundir(run_id)
            path = os.path.join(rundir, file.name)
            if not is_inside(path, rundir):
                raise StoreError(f"artifact {file.name!r} of run {run_id!r} is outside its folder")
            return _read_bytes(path, f"artifact {file.name!r}")
        paths = [p for p in _stored_paths(self.basedir, kind, file) if is_inside(p, self.basedir)]
        if not paths:
            raise StoreError(f"{kind} {file.name!r} of run {run_id!r} is outside the store")
        for path in paths:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if is_content_of(file, path, data):
                return data
        _read_bytes(paths[0], f"{kind} {file.name!r}")  # raises: it is not where recorded
        raise ExpkitError(f"{kind} {file.name!r} is recorded, but {paths[0]} holds other content")

    def delete(self, run_id: Any) -> None:
        """Remove the run's folder (its sources in ``_sources`` may be shared and stay)."""
        import shutil  # not at the top: few runs delete runs

        shutil.rmtree(self._rundir(run_id))

    # --- helpers ---

    def _rundir(self, run_id: Any) -> str:
        try:
            name = _checked_id(run_id)
        except UsageError:
            raise KeyError(f"no run {str(run_id)!r} in {self.basedir}") from None
        rundir = os.path.join(self.basedir, name)
        if not os.path.isfile(os.path.join(rundir, RUN_FILE)):
            raise KeyError(f"no run {name!r} in {self.basedir}")
        return rundir

    def _current(self) -> str:
        if self.dir is None:
            raise StoreError("the file store got a run event before the run started")
        return self.dir

    def _path(self, name: str) -> str:
        return os.path.join(self._current(), name)

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
        raise StoreError(f"could not create a new run folder in {self.basedir}")

    def _copy_source(self, path: str, relpath: str) -> None:
        try:
            target = _checked_target(self._current(), relpath, "source")
        except UsageError:
            return  # outside base_dir or named like a store file: it is still in _sources
        if target is not None and os.path.isfile(path):
            _copy_atomic(path, target)

    def _save_json(self, name: str, obj: Any) -> None:
        _write_atomic(self._path(name), dumps(obj))

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

    def _save_info(self, info: dict) -> None:
        if not info and self._info_text is None:
            return  # Sacred writes no info.json while the info is empty
        text = dumps(info)
        if text != self._info_text:
            _write_atomic(self._path(INFO_FILE), text)
            self._info_text = text

    def _save_metrics(self, parts: list[bytes] | None = None) -> None:
        if parts is None:
            parts = spliced_metrics_json(self._path(METRICS_LOG))
        replace_file(self._path(METRICS_FILE), lambda f: _write_parts(f, parts))
        self._points_saved = self._points
        self._metrics_saved_at = time.monotonic()
        self._metrics_saved_bytes = sum(map(len, parts))

    def _append_columns(self, series: list, start: int, end: int, crc: int) -> None:
        record = _columns.packed_batch(series, start, end, crc)
        if record is None:
            return  # readers decode this batch from the log
        path = self._path(METRICS_COLUMNS)
        try:
            with open(path, "ab") as f:  # never makes the run's folder: it may be gone
                f.write(record if f.tell() else _columns.MAGIC + record)
        except OSError as exc:
            # Only a cache: readers decode from the log what it lacks.
            log.debug("%s not extended: %s", path, exc)

    def _save_metrics_if_behind(self) -> None:
        if self._points_saved is not None and self._points != self._points_saved:
            self._save_metrics()

    def _save_metrics_at_beat(self) -> None:
        # Sacred's readers know only metrics.json, and Sacred rewrote it at every beat: a
        # killed run's is one beat behind at most. Sacred's work grew as the square of the
        # points; here a beat rewrites at most _BEAT_REWRITE_RATE bytes a second since the
        # last rewrite (a 100 MB file every 10 s), the doubling rule doing the rest.
        elapsed = time.monotonic() - self._metrics_saved_at
        if self._metrics_saved_bytes > elapsed * _BEAT_REWRITE_RATE:
            return
        try:
            self._save_metrics_if_behind()
        except OSError as exc:
            log.debug("metrics.json not refreshed: %s", exc)  # the next beat tries again

    def _append_index(self, doc: dict) -> None:
        run_id = os.path.basename(self._current())
        entry = to_data(_run_json(doc))
        summary = _summary(run_id, entry, to_data(doc.get("config") or {}))
        summary["files"] = _stamp(self._current())
        try:
            _append_bytes(os.path.join(self.basedir, INDEX_FILE), _index_line(summary))
        except OSError as exc:
            # The index is a cache: readers find this run from its folder.
            log.debug("%s not updated: %s", INDEX_FILE, exc)

    def _summary_from_folder(self, name: str) -> dict | None:
        rundir = os.path.join(self.basedir, name)
        run_path = os.path.join(rundir, RUN_FILE)
        try:
            stamp = _stamp(rundir)
            entry = _load_json(run_path)
        except FileNotFoundError:
            return None  # not a run folder, or a run whose start is being written
        except ExpkitError as exc:
            log.warning("skipping run %s: %s", name, exc)
            return None
        if not isinstance(entry, dict):
            log.warning("skipping run %s: %s holds no JSON object", name, run_path)
            return None
        config = _load_json(os.path.join(rundir, CONFIG_FILE), default={}, damaged={})
        summary = _summary(name, entry, config)
        summary["files"] = stamp
        return summary


class FileStorageObserver(StoreObserver):
    """Store runs as folders under ``basedir`` (Sacred's ``FileStorageObserver``).

    ``template`` is accepted for compatibility and ignored: expkit renders no
    Mako reports. See :class:`FileStorage` for ``copy_sources`` and ``copy_artifacts``.
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
        storage = FileStorage(basedir, resource_dir, source_dir, copy_artifacts, copy_sources)
        super().__init__(storage, priority=priority)
        self.template = template

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> FileStorageObserver:
        """Deprecated in Sacred 0.8.7 and here: ``FileStorageObserver(...)``."""
        return deprecated_create(cls, *args, **kwargs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileStorageObserver):
            return self.basedir == other.basedir
        return NotImplemented

    def __hash__(self) -> int:
        return hash((FileStorageObserver, self.basedir))

    def __repr__(self) -> str:
        return f"FileStorageObserver({self.basedir!r})"

    basedir = property(lambda self: self.storage.basedir, doc="The store's folder.")
    resource_dir = property(lambda self: self.storage.resource_dir, doc="Where resources go.")
    source_dir = property(lambda self: self.storage.source_dir, doc="Where sources go.")
    copy_artifacts = property(lambda self: self.storage.copy_artifacts, doc="Copy, not link.")
    copy_sources = property(lambda self: self.storage.copy_sources, doc="Copy sources.")
    dir = property(lambda self: self.storage.dir, doc="The folder of the run being recorded.")

    @property
    def config(self) -> dict:
        """The configuration of the run being recorded."""
        return (self.run_entry or {}).get("config") or {}

    @property
    def info(self) -> dict:
        """The info of the run being recorded, as last saved."""
        return (self.run_entry or {}).get("info") or {}

    def save_json(self, obj: Any, filename: str) -> None:
        """Write ``obj`` as JSON to ``filename`` in the run folder (Sacred's method)."""
        with self.storage._lock:
            _write_atomic(self._target(filename), dumps(obj))

    def save_file(self, filename: str, target_name: str | None = None) -> None:
        """Copy ``filename`` into the run folder as ``target_name`` (Sacred's method).

        The store's own files (run.json, cout.txt, ...) cannot be replaced this way:
        that is a :class:`FileExistsError`, as in Sacred.
        """
        name = target_name or os.path.basename(filename)
        if name.casefold() in RESERVED_NAMES:
            raise FileExistsError(f"{name!r} is written by the file store itself; choose another")
        if not os.path.isfile(filename):
            raise UsageError(f"save_file: {filename} is not a file")
        with self.storage._lock:
            _copy_atomic(filename, self._target(name))

    def _target(self, name: str) -> str:
        target = _checked_target(self.storage._current(), name, "file")
        if target is None:
            raise UsageError(f"{name!r} is not a file name")
        return target


_INDEXED = frozenset({"status", "result", "meta", "stop_time", "command", "config", "start_time"})


def _run_json(doc: dict) -> dict:
    """The run's document as run.json holds it: Sacred's layout, file entries as Sacred's."""
    entry = {k: v for k, v in doc.items() if k not in ("_id", "config", "captured_out", "info")}
    experiment = dict(doc.get("experiment") or {})
    base = experiment.get("base_dir") or ""
    run_name = str(doc.get("_id"))
    experiment["sources"] = [
        _source_entry(s, base, run_name) for s in experiment.get("sources") or ()
    ]
    entry["experiment"] = experiment
    if "resources" in doc:
        entry["resources"] = [[r.name, r.ref] for r in doc["resources"]]
    if "artifacts" in doc:
        entry["artifacts"] = [a.name for a in doc["artifacts"]]
    return entry


def _source_entry(source: StoredFile, base: str, run_name: str) -> Any:
    if source.ref is None:
        # A source gone before it could be kept is recorded by its path.
        return [source.name, os.path.abspath(os.path.join(base, source.name))]
    if source.md5 and source.ref == queued_copy(run_name, source.name):
        return {"py/tuple": [source.name, source.md5]}  # a run Sacred queued, kept as it was
    return [source.name, source.ref]


def _doc_from_disk(entry: dict, run_name: str) -> dict:
    """run.json of the run in folder ``run_name`` as the layer's document: file entries as
    stored files."""
    doc = dict(entry)
    experiment = entry.get("experiment")
    if isinstance(experiment, dict):
        experiment = dict(experiment)
        experiment["sources"] = list(_source_files(experiment, run_name))
        doc["experiment"] = experiment
    doc["resources"] = [
        StoredFile(original, _md5_of(stored), stored) for original, stored in _resource_pairs(entry)
    ]
    artifacts = entry.get("artifacts")
    doc["artifacts"] = [
        StoredFile(str(name), None, str(name))
        for name in (artifacts if isinstance(artifacts, list) else ())
        if isinstance(name, str)
    ]
    return doc


def _doc_from_summary(summary: dict) -> dict:
    doc = {key: summary.get(key) for key in SUMMARY_FIELDS}
    doc["_id"] = summary["id"]
    doc["experiment"] = {"name": summary.get("experiment")}
    doc["status"] = summary.get("status")
    return doc


def _md5_of(stored: str | None) -> str | None:
    """The md5 in a stored file's name ``<stem>_<md5><ext>``."""
    stem = os.path.splitext(os.path.basename(stored or ""))[0]
    return _md5_or_none(stem.rpartition("_")[2])


def _md5_or_none(text: Any) -> str | None:
    is_md5 = isinstance(text, str) and len(text) == 32
    return text if is_md5 and all(c in "0123456789abcdef" for c in text) else None


def queued_copy(run_name: str, name: str) -> str:
    """Where Sacred 0.8.7 copied the source ``name`` of a run it queued, relative to the
    store: into the run's folder, under the file's base name."""
    return f"{run_name}/{posixpath.basename(name.replace(os.sep, '/'))}"


def is_content_of(file: StoredFile, where: str, data: bytes) -> bool:
    """Whether ``data``, read from ``where``, is the content of ``file``: checked where the
    name does not carry the md5, as in the copies of a run Sacred queued, named by their
    base name alone (``pkg/__init__.py`` and ``__init__.py`` share one)."""
    if file.md5 is None or _md5_of(where) == file.md5:
        return True
    return hashlib.md5(data, usedforsecurity=False).hexdigest() == file.md5


def _stored_paths(basedir: str, kind: str, file: StoredFile) -> list[str]:
    """Where a source or resource may be: where run.json says (relative to ``basedir``),
    else in ``_sources``/``_resources`` by name. Sacred recorded a resource relative to the
    working directory (``runs/_resources/x_<md5>.csv`` for ``-F runs``), and a source of a
    run it queued only by its name and md5 (found in ``_sources`` if a run kept it)."""
    ref = str(file.ref)
    folder = os.path.join(basedir, SOURCES_DIR if kind == "source" else RESOURCES_DIR)
    paths = [os.path.join(basedir, ref), os.path.join(folder, os.path.basename(ref))]
    if file.md5:
        stem, ext = os.path.splitext(os.path.basename(file.name))
        paths.append(os.path.join(folder, f"{stem}_{file.md5}{ext}"))
    return list(dict.fromkeys(paths))


_BEAT_REWRITE_RATE = 10_000_000  # bytes of metrics.json a heartbeat may rewrite per second


def _stamp(rundir: str) -> list[int]:
    """Sizes and modification times of run.json and config.json: an index line is current
    while they hold."""
    stamp = []
    for name in (RUN_FILE, CONFIG_FILE):
        try:
            st = os.stat(os.path.join(rundir, name))
        except FileNotFoundError:
            stamp += [-1, 0]
        else:
            stamp += [st.st_size, st.st_mtime_ns]
    return stamp


def _current(summary: dict, basedir: str) -> bool:
    """Whether an index line still describes its run: it ended and run.json is unchanged."""
    if summary.get("status") not in FINAL_STATUSES:
        return False
    stamp = summary.get("files")
    if stamp is None:
        return True  # written before stamps: taken as it is
    try:
        return _stamp(os.path.join(basedir, str(summary["id"]))) == stamp
    except OSError:
        return False


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
    record["metrics"] = FileStorage(basedir).load_metrics(run_id)
    return record


def read_metrics_log(path: str | os.PathLike[str]) -> dict:
    """Rebuild Sacred's metrics dict from an append log.

    A torn last line (the process died while writing it) is skipped; so is a damaged
    line in the middle, with a warning: the points of every other batch are kept.
    """
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8", errors="replace") as f:
        return metrics_from_log_lines(f, os.fspath(path))


def read_metrics(log_path: str, columns_path: str) -> dict:
    """:func:`read_metrics_log`, taking the batches the columns file holds from there and
    decoding only the rest."""
    try:
        with open(columns_path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    if not data:
        return read_metrics_log(log_path)
    with open(log_path, "rb") as f:
        logged = f.read()
    view = memoryview(logged)
    metrics: dict[str, dict[str, list]] = {}
    pos, line = 0, 1
    for header, payload in _columns.records(data, len(logged)):
        start, end = header["start"], header["end"]
        if start < pos:
            break  # not the log's batches in order: decode the rest
        if zlib.crc32(view[start:end]) != header["crc"]:
            continue  # not the line it was made from: decoded with the lines around it
        try:
            batch = _columns.batch_of(header, payload)
        except ValueError:
            break
        if start > pos:
            line = _decode_log_part(metrics, logged[pos:start], log_path, line)
        for name, (steps, times, values) in batch.items():
            series = metrics.setdefault(name, {"steps": [], "timestamps": [], "values": []})
            series["steps"] += steps
            series["timestamps"] += times
            series["values"] += values
        pos, line = end, line + 1
    _decode_log_part(metrics, logged[pos:], log_path, line)
    return metrics


def _decode_log_part(metrics: dict, part: bytes, where: str, line: int) -> int:
    """Add the points of the lines in ``part`` of a log; the number of the line after them."""
    lines = list(io.TextIOWrapper(io.BytesIO(part), encoding="utf-8", errors="replace"))
    metrics_from_log_lines(lines, where, metrics, first=line)
    return line + len(lines)


def metrics_from_log_lines(
    lines: Iterable[str], where: str, metrics: dict | None = None, first: int = 1
) -> dict:
    """Sacred's metrics dict from the lines of a metrics log (each ending in a newline),
    added to ``metrics`` when given; ``where`` and ``first`` (the number of the first of
    the lines) name a damaged line in the warning about it."""
    if metrics is None:
        metrics = {}
    for number, line in enumerate(lines, first):
        if not line.endswith("\n"):
            break
        try:
            batch = json.loads(line)
            columns = [
                (str(name), [series[k] for k in ("steps", "timestamps", "values")])
                for name, series in batch.items()
            ]
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("%s: line %d is damaged; its points are skipped", where, number)
            continue
        for name, (steps, times, values) in columns:
            series = metrics.setdefault(name, {"steps": [], "timestamps": [], "values": []})
            series["steps"].extend(steps)
            series["timestamps"].extend(times)
            series["values"].extend(values)
    return metrics


def spliced_metrics_json(path: str | os.PathLike[str]) -> list[bytes]:
    """metrics.json's text from the metrics log: what ``_compact(read_metrics_log(path))``
    gives, made by joining the text of the log's arrays.

    Metrics reach the store about once a second, so a long run's metrics.json is rebuilt
    from the log; decoding and encoding millions of floats again would cost seconds.
    """
    with open(path, encoding="utf-8") as f:
        return spliced_log_lines(f)


def spliced_log_lines(lines: Iterable[str]) -> list[bytes]:
    """:func:`spliced_metrics_json` of the lines of a metrics log (each ending in a newline)."""
    series: dict[str, tuple[str, tuple[list[bytes], list[bytes], list[bytes]]]] = {}
    for line in lines:
        if not line.endswith("\n"):
            break  # the process died while writing this batch
        for name, name_json, arrays in _batch_arrays(line):
            pieces = series.setdefault(name, (name_json, ([], [], [])))[1]
            for kept, text in zip(pieces, arrays):
                if text:
                    kept.append(b"," + text.encode() if kept else text.encode())
    parts = [b"{"]
    for number, name in enumerate(sorted(series)):
        name_json, (steps, times, values) = series[name]
        parts.append(f'{"," if number else ""}{name_json}:{{"steps":['.encode())
        parts += [*steps, b'],"timestamps":[', *times, b'],"values":[', *values, b"]}"]
    parts.append(b"}")
    return parts


_ARRAY_KEYS = ('"steps":[', ',"timestamps":[', ',"values":[')


def _batch_arrays(line: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """Each metric of a metrics log line: its name, the name as JSON, and the text inside
    its steps, timestamps and values arrays."""
    found = []
    try:
        pos = 1
        while line[pos] == '"':
            name, end = json.decoder.scanstring(line, pos + 1)
            name_json = line[pos:end]
            if line[end : end + 2] != ":{":
                raise ValueError("no object after the name")
            pos = end + 2
            arrays = []
            for key in _ARRAY_KEYS:
                if not line.startswith(key, pos):
                    raise ValueError(f"{key} expected")
                start = pos + len(key)
                pos = line.index("]", start)
                text = line[start:pos]
                if key != ',"timestamps":[' and '"' in text:
                    raise ValueError("a string among the numbers")  # it may hold a "]"
                arrays.append(text)
                pos += 1
            if line[pos] != "}":
                raise ValueError("} expected")
            found.append((name, name_json, tuple(arrays)))
            if line[pos + 1] == ",":
                pos += 2
            elif line[pos + 1] == "}":
                return found
            else:
                raise ValueError(", or } expected")
        if line[pos] != "}":
            raise ValueError("} expected")
    except (ValueError, IndexError):
        # Not the text _metrics_json writes (strings among the values): decode it.
        return [
            (name, json.dumps(name), tuple(_compact(m[k])[1:-1] for k in _SERIES_KEYS))
            for name, m in json.loads(line).items()
        ]
    return found


_SERIES_KEYS = ("steps", "timestamps", "values")


_NO_DEFAULT = object()


def _load_json(path: str, default: Any = _NO_DEFAULT, damaged: Any = _NO_DEFAULT) -> Any:
    """The JSON in ``path``; ``default`` when it is missing, ``damaged`` when it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        if default is _NO_DEFAULT:
            raise
        return default
    except (ValueError, UnicodeDecodeError) as exc:
        if damaged is not _NO_DEFAULT:
            log.warning("%s is damaged (%s): read as empty", path, exc)
            return damaged
        raise StoreError(f"{path} is not valid JSON: {exc}") from None


_SUMMARY_KEYS = ("command", "start_time", "stop_time", "heartbeat", "result", "meta")


class FileStoreReader(StoreReader):
    """Read the runs of a file store: summaries from its index, everything from the folders."""

    def __init__(self, basedir: str | os.PathLike[str], url: str | None = None) -> None:
        storage = FileStorage(basedir, url=url)
        if not os.path.isdir(storage.basedir):
            raise NoStoreError(f"no file store at {storage.basedir}: the folder does not exist")
        super().__init__(storage)

    @property
    def basedir(self) -> str:
        """The store's folder."""
        return self.storage.basedir


def rebuild_index(basedir: str | os.PathLike[str]) -> int:
    """Write ``<basedir>/_index/runs.jsonl`` anew from the run folders; return the run count."""
    storage = FileStorage(basedir)
    summaries = [
        s for name in _run_folders(storage.basedir) if (s := storage._summary_from_folder(name))
    ]
    _write_index(os.path.join(storage.basedir, INDEX_FILE), sorted(summaries, key=_id_order))
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
        summary["meta"] = {k: v for k, v in summary["meta"].items() if k not in SUMMARY_META_OMITS}
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


def _source_files(experiment: dict, run_name: str) -> Iterable[StoredFile]:
    """The sources in run.json's ``experiment``: ``[name, stored path]``, or in a run Sacred
    queued ``{"py/tuple": [name, md5]}``, the copy being in the run's folder."""
    for source in experiment.get("sources") or ():
        if isinstance(source, dict) and isinstance(source.get("py/tuple"), list):
            name, md5 = [*source["py/tuple"], None, None][:2]
            if isinstance(name, str):
                yield StoredFile(name, _md5_or_none(md5), queued_copy(run_name, name))
        elif isinstance(source, list) and len(source) >= 2 and isinstance(source[0], str):
            stored = str(source[1]) if source[1] else None
            yield StoredFile(source[0], _md5_of(stored), stored)


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


def _cut_torn_columns(path: str, log_path: str) -> None:
    """Cut a columns file back to its whole records, so that new ones can follow them."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data.startswith(_columns.MAGIC):  # else not expkit's: left alone, and unread
                f.truncate(_columns.whole_length(data, os.path.getsize(log_path)))
    except OSError:
        pass  # none yet, or only a cache that readers then do without


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


def _crc(parts: list[bytes]) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def _append_parts(path: str, parts: list[bytes]) -> tuple[int, int]:
    """Append ``parts`` to ``path``; the offsets where they begin and end."""
    with open(path, "ab") as f:
        start = f.tell()
        _write_parts(f, parts)
        return start, f.tell()
