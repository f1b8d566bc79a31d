"""The TinyDB store: runs as Sacred's TinyDbObserver documents in one JSON file.

A store at ``PATH`` holds::

    PATH/metadata.json          TinyDB's JSON layout: {"runs": {"1": {...}}, "metrics": {...}}
    PATH/metadata.json.lock     the lock file, also holding a counter of writes
    PATH/hashfs/ab/cd/ef/<rest> sources, resources and artifacts by md5 (HashFS, depth 3, width 2)

Run documents have the fields of Sacred's TinyDbObserver (``_id``, ``experiment``,
``format``, ``command``, ``host``, ``start_time``, ``config``, ``meta``, ``status``,
``resources``, ``artifacts``, ``captured_out``, ``info``, ``heartbeat``, ``result``,
``stop_time``, ``fail_trace``). Unlike Sacred, metrics are kept too, in the
``metrics`` table with one document per run and metric name, and queued runs
are recorded.

Cost: TinyDB's JSON storage rewrites the whole file on every write, so one write
costs time in proportion to everything already stored. A run is written when it
starts (or is queued), at each heartbeat that brought news, and when it ends:
each event is on disk, or has raised so that the core spools it, and nothing
lives only in memory. ``write_interval=N`` writes at most once every N seconds
in between (a constant number of whole-file writes per run, however often it
beats), at the price that an outage at the very end loses what was gathered
since the last write.

Several processes may share a store: each write holds an exclusive ``flock`` on
the lock file, re-reads the JSON only when it changed since this observer last
saw it (the write counter plus the file's inode, mtime and size), and replaces
the file atomically, so plain ``tinydb`` readers never see half a file.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from expkit.errors import ExpkitError, UsageError
from expkit.observers import RunObserver, deprecated_create, utc_isoformat
from expkit.pluginmanager import hookimpl
from expkit.records import RunRecord, edited_meta
from expkit.serialize import parse_time, to_data
from expkit.utils import file_md5, redact_url, replace_file, temp_file_beside

if TYPE_CHECKING:
    from pathlib import Path

    from tinydb.table import Document

FORMAT = "TinyDbObserver-expkit-1"
SCHEME = "tinydb"
DB_FILE = "metadata.json"
HASHFS_DIR = "hashfs"

_log = logging.getLogger(__name__)
_FINAL_ATTEMPTS = 3


class StoreError(ExpkitError):
    """The TinyDB store cannot be read or written."""


# --- the shared JSON file ---------------------------------------------------------


class _SharedJsonFile:
    """A TinyDB JSON file that several processes change, one at a time, under an flock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._data: dict | None = None
        # (write counter, inode, mtime, size) of the file ``_data`` was read from.
        self._seen: tuple | None = None

    def read(self, fn: Callable[[dict], Any]) -> Any:
        """Call ``fn`` on the current data (do not change it) under a shared lock."""
        with self._locked(fcntl.LOCK_SH) as fd:
            return fn(self._current(fd))

    def update(self, fn: Callable[[dict], Any]) -> Any:
        """Call ``fn`` on the current data under an exclusive lock and write the result."""
        with self._locked(fcntl.LOCK_EX) as fd:
            try:
                result = fn(self._current(fd))
                self._write(fd, self._data)
            except BaseException:
                # ``fn`` may have changed the cached data before the failure.
                self._data = self._seen = None
                raise
            return result

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[int]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, how)
            yield fd
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _current(self, fd: int) -> dict:
        counter = _read_counter(fd)
        try:
            st = os.stat(self.path)
            seen: tuple = (counter, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = (counter, None)
        if self._data is None or seen != self._seen:
            self._data = _parse(self.path) if seen[1] is not None else {}
            self._seen = seen
        return self._data

    def _write(self, fd: int, data: dict) -> None:
        data_bytes = json.dumps(data).encode("ascii")  # ASCII: any reader's locale decodes it
        replace_file(str(self.path), lambda f: f.write(data_bytes))
        counter = _read_counter(fd) + 1
        payload = str(counter).encode()
        os.pwrite(fd, payload, 0)
        os.ftruncate(fd, len(payload))
        st = os.stat(self.path)
        self._seen = (counter, st.st_ino, st.st_mtime_ns, st.st_size)


def _read_counter(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0) or b"0")
    except ValueError:
        return 0


def _path(name: str | os.PathLike[str]) -> Path:
    from pathlib import Path  # only once a TinyDB store is used: every run loads this plugin

    return Path(name)


