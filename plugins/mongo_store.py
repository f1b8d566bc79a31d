"""The MongoDB store: runs in Sacred's ``MongoObserver`` schema, as Omniboard and Incense read it.

Collections of the database (default ``sacred``)::

    runs                  one document per run, integer ``_id`` (max + 1)
    metrics               one document per (run_id, name): parallel steps/values/timestamps
    fs.files, fs.chunks   GridFS: sources, resources and artifacts
    runs.captured_out     the complete output of runs whose output outgrew the run document

Unlike Sacred's observer it never rewrites a whole document at a heartbeat:
each beat ``$set``\\ s only the fields that changed. The run document keeps the
last 256 KiB of the captured output (the whole text goes to
``<runs>.captured_out``, see :func:`load_captured_out`), and a ``run.info``
larger than 4 MB moves to a GridFS file (see :func:`load_info`), so the 16 MB
document limit cannot stop a run. Sources and resources are stored once per
(path, md5); the md5 is expkit's own, kept in the GridFS file's ``metadata``
because pymongo 4 no longer computes one. When the server is unreachable
during a run, the data is kept and sent at the next heartbeat; at the end of
the run it is written to ``failure_dir`` if the server is still away.
Passwords in the URL are shown as ``***`` everywhere (see :func:`expkit.utils.redact_url`).

pymongo is imported only when a store is created, so this plugin loads
without it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from expkit.errors import ExpkitError, UsageError
from expkit.observers import RunObserver, deprecated_create, utc_datetimes
from expkit.pluginmanager import hookimpl
from expkit.records import RunRecord, edited_meta
from expkit.serialize import to_data, utcnow
from expkit.utils import file_md5, redact_url, split_userinfo

if TYPE_CHECKING:
    from gridfs import GridFS
    from pymongo.collection import Collection

SCHEMES = ["mongodb", "mongodb+srv"]
DEFAULT_DB = "sacred"
TAIL_CHARS = 256 * 1024  # captured output kept in the run document
SEGMENT_CHARS = 1024 * 1024  # largest piece of output in one <runs>.captured_out document
INFO_LIMIT = 4 * 1024 * 1024  # encoded run.info above this goes to GridFS
RESERVED_COLLECTIONS = frozenset(
    {"fs.files", "fs.chunks", "_properties", "system.indexes", "search_space", "search_spaces"}
)
# Short timeouts so that an unreachable server fails a run's start in seconds, not minutes.
CLIENT_DEFAULTS = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000}

_MAX_ID_TRIES = 1000
_FINAL_TRIES = 3
_INFO_FILE_KEY = "expkit_info_file"
_BLOCK = 1 << 20
_INT64 = (-(2**63), 2**63 - 1)
_UNSET = object()

log = logging.getLogger(__name__)


class MongoStoreError(ExpkitError):
    """The MongoDB store could not reach the server or store a run."""


# --- passwords ----------------------------------------------------------------------


def _password(url: str | None) -> str:
    """The password in ``url`` (percent-decoded), or ``""``."""
    userinfo = split_userinfo(url or "")[1]
    if not userinfo:
        return ""
    from urllib.parse import unquote_plus

    return unquote_plus(userinfo.partition(":")[2])


def _redact_text(text: str, secret: str = "") -> str:
    """``text`` with every URL password, and the literal ``secret``, replaced by ``***``."""
    text = redact_url(text)
    if secret and secret in text:
        text = text.replace(secret, "***")
    return text


# --- turning run data into BSON ----------------------------------------------------


def _safe_key(key: Any) -> str:
    """A key every MongoDB accepts, by Sacred's substitutions ``.`` -> ``,``, ``$`` -> ``@``."""
    key = str(key).replace(".", ",").replace("\0", "")
    return "@" + key[1:] if key.startswith("$") else key


def _to_bson(obj: Any, secret: str = "") -> Any:
    """``obj`` as BSON data: times stay dates, keys are made safe, URL passwords redacted;
    what BSON cannot hold becomes JSON data as :func:`expkit.serialize.to_data` makes it."""
    if isinstance(obj, str):
        return _redact_text(obj, secret)
    if obj is None or isinstance(obj, (bool, float, datetime.datetime)):
        return obj
    if isinstance(obj, int):
        return obj if _INT64[0] <= obj <= _INT64[1] else str(obj)
    if isinstance(obj, dict):
        return {_safe_key(k): _to_bson(v, secret) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_to_bson(v, secret) for v in obj]
    if attrs.has(type(obj)):
        return _to_bson(attrs.asdict(obj, recurse=False), secret)
    return _to_bson(to_data(obj), secret)


def _run_id(_id: Any) -> Any:
    """Digit strings (``--id 7``) become numbers: Omniboard needs numeric ``_id``\\ s."""
    if isinstance(_id, str) and _id.isdigit():
        return int(_id)
    return _id


def _reason(exc: BaseException) -> str:
    """The short, first part of a pymongo error message."""
    text = str(exc).split(", full error:")[0]
    text = text.split(", Timeout:")[0].split(" (configured timeouts")[0]
    return text[:300] or type(exc).__name__


# --- readers ------------------------------------------------------------------------


def load_captured_out(runs: Collection, run_id: Any) -> str:
    """The complete captured output of run ``run_id``, also when its document has only the tail."""
    segments = runs.database[f"{runs.name}.captured_out"].find(
        {"run_id": run_id}, sort=[("start", 1)]
    )
    text = "".join(s["text"] for s in segments)
    if text:
        return text
    run = runs.find_one({"_id": run_id}, {"captured_out": 1})
    return (run or {}).get("captured_out") or ""


