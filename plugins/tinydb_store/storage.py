"""The TinyDB store: runs as Sacred's TinyDbObserver documents in one JSON file.

A store at ``PATH`` holds::

    PATH/metadata.json          TinyDB's JSON layout: {"runs": {"1": {...}}, "metrics": {...}}
    PATH/metadata.json.lock     the lock file, also holding a counter of writes
    PATH/hashfs/ab/cd/ef/<rest> sources, resources and artifacts by md5 (HashFS, depth 3, width 2)

Run documents have the fields of Sacred's TinyDbObserver (``_id``, ``experiment``,
``format``, ``command``, ``host``, ``start_time``, ``config``, ``meta``, ``status``,
``resources``, ``artifacts``, ``captured_out``, ``info``, ``heartbeat``, ``result``,
``stop_time``, ``fail_trace``), with Sacred's file entries: sources ``[name, md5,
hashfs path]``, resources ``[path, md5, hashfs path]``, artifacts ``[name, file, md5,
hashfs path, {metadata, content_type}]``. Unlike Sacred, metrics are kept too, in the
``metrics`` table with one document per run and metric name, and queued runs are
recorded.

Cost: TinyDB's JSON storage rewrites the whole file on every write, so one write
costs time in proportion to everything already stored; a run's metric points are
written together with its document, in the same write. ``write_interval=N`` (see
:class:`expkit.store.StoreObserver`) bounds the writes of a run to a constant number.

Several processes may share a store: each write holds an exclusive ``flock`` on
the lock file, re-reads the JSON only when it changed since this store last saw
it (the write counter plus the file's inode, mtime and size), and replaces the
file atomically, so plain ``tinydb`` readers never see half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from expkit.errors import UsageError
from expkit.observers import deprecated_create, utc_isoformat
from expkit.serialize import parse_time, to_data
from expkit.store import (
    NoStoreError,
    NotKeptError,
    Storage,
    StoredFile,
    StoreError,
    StoreObserver,
    StoreReader,
    id_candidates,
)
from expkit.utils import file_md5, is_inside, replace_file, temp_file_beside

if TYPE_CHECKING:
    from tinydb.table import Document

FORMAT = "TinyDbObserver-expkit-1"
DB_FILE = "metadata.json"
HASHFS_DIR = "hashfs"

log = logging.getLogger("expkit")


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
        if not self.path.exists():
            return fn({})
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


def _find(data: dict, table: str, run_id: Any) -> str | None:
    """The document key of the run with ``_id == run_id`` in ``table``."""
    return next(
        (
            k
            for k, d in data.get(table, {}).items()
            if isinstance(d, dict) and d.get("_id") == run_id
        ),
        None,
    )


def _table(data: dict, name: str) -> list[dict]:
    return [doc for doc in data.get(name, {}).values() if isinstance(doc, dict)]


def _drop_metrics(data: dict, run_id: Any) -> None:
    metrics = data.get("metrics", {})
    for key in [k for k, d in metrics.items() if isinstance(d, dict) and d.get("run_id") == run_id]:
        del metrics[key]


# --- content-addressed files ------------------------------------------------------


def _hashfs_relpath(md5: str) -> str:
    """Where HashFS (depth 3, width 2) keeps the file with this md5, relative to the store."""
    return "/".join([HASHFS_DIR, md5[0:2], md5[2:4], md5[4:6], md5[6:]])


def _md5_of(relpath: Any) -> str | None:
    """The md5 a hashfs path names."""
    if not isinstance(relpath, str) or not relpath.startswith(HASHFS_DIR + "/"):
        return None
    return "".join(relpath.split("/")[1:])


def _put_file(root: Path, source: str) -> str:
    """Copy ``source`` into the store's hashfs unless already there; return its hashfs path."""
    hashfs = root / HASHFS_DIR
    hashfs.mkdir(exist_ok=True)  # not the store's folder: a store moved away stays away
    digest = hashlib.md5()
    tmp_fd, tmp = temp_file_beside(str(hashfs / "put"))
    try:
        with os.fdopen(tmp_fd, "wb") as out, open(source, "rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        relpath = _hashfs_relpath(digest.hexdigest())
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
    return relpath


# --- the storage ------------------------------------------------------------------


class TinyDbStorage(Storage):
    """Runs in ``root/db_file`` as Sacred's TinyDbObserver documents, files in ``root/hashfs``.

    ``overwrite=_id`` makes the next run replace the stored run with that ``_id``.
    """

    capabilities = frozenset({"delete", "edit"})

    def __init__(
        self,
        root: str | os.PathLike[str],
        db_file: str = DB_FILE,
        overwrite: Any = None,
        url: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"TinyDB store path {str(self.root)!r} is a file, not a directory")
        self.db_path = self.root / db_file
        self.url = url if url is not None else f"tinydb://{os.fspath(root)}"
        self.overwrite = overwrite
        self._db = _SharedJsonFile(self.db_path)
        self._lock = threading.RLock()
        self._overwritten = False
        # The run being written: its id, its document's key, its metrics documents' keys
        # by name, and its points not written yet.
        self._run_id: Any = None
        self._key: str | None = None
        self._metric_keys: dict[str, str] = {}
        self._staged: dict[str, dict[str, list]] = {}
        if overwrite is not None and self._db.read(lambda d: _find(d, "runs", overwrite)) is None:
            raise UsageError(f"no run with _id {overwrite!r} to overwrite in {self.db_path}")

    @classmethod
    def from_url(cls, url: str) -> TinyDbStorage:
        """The store of ``tinydb://PATH`` (a folder) or ``tinydb://PATH/NAME.json``."""
        rest = url.partition("://")[2]
        if not rest:
            raise UsageError(f"store URL {url!r} has no path; write e.g. tinydb://runs_db")
        path = Path(rest).expanduser()
        if path.suffix == ".json" and not path.is_dir():
            return cls(path.parent, path.name, url=url)
        return cls(path, url=url)

    def __repr__(self) -> str:
        return f"TinyDbStorage({str(self.root)!r})"

    # --- writing ---

    def create(self, doc: dict) -> Any:
        """Store the run's document under its id (a uuid4 hex if none given, or ``overwrite``)."""
        with self._lock:
            run_id = doc["_id"]
            if self.overwrite is not None:
                if self._overwritten:
                    raise UsageError(
                        f"TinyDbObserver(overwrite={self.overwrite!r}) already replaced that "
                        "run once; make a new observer for the next run"
                    )
                self._overwritten = True
                run_id = self.overwrite
            elif run_id is None:
                import uuid

                run_id = uuid.uuid4().hex
            run_id = to_data(run_id)
            self._run_id, self._key, self._metric_keys, self._staged = run_id, None, {}, {}
            self.make_folder()
            entry = _entry({**doc, "_id": run_id})
            self._write(run_id, lambda data: self._insert(data, entry))
            return run_id

    def make_folder(self) -> None:
        """Create the store's folder unless it exists."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create TinyDB store at {str(self.root)!r}: {exc}") from None

    def _insert(self, data: dict, entry: dict) -> None:
        runs = data.setdefault("runs", {})
        key = _find(data, "runs", entry["_id"])
        if self.overwrite is not None:
            if key is None:
                raise UsageError(f"no run with _id {entry['_id']!r} to overwrite in {self.db_path}")
            _drop_metrics(data, entry["_id"])
        elif key is not None:
            raise UsageError(
                f"a run with _id {entry['_id']!r} is already stored in {self.db_path}; "
                f"pass overwrite={entry['_id']!r} to replace it"
            )
        else:
            key = str(_next_doc_id(runs))
        runs[key] = entry
        self._key = key

    def reopen(self, run_id: Any) -> dict:
        """Go on writing the stored run ``run_id``, from what is stored."""

        def locate(data: dict) -> tuple[str, dict, dict[str, str]] | None:
            for candidate in id_candidates(run_id):
                key = _find(data, "runs", candidate)
                if key is not None:
                    metrics = {
                        d["name"]: k
                        for k, d in data.get("metrics", {}).items()
                        if isinstance(d, dict) and d.get("run_id") == candidate and "name" in d
                    }
                    # A copy: the parsed file is cached and shared with later writes.
                    return key, json.loads(json.dumps(data["runs"][key])), metrics
            return None

        with self._lock:
            found = self._db.read(locate)
            if found is None:
                raise UsageError(f"cannot resume run {run_id!r}: it is not in {self.db_path}")
            self._key, entry, self._metric_keys = found
            self._run_id, self._staged = entry["_id"], {}
            return _doc(entry)

    def update(self, doc: dict, changed: frozenset[str]) -> None:
        """Put the ``changed`` fields, and the points not written yet, into the file at once."""
        with self._lock:
            self._write(doc["_id"], lambda data: self._apply(data, doc, changed))
            if doc["_id"] == self._run_id:
                self._staged = {}

    def _apply(self, data: dict, doc: dict, changed: frozenset[str]) -> None:
        run_id = doc["_id"]
        mine = run_id == self._run_id
        runs = data.setdefault("runs", {})
        key = self._key if mine else None
        if key is None or not isinstance(runs.get(key), dict) or runs[key].get("_id") != run_id:
            key = _find(data, "runs", run_id)
        if key is not None:
            # Only the changed fields: what other tools wrote into the document stays.
            runs[key] = {**runs[key], **{k: _stored(k, doc.get(k)) for k in changed}}
        elif mine:  # deleted under the running run: stored whole again
            key = str(_next_doc_id(runs))
            runs[key] = _entry(doc)
        else:
            raise KeyError(f"no run {run_id!r} in {self.db_path}")
        if mine:
            self._key = key
            if self._staged:
                self._apply_metrics(data.setdefault("metrics", {}), run_id)

    def _apply_metrics(self, table: dict, run_id: Any) -> None:
        for name, new in self._staged.items():
            key = self._metric_keys.get(name)
            doc = table.get(key) if key is not None else None
            if not isinstance(doc, dict) or doc.get("run_id") != run_id or doc.get("name") != name:
                key = next(
                    (
                        k
                        for k, d in table.items()
                        if isinstance(d, dict)
                        and d.get("run_id") == run_id
                        and d.get("name") == name
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
            self._metric_keys[name] = key

    def put_file(self, kind: str, file: StoredFile, path: str) -> Any:
        """Copy the file into hashfs; its ref is its hashfs path (and, for an artifact, the
        file's own path first, as Sacred records it)."""
        if kind == "source":
            self.make_folder()  # a run's first file
        try:
            relpath = _put_file(self.root, path)
        except OSError as exc:
            raise StoreError(f"cannot keep {kind} {path} in {self.root}: {exc}") from None
        return (path, relpath) if kind == "artifact" else relpath

    def append_metrics(self, run_id: Any, columns: dict[str, dict]) -> None:
        """Keep the points for the :meth:`update` that follows: one write for both."""
        with self._lock:
            for name, column in columns.items():
                staged = self._staged.setdefault(
                    str(name), {"steps": [], "values": [], "timestamps": []}
                )
                staged["steps"] += to_data(list(column["steps"]))
                staged["values"] += to_data(list(column["values"]))
                staged["timestamps"] += utc_isoformat(column["timestamps"])

    def _write(self, run_id: Any, fn: Callable[[dict], Any]) -> None:
        try:
            self._db.update(fn)
        except OSError as exc:
            # Raised, so that the core spools the event and retries: nothing is lost.
            raise StoreError(f"cannot write run {run_id!r} to {self.db_path}: {exc}") from None

    # --- reading ---

    def summaries(self) -> list[dict]:
        """Every run's document but its output, info and host, in the order stored."""
        if not self.root.is_dir():
            raise NoStoreError(f"no TinyDB store at {str(self.root)!r}: the folder does not exist")
        return self._read(
            lambda data: [
                _doc({k: v for k, v in d.items() if k not in ("captured_out", "info", "host")})
                if isinstance(d, dict)
                else d
                for d in data.get("runs", {}).values()
            ]
        )

    def load(self, run_id: Any) -> dict:
        """The stored document of run ``run_id``."""
        entry = self._read(
            lambda data: data["runs"][k] if (k := _find(data, "runs", run_id)) else None
        )
        if entry is None:
            raise KeyError(f"no run {run_id!r} in {self.db_path}")
        return _doc(entry)

    def load_metrics(self, run_id: Any) -> dict[str, dict]:
        """The run's documents of the ``metrics`` table, by name."""
        docs = self._read(
            lambda data: [m for m in _table(data, "metrics") if m.get("run_id") == run_id]
        )
        return {
            str(m.get("name")): {
                "steps": list(m.get("steps") or ()),
                "values": list(m.get("values") or ()),
                "timestamps": [_untagged(t) for t in m.get("timestamps") or ()],
            }
            for m in docs
        }

    def read_file(self, run_id: Any, kind: str, file: StoredFile) -> bytes:
        """The file's content from hashfs."""
        relpath = file.ref[1] if kind == "artifact" else file.ref
        if relpath is None:
            raise NotKeptError(f"{kind} {file.name!r} of run {run_id!r} was recorded, not kept")
        path = self.root / relpath
        if not is_inside(str(path), str(self.root)):
            # A document names files in the store's hashfs only; one edited or copied in
            # from elsewhere must not make a reader (expkit ui) serve any file.
            raise StoreError(
                f"{kind} {file.name!r} of run {run_id!r}: {relpath!r} is outside the store"
            )
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StoreError(
                f"{kind} {file.name!r} of run {run_id!r} is recorded but cannot be read "
                f"from {path}: {exc.strerror}"
            ) from None

    def delete(self, run_id: Any) -> None:
        """Remove the run's document and its metrics (hashfs files may be shared and stay)."""

        def delete(data: dict) -> None:
            key = _find(data, "runs", run_id)
            if key is None:
                raise KeyError(f"no run {run_id!r} in {self.db_path}")
            del data["runs"][key]
            _drop_metrics(data, run_id)

        self._write(run_id, delete)

    def _read(self, fn: Callable[[dict], Any]) -> Any:
        # A new file object each time: what a reader hands out must not share its data.
        return _SharedJsonFile(self.db_path).read(fn)


# --- Sacred's document format ---------------------------------------------------------

_SACRED_DATE = "{TinyDate}:"
_TIMES = ("start_time", "stop_time", "heartbeat")


def _entry(doc: dict) -> dict:
    """A run's whole document as the store keeps it."""
    entry = {key: _stored(key, value) for key, value in doc.items()}
    if doc.get("status") != "QUEUED":
        entry["format"] = FORMAT
    return entry


def _stored(key: str, value: Any) -> Any:
    """A field of the layer's document as the store keeps it: JSON data, Sacred's file entries."""
    if key == "experiment" and isinstance(value, dict):
        experiment = {k: to_data(v) for k, v in value.items() if k != "sources"}
        experiment["sources"] = [
            [f.name, _md5_of(f.ref) or f.md5, f.ref] for f in value.get("sources") or ()
        ]
        return experiment
    if key == "resources":
        return [[f.name, f.md5, f.ref] for f in value or ()]
    if key == "artifacts":
        entries = []
        for f in value or ():
            filename, relpath = f.ref if f.ref is not None else (None, None)
            extra = {"metadata": to_data(f.metadata), "content_type": f.content_type}
            entries.append([f.name, filename, _md5_of(relpath) or f.md5, relpath, extra])
        return entries
    return to_data(value)


def _doc(entry: Any) -> Any:
    """A stored document as the layer's: times as datetimes, file entries as stored files."""
    if not isinstance(entry, dict):
        return entry  # damaged: the reader skips it with a warning
    doc = dict(entry)
    for key in _TIMES:
        if key in doc:
            doc[key] = _time(doc[key])
    for key in ("config", "result", "info"):
        if key in doc:
            doc[key] = _sacred_values(doc[key])
    experiment = doc.get("experiment")
    if isinstance(experiment, dict):
        doc["experiment"] = {
            **experiment,
            "sources": [
                StoredFile(str(s[0]), _at(s, 1), _stored_path(s, 1, 2))
                for s in _entries(experiment.get("sources"))
            ],
        }
    if "resources" in doc:
        doc["resources"] = [
            StoredFile(str(r[0]), _at(r, 1), _stored_path(r, 1, 2))
            for r in _entries(doc["resources"])
        ]
    if "artifacts" in doc:
        artifacts = []
        for a in _entries(doc["artifacts"]):
            relpath = _stored_path(a, 2, 3)
            extra = a[4] if len(a) > 4 and isinstance(a[4], dict) else {}
            ref = (_at(a, 1), relpath) if relpath is not None else None
            artifacts.append(
                StoredFile(
                    str(a[0]), _at(a, 2), ref, extra.get("metadata"), extra.get("content_type")
                )
            )
        doc["artifacts"] = artifacts
    return doc


# The tags of Sacred's TinyDB serializers, before the JSON text of the value they hold
# (a datetime's is its ISO text); expkit writes plain JSON values.
_SACRED_TAGS = ("{TinyArray}:", "{TinyDataFrame}:", "{TinySeries}:")


def _sacred_values(value: Any) -> Any:
    """``value`` with the tagged values of Sacred's TinyDbObserver as the plain values they
    are: ``"{TinyArray}:[0, 1]"`` is ``[0, 1]``, ``"{TinyDate}:2020-01-02T03:04:05"`` the time's
    text, a DataFrame or Series what its JSON holds."""
    if isinstance(value, str) and value.startswith("{Tiny"):
        if value.startswith(_SACRED_DATE):
            return value.removeprefix(_SACRED_DATE)
        for tag in _SACRED_TAGS:
            if value.startswith(tag):
                try:
                    return json.loads(value.removeprefix(tag))
                except ValueError:
                    return value  # not what Sacred wrote: left as it is
        return value
    if isinstance(value, dict):
        return {k: _sacred_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sacred_values(v) for v in value]
    return value


def _entries(value: Any) -> list[list]:
    return [e for e in value if isinstance(e, list) and e] if isinstance(value, list) else []


def _at(entry: list, index: int) -> Any:
    value = entry[index] if len(entry) > index else None
    return value if isinstance(value, str) else None


def _stored_path(entry: list, md5_at: int, path_at: int) -> str | None:
    """The hashfs path of a stored file entry: recorded by expkit, or derived from its md5
    (Sacred's own entries hold a file handle's repr where expkit keeps the path)."""
    relpath = _at(entry, path_at)
    if relpath is not None and _md5_of(relpath) is not None:
        return relpath
    md5 = _at(entry, md5_at)
    if md5 is not None and re.fullmatch(r"[0-9a-f]{32}", md5):
        return _hashfs_relpath(md5)
    return None


def _untagged(value: Any) -> Any:
    """A stored time without the ``{TinyDate}:`` tag of Sacred's TinyDB serializer."""
    return value.removeprefix(_SACRED_DATE) if isinstance(value, str) else value


def _time(value: Any) -> Any:
    value = _untagged(value)
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            return value  # not a time expkit or Sacred wrote: the reader shows it as unknown
    return value


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
        self._store_root.mkdir(parents=True, exist_ok=True)
        relpath = _put_file(self._store_root, os.fspath(file))
        return self._address(_md5_of(relpath) or "", relpath, existed)

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


# --- Sacred's classes -------------------------------------------------------------------


class TinyDbObserver(_SacredViews, StoreObserver):
    """Sacred's TinyDbObserver: runs in ``PATH/metadata.json``, files in ``PATH/hashfs``.

    Times are stored as the plain ISO strings of :func:`expkit.serialize.format_time`.
    Sacred tagged them (``"{TinyDate}:2024-..."``) for its own TinyDB serializer,
    which a reader needs to get datetimes back; plain strings read the same with
    plain ``tinydb`` or any JSON tool, and sort in time order. ``overwrite=_id``
    makes the next run replace the stored run with that ``_id``; for
    ``write_interval`` see :class:`expkit.store.StoreObserver`.
    """

    VERSION = FORMAT

    def __init__(
        self,
        path: str | os.PathLike = "./runs_db",
        overwrite: Any = None,
        *,
        write_interval: float = 0.0,
        db_file: str = DB_FILE,
    ) -> None:
        super().__init__(TinyDbStorage(path, db_file, overwrite), write_interval=write_interval)
        self.storage.make_folder()  # as Sacred's: the store exists once its observer does

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
        db_path = Path(name).resolve()
        folder = Path(root).resolve() if root is not None else db_path.parent
        if db_path.parent != folder:
            raise UsageError(
                f"TinyDbObserver.create_from: the database {db_path} must lie in root {folder}"
            )
        fs_root = getattr(fs, "root", None)
        if fs_root is not None and Path(fs_root).resolve() != folder / HASHFS_DIR:
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

    root = property(lambda self: self.storage.root, doc="The store's folder.")
    db_path = property(lambda self: self.storage.db_path, doc="The store's JSON file.")
    overwrite = property(lambda self: self.storage.overwrite, doc="The ``_id`` to replace.")


class TinyDbRunReader(StoreReader):
    """The runs of a TinyDB store as :class:`~expkit.records.RunRecord`\\ s."""

    def __init__(
        self, path: str | os.PathLike, *, db_file: str = DB_FILE, url: str | None = None
    ) -> None:
        storage = TinyDbStorage(path, db_file, url=url)
        if not storage.root.is_dir():
            raise UsageError(f"no TinyDB store at {str(storage.root)!r}: the folder does not exist")
        super().__init__(storage)

    root = property(lambda self: self.storage.root, doc="The store's folder.")
    db_path = property(lambda self: self.storage.db_path, doc="The store's JSON file.")


class NoTinyDbStore(UsageError, FileNotFoundError):
    """No TinyDB store at the path; an ``IOError`` too, as Sacred's reader raised."""


class BadReaderArgument(UsageError, ValueError):
    """A malformed ``exp_name`` or an index out of range; a ``ValueError``, as in Sacred."""


class TinyDbReader(_SacredViews):
    """Read a store written by :class:`TinyDbObserver` (Sacred's reader, in short)."""

    def __init__(self, path: str | os.PathLike = "./runs_db", *, db_file: str = DB_FILE) -> None:
        self.root = Path(path).expanduser()
        self.db_path = self.root / db_file
        if not self.db_path.is_file():
            raise NoTinyDbStore(f"no TinyDB store at {str(self.root)!r}: {self.db_path} is missing")

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
                raise BadReaderArgument(
                    f"exp_name {exp_name!r} is not a valid regex: {exc}"
                ) from None
            from tinydb import Query

            by_name = Query().experiment.name.search(exp_name)
            q = by_name if q is None else by_name & q
        runs = self._search("runs", q)
        if indices is None:
            return runs
        picked = []
        for i in [indices] if isinstance(indices, int) else indices:
            if not -len(runs) <= i < len(runs):
                raise BadReaderArgument(f"index {i} is out of range: {len(runs)} runs match")
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