def _parse(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return {}  # plain TinyDB creates the file empty
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not a TinyDB JSON file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
        raise StoreError(f"{path}: not a TinyDB JSON file (expected an object of tables)")
    return data


def _next_doc_id(table: dict) -> int:
    """The id TinyDB itself would give the next document of ``table``."""
    return max((int(k) for k in table if k.isdigit()), default=0) + 1


# --- content-addressed files ------------------------------------------------------


def _hashfs_relpath(md5: str) -> str:
    """Where HashFS (depth 3, width 2) keeps the file with this md5, relative to the store."""
    return "/".join([HASHFS_DIR, md5[0:2], md5[2:4], md5[4:6], md5[6:]])


def _put_file(root: Path, source: Path) -> tuple[str, str]:
    """Copy ``source`` into the store's hashfs unless already there; return (md5, relpath)."""
    hashfs = root / HASHFS_DIR
    hashfs.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    tmp_fd, tmp = temp_file_beside(str(hashfs / "put"))
    try:
        with os.fdopen(tmp_fd, "wb") as out, open(source, "rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        md5 = digest.hexdigest()
        relpath = _hashfs_relpath(md5)
        target = root / relpath
        if target.exists():
            os.unlink(tmp)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)  # same content from a racing process is harmless
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return md5, relpath


# --- Sacred's views: db, runs, fs ------------------------------------------------


@attrs.frozen
class HashAddress:
    """Where a stored file lies, as HashFS answers: its md5 ``id`` and its paths."""

    id: str
    relpath: str  # relative to the hashfs folder, as in HashFS
    abspath: str
    is_duplicate: bool = False


class HashFiles:
    """The store's ``hashfs`` folder with the part of HashFS's interface Sacred's users call.

    Files are named by their md5 (HashFS with depth 3, width 2, algorithm md5), so ``file``
    is an md5 or the path of a file whose content is looked up.
    """

    depth = 3
    width = 2
    algorithm = "md5"

    def __init__(self, store_root: Path) -> None:
        self._store_root = store_root
        self.root = str(store_root / HASHFS_DIR)

    def put(self, file: str | os.PathLike) -> HashAddress:
        """Store the content of ``file`` (once per content)."""
        existed = self.get(file) is not None
        md5, relpath = _put_file(self._store_root, _path(file))
        return self._address(md5, relpath, existed)

    def get(self, file: str | os.PathLike) -> HashAddress | None:
        """The stored file with ``file``'s md5, or ``None``."""
        md5 = self._md5(file)
        if md5 is None or not (self._store_root / _hashfs_relpath(md5)).is_file():
            return None
        return self._address(md5, _hashfs_relpath(md5), True)

    def open(self, file: str | os.PathLike, mode: str = "rb") -> Any:
        """Open the stored file with ``file``'s md5."""
        address = self.get(file)
        if address is None:
            raise OSError(f"no stored file for {os.fspath(file)!r} in {self.root}")
        return open(address.abspath, mode)

    def exists(self, file: str | os.PathLike) -> bool:
        """Whether the content of ``file`` (or the md5 ``file``) is stored."""
        return self.get(file) is not None

    def _md5(self, file: str | os.PathLike) -> str | None:
        text = os.fspath(file)
        if os.path.isfile(text):
            return file_md5(text)
        return text if re.fullmatch(r"[0-9a-f]{32}", text) else None

    def _address(self, md5: str, relpath: str, existed: bool) -> HashAddress:
        return HashAddress(
            md5, relpath.removeprefix(HASHFS_DIR + "/"), str(self._store_root / relpath), existed
        )


def _read_only_storage() -> type:
    """A TinyDB storage class that reads the JSON file anew at every query, never writing."""
    from tinydb.storages import Storage

    class ReadOnlyFile(Storage):
        def __init__(self, path: Path) -> None:
            self.path = path

        def read(self) -> dict | None:
            # The observer replaces the file as a whole: each read sees one complete state.
            return _parse(self.path) if self.path.exists() else None

        def write(self, data: dict) -> None:
            raise StoreError(
                f"{self.path} is read-only through db/runs: the observer alone writes it, "
                "under its file lock, so that concurrent runs lose nothing"
            )

    return ReadOnlyFile


class _SacredViews:
    """``db``, ``runs`` and ``fs`` as Sacred's TinyDbObserver and TinyDbReader have them."""

    root: Path
    db_path: Path

    @property
    def db(self) -> Any:
        """The store as a read-only :class:`tinydb.TinyDB`, current at every query."""
        from tinydb import TinyDB

        return TinyDB(self.db_path, storage=_read_only_storage())

    @property
    def runs(self) -> Any:
        """The ``runs`` table (read-only): ``runs.all()``, ``runs.search(Query()...)``."""
        return self.db.table("runs")

    @property
    def fs(self) -> HashFiles:
        """The stored sources, resources and artifacts, by md5 (HashFS's interface)."""
        return HashFiles(self.root)


# --- the observer -----------------------------------------------------------------


class TinyDbObserver(_SacredViews, RunObserver):
    """Sacred's TinyDbObserver: runs in ``PATH/metadata.json``, files in ``PATH/hashfs``.

    Times are stored as the plain ISO strings of :func:`expkit.serialize.format_time`.
    Sacred tagged them (``"{TinyDate}:2024-..."``) for its own TinyDB serializer,
    which a reader needs to get datetimes back; plain strings read the same with
    plain ``tinydb`` or any JSON tool, and sort in time order.

    ``overwrite=_id`` makes the next run replace the stored run with that ``_id``.
    ``write_interval`` is the least number of seconds between two writes caused by
    heartbeats, metrics, artifacts or resources; the start and end of a run are
    always written at once.
    """

    priority = 0
    VERSION = FORMAT

    def __init__(
        self,
        path: str | os.PathLike = "./runs_db",
        overwrite: Any = None,
        *,
        write_interval: float = 0.0,
        db_file: str = DB_FILE,
    ) -> None:
        root = _path(path).expanduser()
        if root.exists() and not root.is_dir():
            raise UsageError(f"TinyDB store path {str(root)!r} is a file, not a directory")
        if not write_interval >= 0:
            raise UsageError(f"write_interval must be >= 0 seconds, got {write_interval!r}")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create TinyDB store at {str(root)!r}: {exc}") from None
        self.root = root
        self.db_path = root / db_file
        self.overwrite = overwrite
        self.write_interval = float(write_interval)
        self._db = _SharedJsonFile(self.db_path)
        self._lock = threading.RLock()
        self._entry: dict | None = None
        self._doc_id: str | None = None
        self._metric_doc_ids: dict[str, str] = {}
        self._pending_metrics: dict[str, dict[str, list]] = {}
        self._dirty = False
        self._last_write = 0.0
        self._overwrite_used = False
        if overwrite is not None and self._db.read(lambda d: _find(d, "runs", overwrite)) is None:
            raise UsageError(f"no run with _id {overwrite!r} to overwrite in {self.db_path}")

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> TinyDbObserver:
        """Deprecated in Sacred 0.8.7 and here: ``TinyDbObserver(...)``."""
        return deprecated_create(cls, *args, **kwargs)

    @classmethod
    def create_from(
        cls, db: Any, fs: Any = None, overwrite: Any = None, root: str | os.PathLike | None = None
    ) -> TinyDbObserver:
        """An observer writing to an existing ``TinyDB(path)`` and its HashFS (Sacred's).

        expkit writes the JSON file itself, under a file lock, replacing it as a whole:
        read it afterwards through a new ``TinyDB`` (or :attr:`runs`), not through ``db``.
        Files go to ``hashfs`` beside the JSON file, where ``fs`` must point if given.
        """
        handle = getattr(getattr(db, "storage", None), "_handle", None)
        name = getattr(handle, "name", None)
        if not isinstance(name, str):
            raise UsageError(
                "TinyDbObserver.create_from needs a TinyDB kept in a JSON file (TinyDB(path)); "
                "for another storage, use TinyDbObserver(folder)"
            )
        db_path = _path(name).resolve()
        folder = _path(root).resolve() if root is not None else db_path.parent
        if db_path.parent != folder:
            raise UsageError(
                f"TinyDbObserver.create_from: the database {db_path} must lie in root {folder}"
            )
        fs_root = getattr(fs, "root", None)
        if fs_root is not None and _path(fs_root).resolve() != folder / HASHFS_DIR:
            raise UsageError(
                f"TinyDbObserver.create_from: files are kept in {folder / HASHFS_DIR}, "
                f"not in {fs_root}; create the HashFS there"
            )
        return cls(folder, overwrite, db_file=db_path.name)

    def __eq__(self, other: object) -> bool:
        # As Sacred's: two observers of one store are the same store.
        if isinstance(other, TinyDbObserver):
            return self.db_path.resolve() == other.db_path.resolve()
        return NotImplemented

    def __hash__(self) -> int:
        return hash((TinyDbObserver, self.db_path.resolve()))

    def __repr__(self) -> str:
        return f"TinyDbObserver({str(self.root)!r})"

    # --- events ---

    def queued_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        queue_time: Any,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> Any:
        """Record the run as ``QUEUED``; return its id."""
        entry = {
            "experiment": self._experiment(ex_info),
            "command": command,
            "host": host_info,
            "config": config,
            "meta": {**meta_info, "queue_time": queue_time},
            "status": "QUEUED",
        }
        return self._begin(entry, _id)

    def started_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        start_time: Any,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> Any:
        """Store the run's document and sources; return its id (a uuid4 hex if none given)."""
        entry = {
            "experiment": self._experiment(ex_info),
            "format": FORMAT,
            "command": command,
            "host": host_info,
            "start_time": start_time,
            "config": config,
            "meta": meta_info,
            "status": "RUNNING",
            "resources": [],
            "artifacts": [],
            "captured_out": "",
            "info": {},
            "heartbeat": None,
        }
        return self._begin(entry, _id)

    def heartbeat_event(self, info: dict, captured_out: str, beat_time: Any, result: Any) -> None:
        """Keep the news; written with the next write (at most one per ``write_interval``)."""
        with self._lock:
            self._change(
                info=to_data(info),
                captured_out=captured_out,
                heartbeat=to_data(beat_time),
                result=to_data(result),
            )
            self._save_soon()

    def completed_event(self, stop_time: Any, result: Any) -> None:
        """Write the run as ``COMPLETED`` with its result."""
        self._change(stop_time=to_data(stop_time), result=to_data(result), status="COMPLETED")
        self._save_final()

    def interrupted_event(self, interrupt_time: Any, status: str) -> None:
        """Write the run with the interrupt's ``status``."""
        self._change(stop_time=to_data(interrupt_time), status=status)
        self._save_final()

    def failed_event(self, fail_time: Any, fail_trace: list[str]) -> None:
        """Write the run as ``FAILED`` with its traceback."""
        self._change(stop_time=to_data(fail_time), status="FAILED", fail_trace=to_data(fail_trace))
        self._save_final()

    def resource_event(self, filename: str) -> None:
        """Keep ``filename`` in hashfs and record ``[filename, md5, hashfs path]``."""
        self._add_resource(filename, str(filename), "resource_event")

    def copied_resource_event(self, filename: str, original: str) -> None:
        """Keep ``filename`` in hashfs and record ``[original, md5, hashfs path]``."""
        self._add_resource(filename, str(original), "copied_resource_event")

    def _add_resource(self, filename: str, original: str, event: str) -> None:
        md5, relpath = self._put(filename, "resource")
        with self._lock:
            resources = self._require(event)["resources"]
            if not any(r[0] == original and r[1] == md5 for r in resources):
                self._change(resources=[*resources, [original, md5, relpath]])
            self._save_soon()

    def artifact_event(
        self,
        name: str,
        filename: str,
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> None:
        """Keep ``filename`` in hashfs and record it as artifact ``name``.

        The entry is Sacred's ``[name, filename, md5, hashfs path]`` plus
        ``{"metadata", "content_type"}``; a later artifact of the same name
        replaces the entry. The name is only recorded, never used as a path.
        """
        name = str(name) if name else os.path.basename(filename)
        md5, relpath = self._put(filename, "artifact")
        extra = {"metadata": to_data(metadata), "content_type": content_type}
        with self._lock:
            kept = [a for a in self._require("artifact_event")["artifacts"] if a[0] != name]
            self._change(artifacts=[*kept, [name, str(filename), md5, relpath, extra]])
            self._save_soon()

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        """Add new metric values to the run's documents in the ``metrics`` table."""
        self._add_metrics(
            (name, to_data(list(m["steps"])), to_data(list(m["values"])), to_data(m["timestamps"]))
            for name, m in metrics_by_name.items()
        )

    def log_metric_columns(self, columns: dict, info: dict) -> None:
        """:meth:`log_metrics` for the columns of a run, without a datetime per point."""
        self._add_metrics(
            (name, c["steps"], c["values"], utc_isoformat(c["timestamps"]))
            for name, c in columns.items()
        )

    def _add_metrics(self, series: Iterable[tuple[Any, list, list, list]]) -> None:
        with self._lock:
            self._require("log_metrics")
            for name, steps, values, times in series:
                pending = self._pending_metrics.setdefault(
                    str(name), {"steps": [], "values": [], "timestamps": []}
                )
                pending["steps"].extend(steps)
                pending["values"].extend(values)
                pending["timestamps"].extend(times)
            self._dirty = True
            self._save_soon()

    def join(self) -> None:
        """Write whatever is still only in memory."""
        with self._lock:
            if self._dirty and self._entry is not None:
                self._save()

    def resume(self, _id: Any) -> None:
        """Go on recording the stored run ``_id``: its spooled events are being replayed."""
        run_id = to_data(_id)

        def locate(data: dict) -> tuple[str, dict, dict[str, str]] | None:
            key = _find(data, "runs", run_id)
            if key is None:
                return None
            metrics = {
                d["name"]: k
                for k, d in data.get("metrics", {}).items()
                if d.get("run_id") == run_id and "name" in d
            }
            # A copy: the parsed file is cached and shared with later writes.
            return key, json.loads(json.dumps(data["runs"][key])), metrics

        with self._lock:
            # Always from what is stored: events this observer failed to write are replayed.
            found = self._db.read(locate)
            if found is None:
                raise UsageError(f"cannot resume run {_id!r}: it is not in {self.db_path}")
            self._doc_id, self._entry, self._metric_doc_ids = found
            self._pending_metrics = {}
            self._dirty = False

    # --- keeping state ---

    def _experiment(self, ex_info: dict) -> dict:
        """``ex_info`` with each source ``[name, md5]`` stored and recorded as Sacred's
        ``[name, md5, hashfs path]``; ``ex_info`` itself is left alone."""
        experiment = to_data(ex_info)
        base_dir = _path(ex_info.get("base_dir") or ".")
        sources = []
        for name, md5 in ex_info.get("sources", []):
            try:
                md5, relpath = _put_file(self.root, base_dir / name)
            except OSError as exc:
                _log.warning("TinyDB store: cannot keep source %s: %s", name, exc)
                relpath = None
            sources.append([name, md5, relpath])
        experiment["sources"] = sources
        return experiment

    def _put(self, filename: str, what: str) -> tuple[str, str]:
        source = _path(filename)
        if not source.is_file():
            raise UsageError(f"cannot store {what} {str(filename)!r}: no such file")
        return _put_file(self.root, source)

    def _require(self, event: str) -> dict:
        if self._entry is None:
            raise StoreError(f"TinyDbObserver got {event} before any run started")
        return self._entry

    def _change(self, **fields: Any) -> None:
        # Values are replaced, never changed in place: the written document is a
        # shallow copy of the entry, so its lists are shared with the cached file.
        with self._lock:
            self._require("an event").update(fields)
            self._dirty = True

    def _begin(self, entry: dict, _id: Any) -> Any:
        with self._lock:
            if self.overwrite is not None:
                if self._overwrite_used:
                    raise UsageError(
                        f"TinyDbObserver(overwrite={self.overwrite!r}) already replaced that "
                        "run once; make a new observer for the next run"
                    )
                self._overwrite_used = True
                _id = self.overwrite
            elif _id is None:
                import uuid

                _id = uuid.uuid4().hex
            self._entry = {"_id": to_data(_id), **to_data(entry)}
            self._doc_id = None
            self._metric_doc_ids = {}
            self._pending_metrics = {}
            self._save()
            return _id

    def _save_soon(self) -> None:
        if time.monotonic() - self._last_write < self.write_interval:
            return
        try:
            self._save()
        except OSError as exc:
            # Raised, so that the core spools this event and retries: nothing is lost.
            raise StoreError(f"cannot write to {self.db_path}: {exc}") from None

    def _save_final(self) -> None:
        with self._lock:
            for attempt in range(_FINAL_ATTEMPTS):
                try:
                    self._save()
                    return
                except (OSError, StoreError) as exc:
                    error = exc
                    if attempt + 1 < _FINAL_ATTEMPTS:
                        time.sleep(0.2 * (attempt + 1))
            raise StoreError(
                f"cannot write run {self._entry['_id']!r} to {self.db_path}: {error}"  # type: ignore[index]
            ) from error

    def _save(self) -> None:
        self._dirty = True
        self._db.update(self._apply)
        self._pending_metrics = {}
        self._dirty = False
        self._last_write = time.monotonic()

    def _apply(self, data: dict) -> None:
        """Put this run's document and new metric values into ``data`` (under the lock)."""
        entry = self._entry
        assert entry is not None
        run_id = entry["_id"]
        runs = data.setdefault("runs", {})
        key = self._doc_id
        if key is None or runs.get(key, {}).get("_id") != run_id:
            key = _find(data, "runs", run_id)
            if self._doc_id is None:  # the run's first write
                if self.overwrite is not None and key is None:
                    raise UsageError(f"no run with _id {run_id!r} to overwrite in {self.db_path}")
                if self.overwrite is None and key is not None:
                    raise UsageError(
                        f"a run with _id {run_id!r} is already stored in {self.db_path}; "
                        f"pass overwrite={run_id!r} to replace it"
                    )
                if self.overwrite is not None:
                    _drop_metrics(data, run_id)
            if key is None:
                key = str(_next_doc_id(runs))
        runs[key] = dict(entry)
        self._doc_id = key
        if self._pending_metrics:
            self._apply_metrics(data.setdefault("metrics", {}), run_id)

    def _apply_metrics(self, table: dict, run_id: Any) -> None:
        for name, new in self._pending_metrics.items():
            key = self._metric_doc_ids.get(name)
            doc = table.get(key) if key is not None else None
            if doc is None or doc.get("run_id") != run_id or doc.get("name") != name:
                key = next(
                    (
                        k
                        for k, d in table.items()
                        if d.get("run_id") == run_id and d.get("name") == name
                    ),
                    None,
                )
                if key is None:
                    key = str(_next_doc_id(table))
                    table[key] = {
                        "run_id": run_id,
                        "name": name,
                        "steps": [],
                        "values": [],
                        "timestamps": [],
                    }
                doc = table[key]
            table[key] = {**doc, **{k: [*doc.get(k, []), *v] for k, v in new.items()}}
            self._metric_doc_ids[name] = key


def _find(data: dict, table: str, run_id: Any) -> str | None:
    """The document key of the run with ``_id == run_id`` in ``table``."""
    return next((k for k, d in data.get(table, {}).items() if d.get("_id") == run_id), None)


def _drop_metrics(data: dict, run_id: Any) -> None:
    metrics = data.get("metrics", {})
    for key in [k for k, d in metrics.items() if d.get("run_id") == run_id]:
        del metrics[key]


# --- the reader -------------------------------------------------------------------


class TinyDbReader(_SacredViews):
    """Read a store written by :class:`TinyDbObserver` (Sacred's reader, in short)."""

    def __init__(self, path: str | os.PathLike = "./runs_db", *, db_file: str = DB_FILE) -> None:
        self.root = _path(path).expanduser()
        self.db_path = self.root / db_file
        if not self.db_path.is_file():
            raise UsageError(f"no TinyDB store at {str(self.root)!r}: {self.db_path} is missing")

    def search(self, *args: Any, **kwargs: Any) -> list[Document]:
        """TinyDB's ``search`` over the ``runs`` table (Sacred's reader method)."""
        return self.runs.search(*args, **kwargs)

    def _search(self, table: str, query: Any = None) -> list[Document]:
        # A new TinyDB each time: the observer replaces the file, and an open
        # TinyDB would keep reading the old one.
        from tinydb import TinyDB  # imported when a store is read, not when expkit starts

        with TinyDB(self.db_path, access_mode="r") as db:
            t = db.table(table)
            return t.search(query) if query is not None else t.all()

    def fetch_metadata(
        self,
        exp_name: str | None = None,
        query: Any = None,
        indices: int | Sequence[int] | None = None,
    ) -> list[Document]:
        """Run documents whose experiment name matches the regex ``exp_name`` and
        ``query`` (a tinydb query), optionally only those at ``indices``."""
        q = query
        if exp_name is not None:
            try:
                re.compile(exp_name)
            except re.error as exc:
                raise UsageError(f"exp_name {exp_name!r} is not a valid regex: {exc}") from None
            from tinydb import Query

            by_name = Query().experiment.name.search(exp_name)
            q = by_name if q is None else by_name & q
        runs = self._search("runs", q)
        if indices is None:
            return runs
        picked = []
        for i in [indices] if isinstance(indices, int) else indices:
            if not -len(runs) <= i < len(runs):
                raise UsageError(f"index {i} is out of range: {len(runs)} runs match")
            picked.append(runs[i])
        return picked

    def fetch_metrics(self, run_id: Any) -> dict[str, Document]:
        """The metrics of run ``run_id``: ``{name: {"steps", "values", "timestamps", ...}}``."""
        from tinydb import Query

        docs = self._search("metrics", Query().run_id == run_id)
        return {doc["name"]: doc for doc in docs}

    def fetch_files(
        self,
        exp_name: str | None = None,
        query: Any = None,
        indices: int | Sequence[int] | None = None,
    ) -> list[dict]:
        """For each matching run, the stored paths of its sources, resources and artifacts."""

        def path(relpath: str | None) -> Path | None:
            return None if relpath is None else self.root / relpath

        return [
            {
                "exp_name": run["experiment"]["name"],
                "exp_id": run["_id"],
                "date": run.get("start_time"),
                "sources": {s[0]: path(s[2]) for s in run["experiment"].get("sources", [])},
                "resources": {r[0]: path(r[2]) for r in run.get("resources", [])},
                "artifacts": {a[0]: path(a[3]) for a in run.get("artifacts", [])},
            }
            for run in self.fetch_metadata(exp_name, query, indices)
        ]


class TinyDbRunReader:
    """The read side of a TinyDB store for :func:`expkit.runs.runs` (``expkit_reader_for_url``)."""

    def __init__(
        self, path: str | os.PathLike, *, db_file: str = DB_FILE, url: str | None = None
    ) -> None:
        self.root = _path(path).expanduser()
        self.db_path = self.root / db_file
        self.url = url if url is not None else f"{SCHEME}://{path}"
        self._redacted_url = redact_url(self.url)  # once: every record names it
        if not self.root.is_dir():
            raise UsageError(f"no TinyDB store at {str(self.root)!r}: the folder does not exist")

    def __repr__(self) -> str:
        return f"TinyDbRunReader({str(self.root)!r})"

    def list_runs(self) -> list[RunRecord]:
        """Every run as a summary (without captured output and metrics), in stored order."""
        return [self._record(doc) for doc in self._read(lambda d: list(_table(d, "runs")))]

    def get_run(self, run_id: Any) -> RunRecord:
        """Everything stored about run ``run_id``; :class:`KeyError` when there is none."""

        def fetch(data: dict) -> tuple[dict, dict]:
            doc = self._find(data, run_id)
            metrics = {
                str(m.get("name")): {
                    "steps": list(m.get("steps", ())),
                    "values": list(m.get("values", ())),
                    "timestamps": [_time(t) for t in m.get("timestamps", ())],
                }
                for m in _table(data, "metrics")
                if m.get("run_id") == doc["_id"]
            }
            return doc, metrics

        doc, metrics = self._read(fetch)
        return attrs.evolve(
            self._record(doc),
            host=doc.get("host") or {},
            experiment_info=doc.get("experiment") or {},
            info=doc.get("info") or {},
            fail_trace=doc.get("fail_trace"),
            resources=tuple(
                (str(r[0]), str(r[1]) if len(r) > 1 else "")
                for r in doc.get("resources") or ()
                if r
            ),
            captured_out=doc.get("captured_out") or "",
            metrics=metrics,
        )

    def read_source(self, run_id: Any, name: str) -> bytes:
        """The stored content of the run's source ``name`` (from hashfs)."""
        # Sacred's own entries hold a file handle's repr where expkit keeps the path.
        return self._stored(run_id, "source", name, 1, 2)

    def read_artifact(self, run_id: Any, name: str) -> bytes:
        """The stored content of the run's artifact ``name`` (from hashfs)."""
        return self._stored(run_id, "artifact", name, 2, 3)

    def read_resource(self, run_id: Any, path: str) -> bytes:
        """The stored content of the input file the run recorded under ``path`` (from hashfs)."""
        return self._stored(run_id, "resource", path, 1, 2)

    def _stored(self, run_id: Any, kind: str, name: str, md5_at: int, path_at: int) -> bytes:
        """The content of the run's newest ``kind`` entry called ``name``."""
        doc = self._read(lambda d: self._find(d, run_id))
        if kind == "source":
            entries = (doc.get("experiment") or {}).get("sources") or ()
        else:
            entries = doc.get(kind + "s") or ()
        for entry in reversed(entries):
            if entry and entry[0] == name:
                return self._read_file(_stored_path(entry, md5_at, path_at), f"{kind} {name!r}")
        raise KeyError(f"run {run_id!r} in {self.db_path} has no {kind} {name!r}")

    def edit_run(
        self, run_id: Any, *, comment: str | None = None, tags: list[str] | None = None
    ) -> None:
        """Set the run's ``meta.comment`` and ``meta.tags`` in its document."""

        def edit(data: dict) -> None:
            doc = self._find(data, run_id)
            meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
            doc["meta"] = edited_meta(meta, comment, tags)

        if not self.db_path.exists():
            raise KeyError(f"no run {run_id!r} in {self.db_path}")
        _SharedJsonFile(self.db_path).update(edit)

    def delete_run(self, run_id: Any) -> None:
        """Remove the run's document and its metrics (hashfs files may be shared and stay)."""

        def delete(data: dict) -> None:
            key = _find(data, "runs", self._find(data, run_id)["_id"])
            run = data["runs"].pop(key)
            _drop_metrics(data, run["_id"])

        if not self.db_path.exists():
            raise KeyError(f"no run {run_id!r} in {self.db_path}")
        _SharedJsonFile(self.db_path).update(delete)

    def _read(self, fn: Callable[[dict], Any]) -> Any:
        if not self.db_path.exists():
            return fn({})
        # A new file object each time: records handed out must not share its cached data.
        return _SharedJsonFile(self.db_path).read(fn)

    def _find(self, data: dict, run_id: Any) -> dict:
        # Ids typed on a command line are strings; Sacred-era stores may hold numbers.
        candidates = [run_id]
        if isinstance(run_id, str) and run_id.isdigit():
            candidates.append(int(run_id))
        for candidate in candidates:
            key = _find(data, "runs", candidate)
            if key is not None:
                return data["runs"][key]
        raise KeyError(f"no run {run_id!r} in {self.db_path}")

    def _read_file(self, relpath: str | None, what: str) -> bytes:
        if relpath is None:
            raise StoreError(f"{what} is recorded in {self.db_path} but was not stored")
        path = self.root / relpath
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{what} is recorded but cannot be read from {path}: {exc}") from None

    def _record(self, doc: dict) -> RunRecord:
        experiment = doc.get("experiment")
        meta = doc.get("meta") or {}
        return RunRecord(
            id=doc.get("_id"),
            store=self._redacted_url,
            experiment=(experiment.get("name") if isinstance(experiment, dict) else None) or "",
            status=doc.get("status") or "",
            command=doc.get("command"),
            start_time=_time(doc.get("start_time") or meta.get("queue_time")),
            stop_time=_time(doc.get("stop_time")),
            heartbeat=_time(doc.get("heartbeat")),
            config=doc.get("config") or {},
            result=doc.get("result"),
            meta=meta,
            artifacts=tuple(a[0] for a in doc.get("artifacts") or () if a),
        )


def _table(data: dict, name: str) -> list[dict]:
    return [doc for doc in data.get(name, {}).values() if isinstance(doc, dict)]


def _stored_path(entry: list, md5_at: int, path_at: int) -> str | None:
    """The hashfs path of a stored file entry: recorded by expkit, or derived from its md5."""
    relpath = entry[path_at] if len(entry) > path_at else None
    if isinstance(relpath, str) and relpath.startswith(HASHFS_DIR + "/"):
        return relpath
    md5 = entry[md5_at] if len(entry) > md5_at else None
    if isinstance(md5, str) and re.fullmatch(r"[0-9a-f]{32}", md5):
        return _hashfs_relpath(md5)
    return None


_SACRED_DATE = "{TinyDate}:"


def _time(value: Any) -> datetime.datetime | None:
    """A stored time as a datetime: expkit's ISO strings and Sacred's ``{TinyDate}:`` ones."""
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value.removeprefix(_SACRED_DATE))
    except ValueError:
        return None


# --- hooks ------------------------------------------------------------------------


def _store_location(url: str) -> tuple[Path, str] | None:
    """The folder and database file of ``tinydb://PATH`` or ``tinydb://PATH/NAME.json``."""
    prefix = f"{SCHEME}://"
    if not url.lower().startswith(prefix):
        return None
    rest = url[len(prefix) :]
    if not rest:
        raise UsageError(f"store URL {url!r} has no path; write e.g. tinydb://runs_db")
    path = _path(rest).expanduser()
    if path.suffix == ".json" and not path.is_dir():
        return path.parent, path.name
    return path, DB_FILE


@hookimpl
def expkit_store_for_url(url: str) -> TinyDbObserver | None:
    """Claim ``tinydb://PATH`` (a store directory) and ``tinydb://PATH/NAME.json``."""
    location = _store_location(url)
    if location is None:
        return None
    folder, db_file = location
    return TinyDbObserver(folder, db_file=db_file)


@hookimpl
def expkit_reader_for_url(url: str) -> TinyDbRunReader | None:
    """Read the stores :func:`expkit_store_for_url` claims (``tinydb://PATH[/NAME.json]``)."""
    location = _store_location(url)
    if location is None:
        return None
    folder, db_file = location
    return TinyDbRunReader(folder, db_file=db_file, url=url)


@hookimpl
def expkit_store_schemes() -> list[str]:
    """The TinyDB store claims ``tinydb://``."""
    return [SCHEME]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``TinyDbObserver`` and ``TinyDbReader`` for ``from expkit.observers import ...``."""
    return {"TinyDbObserver": TinyDbObserver, "TinyDbReader": TinyDbReader}.get(name)