def load_info(runs: Collection, run_id: Any) -> dict:
    """The complete ``info`` of run ``run_id``, also when it was too large for the run document."""
    import gridfs
    from bson import json_util

    run = runs.find_one({"_id": run_id}, {"info": 1}) or {}
    info = run.get("info") or {}
    note = info.get(_INFO_FILE_KEY)
    if not isinstance(note, dict):
        return info
    data = gridfs.GridFS(runs.database).get(note["file_id"]).read()
    return json_util.loads(data.decode("utf-8"))


class MongoRunReader:
    """The read side of a MongoDB store for :func:`expkit.runs.runs` (``expkit_reader_for_url``).

    Reads Sacred's schema too: runs of Sacred's ``MongoObserver`` list and load alike.
    """

    def __init__(
        self,
        url: str | None = None,
        db_name: str = DEFAULT_DB,
        *,
        client: Any = None,
        runs: str = "runs",
        metrics: str = "metrics",
    ) -> None:
        gridfs, _ = _import_pymongo()
        self._url = url
        self._owns_client = client is None
        self._client = client = _connect(url) if client is None else client
        db = client[db_name]
        self.runs = db[runs]
        self.metrics = db[metrics]
        self.captured_out = db[f"{runs}.captured_out"]
        self.fs = gridfs.GridFS(db)
        self.url = redact_url(url) if url else f"mongodb://{db_name}"

    def __repr__(self) -> str:
        return f"MongoRunReader({self.url!r}, runs={self.runs.full_name!r})"

    def close(self) -> None:
        """Close the connection this reader opened."""
        if self._owns_client:
            self._client.close()

    def list_runs(self) -> list[RunRecord]:
        """Every run as a summary (without captured output, info and metrics), in id order."""
        with self._errors("listing runs"):
            docs = self.runs.find({}, {"captured_out": 0, "info": 0}, sort=[("_id", 1)])
            return [self._record(doc) for doc in docs]

    def get_run(self, run_id: Any) -> RunRecord:
        """Everything stored about run ``run_id``; :class:`KeyError` when there is none."""
        with self._errors(f"reading run {run_id!r}"):
            doc = self._find(run_id)
            _id = doc["_id"]
            metrics = {
                str(m.get("name")): {
                    "steps": list(m.get("steps", ())),
                    "values": list(m.get("values", ())),
                    "timestamps": list(m.get("timestamps", ())),
                }
                for m in self.metrics.find({"run_id": _id})
            }
            info = _without_metric_refs(load_info(self.runs, _id))
            captured_out = load_captured_out(self.runs, _id)
        return attrs.evolve(
            self._record(doc),
            host=doc.get("host") or {},
            experiment_info=doc.get("experiment") or {},
            info=info,
            fail_trace=doc.get("fail_trace"),
            resources=tuple(
                (str(r[0]), str(r[1]) if len(r) > 1 else "")
                for r in doc.get("resources") or ()
                if r
            ),
            captured_out=captured_out,
            metrics=metrics,
        )

    def read_source(self, run_id: Any, name: str) -> bytes:
        """The content of the run's source ``name``, from GridFS."""
        with self._errors(f"reading a source of run {run_id!r}"):
            doc = self._find(run_id, {"experiment.sources": 1})
            for source in (doc.get("experiment") or {}).get("sources") or ():
                if source and source[0] == name:
                    return self._read_file(source[1] if len(source) > 1 else None, name)
        raise KeyError(f"run {run_id!r} in {self._where()} has no source {name!r}")

    def read_artifact(self, run_id: Any, name: str) -> bytes:
        """The content of the run's artifact ``name``, from GridFS (the last one of that name)."""
        with self._errors(f"reading an artifact of run {run_id!r}"):
            doc = self._find(run_id, {"artifacts": 1})
            for artifact in reversed(doc.get("artifacts") or ()):
                if isinstance(artifact, dict) and artifact.get("name") == name:
                    return self._read_file(artifact.get("file_id"), name)
        raise KeyError(f"run {run_id!r} in {self._where()} has no artifact {name!r}")

    def read_resource(self, run_id: Any, path: str) -> bytes:
        """The content of the input file the run recorded under ``path``, from GridFS."""
        with self._errors(f"reading a resource of run {run_id!r}"):
            doc = self._find(run_id, {"resources": 1})
            for resource in reversed(doc.get("resources") or ()):
                if resource and resource[0] == path:
                    md5 = resource[1] if len(resource) > 1 else None
                    # Kept once per path and md5: in metadata by expkit, by GridFS for Sacred.
                    found = self.fs.find_one({"filename": path, "metadata.md5": md5})
                    found = found or self.fs.find_one({"filename": path, "md5": md5})
                    return self._read_file(found._id if found else None, path)
        raise KeyError(f"run {run_id!r} in {self._where()} has no resource {path!r}")

    def edit_run(
        self, run_id: Any, *, comment: str | None = None, tags: list[str] | None = None
    ) -> None:
        """Set the run's ``meta.comment`` and ``meta.tags`` (one update of its document)."""
        with self._errors(f"editing run {run_id!r}"):
            doc = self._find(run_id, {"meta": 1})
            meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
            edited = edited_meta(meta, comment, tags)
            sets = {f"meta.{k}": edited[k] for k in ("comment", "tags") if k in edited}
            unsets = {f"meta.{k}": "" for k in ("comment", "tags") if k not in edited}
            # $set and $unset of single fields: a running observer's own updates stay.
            update = {"$set": sets} if sets else {}
            if unsets:
                update["$unset"] = unsets
            self.runs.update_one({"_id": doc["_id"]}, update)

    def delete_run(self, run_id: Any) -> None:
        """Remove the run, its metrics, output pieces, artifacts and large info from the store.

        Sources and resources stay: other runs share them (they are stored once per path and md5).
        """
        with self._errors(f"deleting run {run_id!r}"):
            doc = self._find(run_id, {"artifacts": 1, "info": 1})
            _id = doc["_id"]
            files = [a.get("file_id") for a in doc.get("artifacts") or () if isinstance(a, dict)]
            note = (doc.get("info") or {}).get(_INFO_FILE_KEY)
            if isinstance(note, dict):
                files.append(note.get("file_id"))
            self.metrics.delete_many({"run_id": _id})
            self.captured_out.delete_many({"run_id": _id})
            for file_id in files:
                if file_id is not None:
                    self.fs.delete(file_id)
            # The run document goes last: a deletion cut short can be run again.
            self.runs.delete_one({"_id": _id})

    def _find(self, run_id: Any, projection: dict | None = None) -> dict:
        # Ids typed on a command line are strings; expkit and Sacred store numbers.
        candidates = [run_id]
        if isinstance(run_id, str) and run_id.lstrip("-").isdigit():
            candidates.insert(0, int(run_id))
        for candidate in candidates:
            doc = self.runs.find_one({"_id": candidate}, projection)
            if doc is not None:
                return doc
        raise KeyError(f"no run {run_id!r} in {self._where()}")

    def _read_file(self, file_id: Any, name: str) -> bytes:
        gridfs = _import_pymongo()[0]
        if file_id is None:
            raise MongoStoreError(f"{name!r} is recorded in {self._where()} but was not stored")
        try:
            return self.fs.get(file_id).read()
        except gridfs.errors.NoFile:
            raise MongoStoreError(
                f"{name!r} is recorded in {self._where()} but GridFS has no file {file_id}"
            ) from None

    def _record(self, doc: dict) -> RunRecord:
        experiment = doc.get("experiment")
        meta = doc.get("meta") or {}
        artifacts = doc.get("artifacts") or ()
        return RunRecord(
            id=doc.get("_id"),
            store=self.url,
            experiment=(experiment.get("name") if isinstance(experiment, dict) else None) or "",
            status=doc.get("status") or "",
            command=doc.get("command"),
            start_time=doc.get("start_time") or meta.get("queue_time"),
            stop_time=doc.get("stop_time"),
            heartbeat=doc.get("heartbeat"),
            config=doc.get("config") or {},
            result=doc.get("result"),
            meta=meta,
            artifacts=tuple(a["name"] for a in artifacts if isinstance(a, dict) and "name" in a),
        )

    def _where(self) -> str:
        return f"{self.runs.database.name}.{self.runs.name} at {self.url}"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        pymongo = _import_pymongo()[1]
        try:
            yield
        except pymongo.errors.PyMongoError as exc:
            reason = _redact_text(_reason(exc), _password(self._url))
            raise MongoStoreError(
                f"MongoDB store {self._where()}: {what} failed ({reason})"
            ) from None


def _without_metric_refs(info: dict) -> dict:
    """``info`` without the links to metrics documents the store adds to ``info["metrics"]``."""
    refs = info.get("metrics")
    if not isinstance(refs, list):
        return info
    kept = [r for r in refs if not (isinstance(r, dict) and set(r) == {"name", "id"})]
    info = {k: v for k, v in info.items() if k != "metrics"}
    if kept:
        info["metrics"] = kept
    return info


# --- the observer ------------------------------------------------------------------


class MongoObserver(RunObserver):
    """Store runs in MongoDB with Sacred's schema (Sacred's ``MongoObserver``).

    ``kwargs`` go to :class:`pymongo.MongoClient`; unless they or the URL say
    otherwise, server selection and connection time out after 5 seconds.
    ``collection`` is deprecated in favour of ``collection_prefix`` (runs go to
    ``<prefix>_runs``, metrics to ``<prefix>_metrics``). ``overwrite=<_id>``
    runs into an existing run document instead of a new one. ``failure_dir``
    receives a JSON copy (``bson.json_util``) of any run whose end could not be
    saved. A digit-string ``_id`` (``--id 7``) is stored as a number.
    """

    VERSION = "MongoObserver-0.7.0"

    def __init__(
        self,
        url: str | None = None,
        db_name: str = DEFAULT_DB,
        collection: str = "runs",
        collection_prefix: str = "",
        overwrite: Any = None,
        priority: int = 30,
        client: Any = None,
        failure_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        gridfs, _ = _import_pymongo()
        if client is not None and url is not None:
            raise UsageError("MongoObserver: give either url or client, not both")
        if collection != "runs":
            if collection_prefix:
                raise UsageError("MongoObserver: give collection_prefix or collection, not both")
            runs_name, metrics_name = collection, "metrics"
        elif collection_prefix:
            runs_name, metrics_name = f"{collection_prefix}_runs", f"{collection_prefix}_metrics"
        else:
            runs_name, metrics_name = "runs", "metrics"
        if runs_name in RESERVED_COLLECTIONS:
            raise UsageError(f"MongoObserver: the collection name {runs_name!r} is reserved")
        if collection != "runs":
            warnings.warn(
                "MongoObserver(collection=...) is deprecated; use collection_prefix",
                DeprecationWarning,
                stacklevel=2,
            )
        self._url = url
        self._owns_client = client is None
        self._client = client = _connect(url, **kwargs) if client is None else client
        db = client[db_name]
        self._bind(
            db[runs_name], gridfs.GridFS(db), overwrite, db[metrics_name], failure_dir, priority
        )

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> MongoObserver:
        """Deprecated in Sacred 0.8.7 and here: ``MongoObserver(...)``."""
        return deprecated_create(cls, *args, **kwargs)

    @classmethod
    def create_from(
        cls,
        runs_collection: Collection,
        fs: GridFS,
        overwrite: Any = None,
        metrics_collection: Collection | None = None,
        failure_dir: str | os.PathLike[str] | None = None,
        priority: int = 30,
    ) -> MongoObserver:
        """An observer on existing pymongo collections and GridFS (Sacred's ``create_from``)."""
        self = cls.__new__(cls)
        self._url = None
        self._owns_client = False
        self._client = runs_collection.database.client
        metrics = metrics_collection
        if metrics is None:
            metrics = runs_collection.database["metrics"]
        self._bind(runs_collection, fs, overwrite, metrics, failure_dir, priority)
        return self

    def _bind(
        self,
        runs: Collection,
        fs: GridFS,
        overwrite: Any,
        metrics: Collection,
        failure_dir: Any,
        priority: int,
    ) -> None:
        self.runs = runs
        self.metrics = metrics
        self.fs = fs
        self.captured_out = runs.database[f"{runs.name}.captured_out"]
        self.overwrite = overwrite
        self.failure_dir = None if failure_dir is None else os.fspath(failure_dir)
        self.priority = priority
        self.run_entry: dict | None = None
        # Replaced literally in what is stored; shorter ones would mangle ordinary text.
        password = _password(self._url)
        self._secret = password if len(password) >= 4 else ""
        self._lock = threading.RLock()
        self._indexed = False
        self._indexed_output = False
        self._reset()

    @property
    def url(self) -> str | None:
        """The server's URL as it may be shown: its password is ``***``."""
        return None if self._url is None else redact_url(self._url)

    def __repr__(self) -> str:
        where = redact_url(self._url) if self._url else self.runs.database.name
        return f"MongoObserver({where!r}, db={self.runs.database.name!r}, runs={self.runs.name!r})"

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers within ``timeout`` seconds."""
        pymongo = _import_pymongo()[1]
        try:
            with pymongo.timeout(timeout):
                self._client.admin.command("ping")
        except pymongo.errors.PyMongoError:
            return False
        return True

    def close(self) -> None:
        """Close the connection this observer opened (a ``client`` passed in stays open)."""
        if self._owns_client:
            self._client.close()

    # --- events ------------------------------------------------------------------

    def queued_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        queue_time: datetime.datetime,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> Any:
        """Store the queued run's document and sources; return its id."""
        if self.overwrite is not None:
            raise UsageError("MongoObserver: a queued run cannot overwrite another run")
        with self._lock, self._errors("storing the queued run"):
            self._reset()
            meta = self._bson(meta_info)
            meta["queue_time"] = queue_time
            entry = {
                "_id": _run_id(_id),
                "experiment": self._experiment(ex_info),
                "command": command,
                "host": self._bson(host_info),
                "config": self._bson(config),
                "meta": meta,
                "status": "QUEUED",
            }
            self._insert(entry)
            self.run_entry = entry
            return entry["_id"]

    def started_event(
        self,
        ex_info: dict,
        command: str,
        host_info: dict,
        start_time: datetime.datetime,
        config: dict,
        meta_info: dict,
        _id: Any,
    ) -> Any:
        """Store the run's document and sources; return its id (max + 1 if none given)."""
        with self._lock, self._errors("starting the run"):
            self._reset()
            self._ensure_indexes()
            entry = {
                "_id": _run_id(_id),
                "experiment": self._experiment(ex_info),
                "format": self.VERSION,
                "command": command,
                "host": self._bson(host_info),
                "start_time": start_time,
                "config": self._bson(config),
                "meta": self._bson(meta_info),
                "status": "RUNNING",
                "resources": [],
                "artifacts": [],
                "captured_out": "",
                "info": {},
                "heartbeat": None,
            }
            if self.overwrite is None:
                self._insert(entry)
            else:
                entry = self._overwrite(entry)
            self.run_entry = entry
            self._doc = {"captured_out": "", "info": {}, "heartbeat": None, "result": _UNSET}
            return entry["_id"]

    def heartbeat_event(
        self, info: dict, captured_out: str, beat_time: datetime.datetime, result: Any
    ) -> None:
        """Send what changed since the last beat: heartbeat time, result, info, output."""
        with self._lock:
            if self.run_entry is None:
                return
            self._beat = (info, captured_out or "", beat_time, result)
            self._attempt(lambda: self._save({}), "sending a heartbeat")

    def completed_event(self, stop_time: datetime.datetime, result: Any) -> None:
        """Mark the run COMPLETED with its result."""
        self._final({"stop_time": stop_time, "result": self._bson(result), "status": "COMPLETED"})

    def interrupted_event(self, interrupt_time: datetime.datetime, status: str) -> None:
        """Mark the run interrupted with ``status``."""
        self._final({"stop_time": interrupt_time, "status": status})

    def failed_event(self, fail_time: datetime.datetime, fail_trace: list[str]) -> None:
        """Mark the run FAILED with its traceback."""
        self._final(
            {"stop_time": fail_time, "fail_trace": self._bson(fail_trace), "status": "FAILED"}
        )

    def resource_event(self, filename: str) -> None:
        """Record ``[path, md5]`` in ``resources`` and keep the file in GridFS (once per md5)."""
        path = os.path.abspath(filename)
        self._add_resource(path, path)

    def copied_resource_event(self, filename: str, original: str) -> None:
        """Keep ``filename`` in GridFS under the name ``original``; record ``[original, md5]``."""
        self._add_resource(os.path.abspath(filename), str(original))

    def _add_resource(self, content: str, path: str) -> None:
        try:
            md5 = file_md5(content)
        except OSError as exc:
            raise UsageError(f"resource {content}: cannot read it ({exc.strerror})") from None
        with self._lock:
            if self.run_entry is None or [path, md5] in self.run_entry["resources"]:
                return
            if any(p.get("path") == path and p.get("md5") == md5 for p in self._pending_files):
                return
            item = {"kind": "resource", "path": path, "md5": md5, "content": content}
            self._pending_files.append(item)
            self._attempt(self._send_files, "storing a resource")

    def artifact_event(
        self,
        name: str,
        filename: str,
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> None:
        """Store the file in GridFS as ``artifact://<runs>/<id>/<name>``; list it in the run."""
        path = os.path.abspath(filename)
        if not os.path.isfile(path):
            raise UsageError(f"artifact {name!r}: {path} is not a readable file")
        if content_type is None:
            import mimetypes  # reads the system's type tables: only when an artifact needs it

            content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        with self._lock:
            if self.run_entry is None:
                return
            item = {
                "kind": "artifact",
                "name": name,
                "path": path,
                "metadata": None if metadata is None else self._bson(metadata),
                "content_type": content_type,
            }
            self._pending_files.append(item)
            self._attempt(self._send_files, "storing an artifact")

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        """``$push`` new points to one ``metrics`` document per name; link new names in info."""
        self._add_metrics((name, m, m["timestamps"]) for name, m in metrics_by_name.items())

    def log_metric_columns(self, columns: dict, info: dict) -> None:
        """:meth:`log_metrics` for the columns of a run (BSON needs a datetime per point)."""
        self._add_metrics((name, c, utc_datetimes(c["timestamps"])) for name, c in columns.items())

    def _add_metrics(self, series: Iterable[tuple[str, dict, list]]) -> None:
        with self._lock:
            if self.run_entry is None:
                return
            for name, metric, times in series:
                pending = self._pending_metrics.setdefault(
                    name, {"steps": [], "values": [], "timestamps": []}
                )
                pending["steps"].extend(self._bson(metric["steps"]))
                pending["values"].extend(self._bson(metric["values"]))
                pending["timestamps"].extend(times)
            self._attempt(self._send_metrics, "storing metrics")

    def join(self) -> None:
        """Nothing to wait for: every event is sent before it returns."""

    def resume(self, _id: Any) -> None:
        """Go on recording the stored run ``_id``: its spooled events are being replayed."""
        run_id = _run_id(_id)
        with self._lock, self._errors(f"resuming run {run_id!r}"):
            # Always from what is stored: events this observer failed to send are replayed.
            doc = self.runs.find_one({"_id": run_id})
            if doc is None:
                raise UsageError(f"cannot resume run {run_id!r}: it is not in {self._where()}")
            self._reset()
            info = doc.get("info") or {}
            self._doc = {
                "captured_out": doc.get("captured_out") or "",
                "info": dict(info),
                "heartbeat": doc.get("heartbeat"),
                "result": doc.get("result", _UNSET),
            }
            refs = info.get("metrics")
            self._metric_refs = [
                {"name": r["name"], "id": r["id"]}
                for r in (refs if isinstance(refs, list) else [])
                if isinstance(r, dict) and {"name", "id"} <= r.keys()
            ]
            note = info.get(_INFO_FILE_KEY)
            if isinstance(note, dict):
                self._info_file = note.get("file_id")
            stored = list(self.captured_out.find({"run_id": run_id}, sort=[("start", 1)]))
            # Positions are those of the output; a redacted piece may be shorter in storage.
            ends = [s["start"] for s in stored[1:]]
            ends.append(stored[-1]["start"] + len(stored[-1]["text"]) if stored else 0)
            self._segments = [(s["start"], end, hash(s["text"])) for s, end in zip(stored, ends)]
            doc.setdefault("resources", [])
            doc.setdefault("artifacts", [])
            self.run_entry = doc

    # --- documents -----------------------------------------------------------------

    def _reset(self) -> None:
        """Forget the previous run: an observer serves every run of its experiment."""
        self.run_entry = None
        self._doc: dict = {}
        self._beat: tuple | None = None
        self._metric_refs: list[dict] = []
        self._pending_metrics: dict[str, dict] = {}
        self._pending_files: list[dict] = []
        self._info_data: Any = _UNSET  # the last info converted
        self._info_want: dict = {}  # what the document's info should be
        self._info_file: Any = None  # GridFS id of a too-large info
        self._stale_files: list = []
        self._segments: list[tuple[int, int, int]] = []  # (start, end, hash) in captured_out

    def _bson(self, obj: Any) -> Any:
        return _to_bson(obj, self._secret)

    def _experiment(self, ex_info: dict) -> dict:
        experiment = self._bson({k: v for k, v in ex_info.items() if k != "sources"})
        if "dependencies" in experiment:
            experiment["dependencies"] = [  # Sacred's "name==version"
                f"{d.get('name')}=={d.get('version')}" if isinstance(d, dict) else str(d)
                for d in experiment["dependencies"]
            ]
        base_dir = str(ex_info.get("base_dir") or "")
        sources = []
        for source in ex_info.get("sources", []):
            if attrs.has(type(source)):  # an expkit.records.Source
                name, md5, path = source.name, source.md5, source.path
            else:  # Sacred's [relpath, md5]
                name, md5 = str(source[0]), str(source[1])
                path = os.path.join(base_dir, name)
            sources.append([name, self._put_file(path, md5, "source")])
        experiment["sources"] = sources
        return experiment

    def _put_file(self, path: str, md5: str | None, what: str, content: str | None = None) -> Any:
        """The GridFS id of ``path``, uploaded unless a file of that path and md5 is stored.

        The bytes come from ``content`` when given (a copy of ``path``'s), else from ``path``.
        """
        if md5 is not None:
            found = self.fs.find_one({"filename": path, "metadata.md5": md5})
            if found is not None:
                return found._id
        content = content or path
        try:
            actual = file_md5(content)
            if actual != md5:  # changed since it was recorded: store what is there now
                found = self.fs.find_one({"filename": path, "metadata.md5": actual})
                if found is not None:
                    return found._id
            with open(content, "rb") as f:
                return self.fs.put(f, filename=path, metadata={"md5": actual})
        except OSError as exc:
            log.warning(
                "MongoDB store: %s %s cannot be read (%s); not stored", what, content, exc.strerror
            )
            return None

    def _ensure_indexes(self) -> None:
        if self._indexed:
            return
        self.metrics.create_index([("run_id", 1), ("name", 1)])
        self._indexed = True

    def _insert(self, entry: dict) -> None:
        """Insert ``entry``, giving it max(_id) + 1 unless it has an id; retried on races."""
        pymongo = _import_pymongo()[1]
        auto = entry["_id"] is None
        for _ in range(_MAX_ID_TRIES):
            if auto:
                last = self.runs.find_one(
                    {"_id": {"$type": "number"}}, {"_id": 1}, sort=[("_id", -1)]
                )
                entry["_id"] = int(last["_id"]) + 1 if last else 1
            try:
                self.runs.insert_one(entry)
                return
            except pymongo.errors.DuplicateKeyError:
                if auto:
                    continue
            # A run may start under the id of its queued document; any other clash is an error.
            old = self.runs.find_one({"_id": entry["_id"]}, {"status": 1})
            if old is not None and old.get("status") == "QUEUED":
                self.runs.replace_one({"_id": entry["_id"]}, entry)
                return
            raise MongoStoreError(
                f"a run with _id {entry['_id']!r} already exists in {self._where()}"
            )
        raise MongoStoreError(f"no free run _id after {_MAX_ID_TRIES} tries in {self._where()}")

    def _overwrite(self, entry: dict) -> dict:
        """Reuse the document ``overwrite`` names: keep its other fields, drop its old outcome."""
        _id = _run_id(self.overwrite)
        old = self.runs.find_one({"_id": _id})
        if old is None:
            raise UsageError(
                f"MongoObserver: no run with _id {_id!r} to overwrite in {self._where()}"
            )
        for stale in ("stop_time", "result", "fail_trace", "queue_time"):
            old.pop(stale, None)
        old.update({k: v for k, v in entry.items() if k != "_id"})
        self.metrics.delete_many({"run_id": _id})
        self.captured_out.delete_many({"run_id": _id})
        self.runs.replace_one({"_id": _id}, old, upsert=True)
        return old

    # --- saving ---------------------------------------------------------------------

    def _save(self, final: dict) -> None:
        """Send pending files and metrics, then one update with the fields that changed."""
        self._send_files()
        self._send_metrics()
        sets: dict = {}
        unsets: dict = {}
        if self._beat is not None:
            _, output, beat_time, result = self._beat
            if beat_time != self._doc["heartbeat"]:
                sets["heartbeat"] = beat_time
            if "result" not in final:
                result = self._bson(result)
                if self._doc["result"] is _UNSET or result != self._doc["result"]:
                    sets["result"] = result
            self._sync_output(output, sets)
        # Without a beat yet, this still links metrics logged so far.
        self._diff_info(self._beat[0] if self._beat else {}, sets, unsets)
        sets.update(final)
        if not sets and not unsets:
            return
        update = {"$set": sets}
        if unsets:
            update["$unset"] = unsets
        done = self.runs.update_one({"_id": self.run_entry["_id"]}, update)
        self._commit(sets, unsets)
        if done.matched_count == 0:  # the document was deleted under us: store it whole again
            self.runs.replace_one({"_id": self.run_entry["_id"]}, self.run_entry, upsert=True)
        for file_id in self._stale_files:
            self.fs.delete(file_id)
        self._stale_files.clear()

    def _commit(self, sets: dict, unsets: dict) -> None:
        """Record what the stored document now holds."""
        for key, value in sets.items():
            if key.startswith("info."):
                self._doc["info"][key[5:]] = value
            elif key == "info":
                self._doc["info"] = dict(value)  # later per-key commits must not touch ``value``
            else:
                self._doc[key] = value
        for key in unsets:
            self._doc["info"].pop(key[5:], None)
        for key in ("heartbeat", "result", "captured_out", "stop_time", "fail_trace", "status"):
            if key in self._doc and self._doc[key] is not _UNSET:
                self.run_entry[key] = self._doc[key]
        self.run_entry["info"] = self._doc["info"]

    def _diff_info(self, info: dict, sets: dict, unsets: dict) -> None:
        data = self._bson(info or {})
        if self._metric_refs:
            mine = data.get("metrics")
            data["metrics"] = (mine if isinstance(mine, list) else []) + self._metric_refs
        if data != self._info_data:
            size = len(_import_bson().encode(data))
            if size > INFO_LIMIT:
                self._info_want = {
                    "metrics": data.get("metrics", []),
                    _INFO_FILE_KEY: self._put_info(data, size),
                }
            else:
                if self._info_file is not None:
                    self._stale_files.append(self._info_file)
                    self._info_file = None
                self._info_want = data
            self._info_data = data
        want, have = self._info_want, self._doc["info"]
        if want == have:
            return
        whole = not have or not all(want) or "" in have
        whole = whole or _INFO_FILE_KEY in want or _INFO_FILE_KEY in have
        if whole or len(want) + len(have) > 200:
            sets["info"] = want
            return
        for key, value in want.items():
            if key not in have or have[key] != value:
                sets[f"info.{key}"] = value
        for key in have.keys() - want.keys():
            unsets[f"info.{key}"] = ""

    def _put_info(self, data: dict, size: int) -> dict:
        """Store a too-large info as JSON in GridFS; the note that replaces it in the document."""
        json_util = _import_bson().json_util
        if self._info_file is not None:
            self._stale_files.append(self._info_file)
        self._info_file = self.fs.put(
            json_util.dumps(data).encode("utf-8"),
            filename=f"info://{self.runs.name}/{self.run_entry['_id']}",
            content_type="application/json",
            metadata={"run_id": self.run_entry["_id"]},
        )
        return {
            "file_id": self._info_file,
            "bytes": size,
            "note": "run.info is too large for the run document; "
            "expkit_plugins.mongo_store.load_info reads it",
        }

    def _sync_output(self, text: str, sets: dict) -> None:
        """Put the output's tail in the document and, once it outgrew it, all of it in
        ``<runs>.captured_out``: new text is appended, rewritten text replaced."""
        if self._segments or len(text) > TAIL_CHARS:
            self._sync_segments(text)
        tail = self._tail(text)
        if tail != self._doc["captured_out"]:
            sets["captured_out"] = tail

    def _sync_segments(self, text: str) -> None:
        run_id = self.run_entry["_id"]
        keep = len(self._segments)
        for i, (start, end, digest) in enumerate(self._segments):
            if hash(text[start:end]) != digest:
                keep = i  # a filter rewrote output: store again from here
                break
        if keep < len(self._segments):
            self.captured_out.delete_many(
                {"run_id": run_id, "start": {"$gte": self._segments[keep][0]}}
            )
            del self._segments[keep:]
        pos = self._segments[-1][1] if self._segments else 0
        while pos < len(text):
            piece = text[pos : pos + SEGMENT_CHARS]
            self.captured_out.insert_one(
                {"run_id": run_id, "start": pos, "text": _redact_text(piece, self._secret)}
            )
            self._segments.append((pos, pos + len(piece), hash(piece)))
            pos += len(piece)
        if not self._indexed_output:
            self.captured_out.create_index([("run_id", 1), ("start", 1)])
            self._indexed_output = True

    def _tail(self, text: str) -> str:
        if len(text) <= TAIL_CHARS:
            return _redact_text(text, self._secret)
        cut = len(text) - TAIL_CHARS
        newline = text.find("\n", cut, cut + 1024)
        if newline >= 0:
            cut = newline + 1
        note = (
            f"[expkit: the first {cut} characters of this output are in the collection "
            f"'{self.captured_out.name}']\n"
        )
        return note + _redact_text(text[cut:], self._secret)

    def _send_metrics(self) -> None:
        run_id = self.run_entry["_id"]
        for name in list(self._pending_metrics):
            points = self._pending_metrics[name]
            push = {key: {"$each": values} for key, values in points.items()}
            query = {"run_id": run_id, "name": name}
            done = self.metrics.update_one(query, {"$push": push}, upsert=True)
            del self._pending_metrics[name]
            if all(ref["name"] != name for ref in self._metric_refs):
                metric_id = done.upserted_id
                if metric_id is None:  # created by an earlier attempt whose answer was lost
                    metric_id = self.metrics.find_one(query, {"_id": 1})["_id"]
                self._metric_refs.append({"name": name, "id": str(metric_id)})

    def _send_files(self) -> None:
        while self._pending_files:
            item = self._pending_files[0]
            if item["kind"] == "resource":
                if "file_id" not in item:
                    item["file_id"] = self._put_file(
                        item["path"], item["md5"], "resource", item["content"]
                    )
                entry = [item["path"], item["md5"]]
                self.runs.update_one(
                    {"_id": self.run_entry["_id"]}, {"$push": {"resources": entry}}
                )
                self.run_entry["resources"].append(entry)
            else:
                if "file_id" not in item:
                    item["file_id"] = self._put_artifact(item)
                if item["file_id"] is None:  # gone before it could be stored: nothing to list
                    self._pending_files.pop(0)
                    continue
                entry = {"name": item["name"], "file_id": item["file_id"]}
                self.runs.update_one(
                    {"_id": self.run_entry["_id"]}, {"$push": {"artifacts": entry}}
                )
                self.run_entry["artifacts"].append(entry)
            self._pending_files.pop(0)

    def _put_artifact(self, item: dict) -> Any:
        filename = f"artifact://{self.runs.name}/{self.run_entry['_id']}/{item['name']}"
        try:
            with open(item["path"], "rb") as f:
                return self.fs.put(
                    f,
                    filename=filename,
                    metadata=item["metadata"],
                    content_type=item["content_type"],
                )
        except OSError as exc:
            log.error(
                "MongoDB store: artifact %r is lost, %s cannot be read (%s)",
                item["name"],
                item["path"],
                exc.strerror,
            )
            return None

    def _final(self, fields: dict) -> None:
        """Save the end of the run, retrying a lost connection; keep it locally if that fails."""
        pymongo, bson = _import_pymongo()[1], _import_bson()
        with self._lock:
            if self.run_entry is None:
                return
            self.run_entry.update(fields)
            problem: BaseException | None = None
            for attempt in range(_FINAL_TRIES):
                try:
                    self._save(fields)
                    return
                except pymongo.errors.ServerSelectionTimeoutError as exc:
                    problem = exc  # already waited for the server: do not wait again
                    break
                except pymongo.errors.ConnectionFailure as exc:
                    problem = exc
                    time.sleep(0.2 * (attempt + 1))
                except (pymongo.errors.PyMongoError, bson.errors.BSONError) as exc:
                    problem = exc
                    break
            path = self._dump()
            kept = (
                f"; it was kept in {path}" if path else "; pass failure_dir= to keep a local copy"
            )
            raise MongoStoreError(
                f"could not save the end of run {self.run_entry['_id']!r} to {self._where()}: "
                f"{self._scrub(_reason(problem))}{kept}"
            ) from None

    def _dump(self) -> str | None:
        """Write everything known about the run to ``failure_dir``; its path, or ``None``."""
        if self.failure_dir is None:
            return None
        json_util = _import_bson().json_util
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        path = os.path.join(
            self.failure_dir, f"expkit_mongo_fail_{self.run_entry['_id']}_{stamp}.json"
        )
        record = {
            "run": self.run_entry,
            "captured_out": _redact_text(self._beat[1] if self._beat else "", self._secret),
            "unsent_metrics": self._pending_metrics,
            "unsent_files": self._pending_files,
        }
        try:
            os.makedirs(self.failure_dir, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(json_util.dumps(record, indent=2))
        except OSError as exc:
            log.error("MongoDB store: cannot write %s (%s)", path, exc.strerror)
            return None
        return path

    # --- errors ---------------------------------------------------------------------

    def _where(self) -> str:
        where = f"{self.runs.database.name}.{self.runs.name}"
        return f"{where} at {redact_url(self._url)}" if self._url else where

    def _scrub(self, text: str) -> str:
        return _redact_text(text, self._secret)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn pymongo and bson errors into one-line :class:`MongoStoreError`\\ s."""
        pymongo, bson = _import_pymongo()[1], _import_bson()
        try:
            yield
        except pymongo.errors.ConnectionFailure as exc:
            reason = self._scrub(_reason(exc))
            raise MongoStoreError(
                f"cannot reach MongoDB at {self._where()} while {what} ({reason})"
            ) from None
        except (pymongo.errors.PyMongoError, bson.errors.BSONError) as exc:
            reason = self._scrub(_reason(exc))
            raise MongoStoreError(
                f"MongoDB store {self._where()}: {what} failed ({reason})"
            ) from None

    def _attempt(self, send: Callable[[], None], what: str) -> None:
        """Run ``send``; any failure raises, and the core spools the event and retries it."""
        with self._errors(what):
            send()


# --- optional imports -----------------------------------------------------------------


def _import_pymongo() -> tuple[Any, Any]:
    """``(gridfs, pymongo)``, or a usage error saying how to install them."""
    try:
        import gridfs
        import pymongo
    except ImportError:
        raise UsageError("the MongoDB store needs pymongo: pip install 'expkit[mongo]'") from None
    return gridfs, pymongo


def _import_bson() -> Any:
    import bson
    import bson.errors
    import bson.json_util

    return bson


def _connect(url: str | None, **options: Any) -> Any:
    """A client for ``url``, with expkit's time-outs where the URL sets none."""
    _, pymongo = _import_pymongo()
    try:
        return pymongo.MongoClient(url, **{**_defaults_not_in(url), **options})
    except (pymongo.errors.PyMongoError, ValueError, TypeError) as exc:
        raise UsageError(
            f"invalid MongoDB URL {redact_url(url or '')}: "
            f"{_redact_text(_reason(exc), _password(url))}"
        ) from None


def _defaults_not_in(url: str | None) -> dict:
    """:data:`CLIENT_DEFAULTS` minus the options ``url`` sets itself."""
    query = (url or "").partition("?")[2].lower()
    given = {part.partition("=")[0] for part in query.split("&") if part}
    return {k: v for k, v in CLIENT_DEFAULTS.items() if k.lower() not in given}


def _db_name(url: str) -> str:
    """The database a ``mongodb://HOST[:PORT]/DB`` URL names, or :data:`DEFAULT_DB`."""
    from urllib.parse import unquote

    path = split_userinfo(url)[2].partition("?")[0]
    return unquote(path.partition("/")[2]) or DEFAULT_DB


# --- hooks ------------------------------------------------------------------------------


def _claimed(url: str) -> str | None:
    """``url`` with its scheme in lower case (as pymongo needs) if it is MongoDB's, else None."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        return None
    return f"{scheme.lower()}://{rest}"


@hookimpl
def expkit_store_for_url(url: str) -> MongoObserver | None:
    """A :class:`MongoObserver` for ``mongodb://`` and ``mongodb+srv://`` URLs."""
    claimed = _claimed(url)
    return None if claimed is None else MongoObserver(url=claimed, db_name=_db_name(claimed))


@hookimpl
def expkit_reader_for_url(url: str) -> MongoRunReader | None:
    """A :class:`MongoRunReader` for the URLs :func:`expkit_store_for_url` claims."""
    claimed = _claimed(url)
    return None if claimed is None else MongoRunReader(url=claimed, db_name=_db_name(claimed))


@hookimpl
def expkit_store_schemes() -> list[str]:
    """The URL schemes of the MongoDB store."""
    return list(SCHEMES)


class QueuedMongoObserver(MongoObserver):
    """Sacred's ``QueuedMongoObserver``: a :class:`MongoObserver`, since expkit queues every store.

    Sacred needed it to keep a run going while MongoDB is away. expkit delivers the events
    of every store through a guard that retries a failing store during the run and spools
    what it could not write to ``.expkit/spool`` (``expkit sync`` delivers it later), so a
    plain MongoObserver already does that. ``interval`` and ``retry_interval`` are kept as
    attributes; the other arguments are MongoObserver's.
    """

    def __init__(
        self,
        interval: float = 20.0,
        retry_interval: float = 10.0,
        url: str | None = None,
        db_name: str = DEFAULT_DB,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, db_name, **kwargs)
        self.interval = interval
        self.retry_interval = retry_interval


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``MongoObserver`` and ``QueuedMongoObserver`` for ``from expkit.observers import ...``."""
    return {"MongoObserver": MongoObserver, "QueuedMongoObserver": QueuedMongoObserver}.get(name)
