"""The MongoDB store: runs in Sacred's ``MongoObserver`` schema, as Omniboard and Incense read it.

Collections of the database (default ``sacred``)::

    runs                  one document per run, integer ``_id`` (max + 1)
    metrics               one document per (run_id, name): parallel steps/values/timestamps
    fs.files, fs.chunks   GridFS: sources, resources and artifacts
    runs.captured_out     the complete output of runs whose output outgrew the run document

A run document holds Sacred's entries: sources ``[name, file_id]``, resources
``[path, md5]``, artifacts ``{name, file_id}``, and in ``info.metrics`` the links
``{name, id}`` to its metrics documents. Unlike Sacred's observer it never
rewrites a whole document at a heartbeat: each beat ``$set``\\ s only the fields
that changed. The run document keeps the last 256 KiB of the captured output
(the whole text goes to ``<runs>.captured_out``, see :func:`load_captured_out`),
and a ``run.info`` larger than 4 MB moves to a GridFS file (see :func:`load_info`),
so the 16 MB document limit cannot stop a run. Sources and resources are stored
once per (path, md5); the md5 is expkit's own, kept in the GridFS file's
``metadata`` because pymongo 4 no longer computes one. The end of a run that
cannot be saved is written to ``failure_dir``, if given. Passwords in the URL
are shown as ``***`` everywhere (see :func:`expkit.utils.redact_url`), and never stored.

pymongo is imported only when a store is opened.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from expkit.errors import UsageError
from expkit.observers import deprecated_create, utc_datetimes
from expkit.serialize import to_data, utcnow
from expkit.store import (
    FINAL_STATUSES,
    SUMMARY_META_OMITS,
    NotKeptError,
    Storage,
    StoredFile,
    StoreError,
    StoreObserver,
    StoreReader,
    numeric_id,
)
from expkit.utils import file_md5, redact_url, split_userinfo

if TYPE_CHECKING:
    from gridfs import GridFS
    from pymongo.collection import Collection

FORMAT = "MongoObserver-0.7.0"
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
_INFO_FILE_KEY = "expkit_info_file"
_INT64 = (-(2**63), 2**63 - 1)

log = logging.getLogger("expkit")


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


def _reason(exc: BaseException) -> str:
    """The short, first part of a pymongo error message."""
    text = str(exc).split(", full error:")[0]
    text = text.split(", Timeout:")[0].split(" (configured timeouts")[0]
    return text[:300] or type(exc).__name__


# --- reading what outgrew the run document ---------------------------------------------


def load_captured_out(runs: Collection, run_id: Any) -> str:
    """The complete captured output of run ``run_id``, also when its document has only the tail."""
    run = runs.find_one({"_id": run_id}, {"captured_out": 1}) or {}
    return _whole_output(runs, run_id, run.get("captured_out"))


def load_info(runs: Collection, run_id: Any) -> dict:
    """The complete ``info`` of run ``run_id``, also when it was too large for the run document."""
    run = runs.find_one({"_id": run_id}, {"info": 1}) or {}
    return _whole_info(runs, run.get("info"))


def _whole_output(runs: Collection, run_id: Any, tail: Any) -> str:
    segments = runs.database[f"{runs.name}.captured_out"].find(
        {"run_id": run_id}, sort=[("start", 1)]
    )
    text = "".join(s["text"] for s in segments)
    return text or (tail if isinstance(tail, str) else "")


def _whole_info(runs: Collection, info: Any) -> dict:
    info = info if isinstance(info, dict) else {}
    note = info.get(_INFO_FILE_KEY)
    if not isinstance(note, dict):
        return info
    import gridfs
    from bson import json_util

    data = gridfs.GridFS(runs.database).get(note["file_id"]).read()
    return json_util.loads(data.decode("utf-8"))


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


# --- the storage ---------------------------------------------------------------------


class MongoStorage(Storage):
    """Runs in the collections ``runs`` and ``metrics`` of a MongoDB database, files in GridFS.

    ``overwrite=<_id>`` runs into an existing run document instead of a new one;
    ``failure_dir`` receives a JSON copy (``bson.json_util``) of any run whose end
    could not be saved. A digit-string ``_id`` (``--id 7``) is stored as a number:
    Omniboard needs numeric ids.
    """

    capabilities = frozenset({"delete", "edit"})

    def __init__(
        self,
        runs: Collection,
        metrics: Collection,
        fs: GridFS,
        *,
        url: str | None = None,
        client: Any = None,
        overwrite: Any = None,
        failure_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.runs = runs
        self.metrics = metrics
        self.fs = fs
        self.captured_out = runs.database[f"{runs.name}.captured_out"]
        self.url = redact_url(url) if url else ""
        self.overwrite = overwrite
        self.failure_dir = None if failure_dir is None else os.fspath(failure_dir)
        self._client = client  # a connection of its own, closed by close()
        # Replaced literally in what is stored; shorter ones would mangle ordinary text.
        password = _password(url)
        self._secret = password if len(password) >= 4 else ""
        self._lock = threading.RLock()
        self._indexed = False
        self._indexed_output = False
        self._reset()

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        db_name: str | None = None,
        *,
        client: Any = None,
        runs: str = "runs",
        metrics: str = "metrics",
        overwrite: Any = None,
        failure_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> MongoStorage:
        """The store in database ``db_name`` (else the URL's, else ``sacred``) of the server
        at ``url``, or of ``client``; ``options`` go to :class:`pymongo.MongoClient`."""
        gridfs, _ = _import_pymongo()
        if url is not None:
            scheme, sep, rest = url.partition("://")
            url = f"{scheme.lower()}{sep}{rest}"  # pymongo takes the scheme in lower case only
        own = client is None
        if own:
            client = _connect(url, **options)
        db = client[db_name or _db_name(url or "")]
        return cls(
            db[runs],
            db[metrics],
            gridfs.GridFS(db),
            url=url,
            client=client if own else None,
            overwrite=overwrite,
            failure_dir=failure_dir,
        )

    def __repr__(self) -> str:
        return f"MongoStorage({self._where()!r})"

    def _reset(self) -> None:
        """Forget the previous run: a store records every run of its experiment."""
        self._entry: dict | None = None  # the run's document as stored
        self._metric_refs: list[dict] = []  # {name, id} of its metrics documents
        self._staged: dict[str, dict] = {}  # points not sent yet
        self._info_data: Any = None  # the last info converted, with the metric links
        self._info_want: dict = {}  # what the document's info should be
        self._info_file: Any = None  # GridFS id of a too-large info
        self._stale_files: list = []
        self._segments: list[tuple[int, int, int]] = []  # (start, end, hash) in captured_out

    # --- writing ---

    def create(self, doc: dict) -> Any:
        """Insert the run's document (``_id`` max + 1 if none given); a queued run's document
        is replaced when the run starts under its id."""
        queued = doc.get("status") == "QUEUED"
        with self._lock, self._errors("storing the queued run" if queued else "starting the run"):
            if queued and self.overwrite is not None:
                raise UsageError("MongoObserver: a queued run cannot overwrite another run")
            self._reset()
            entry = {"_id": numeric_id(doc["_id"])}
            entry.update((k, self._field(k, v)) for k, v in doc.items() if k != "_id")
            if not queued:
                entry["format"] = FORMAT
                self._ensure_indexes()
            if self.overwrite is None:
                self._insert(entry)
            else:
                entry = self._overwrite(entry)
            self._entry = entry
            return entry["_id"]

    def reopen(self, run_id: Any) -> dict:
        """Go on writing the stored run ``run_id``, from what is stored."""
        run_id = numeric_id(run_id)
        with self._lock, self._errors(f"resuming run {run_id!r}"):
            entry = self.runs.find_one({"_id": run_id})
            if entry is None:
                raise UsageError(f"cannot resume run {run_id!r}: it is not in {self._where()}")
            self._reset()
            info = entry.get("info") if isinstance(entry.get("info"), dict) else {}
            entry["info"] = dict(info)
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
            entry.setdefault("resources", [])
            entry.setdefault("artifacts", [])
            self._entry = entry
            return self._whole_doc(entry)

    def update(self, doc: dict, changed: frozenset[str]) -> None:
        """Send new points and files, then one ``$set`` of what changed since it was stored."""
        pymongo, bson = _import_pymongo()[1], _import_bson()
        with self._lock:
            if self._entry is None or doc["_id"] != self._entry["_id"]:
                self._edit(doc, changed)
                return
            final = "status" in changed and doc.get("status") in FINAL_STATUSES
            try:
                self._save(doc, changed, final)
            except (pymongo.errors.PyMongoError, bson.errors.BSONError) as exc:
                if not final:
                    raise self._error(exc, "saving the run") from None
                path = self._dump(doc, changed)
                kept = f"; it was kept in {path}" if path else "; pass failure_dir= to keep a copy"
                raise StoreError(
                    f"could not save the end of run {self._entry['_id']!r} to {self._where()}: "
                    f"{self._scrub(_reason(exc))}{kept}"
                ) from None

    def _edit(self, doc: dict, changed: frozenset[str]) -> None:
        """Change a stored run other than the one being written."""
        with self._errors(f"changing run {doc['_id']!r}"):
            sets = {key: self._field(key, doc.get(key)) for key in changed}
            done = self.runs.update_one({"_id": doc["_id"]}, {"$set": sets})
        if done.matched_count == 0:
            raise KeyError(f"no run {doc['_id']!r} in {self._where()}")

    def put_file(self, kind: str, file: StoredFile, path: str) -> Any:
        """Upload the file to GridFS; its ref is the GridFS id. Sources (named by their path)
        and resources (by their original path) are stored once per name and md5; an artifact
        is ``artifact://<runs>/<id>/<name>`` with its metadata and content type."""
        with self._lock, self._errors(f"storing the {kind} {file.name!r}"):
            try:
                if kind != "artifact":
                    return self._put_once(path if kind == "source" else file.name, path, file.md5)
                content_type = file.content_type
                if content_type is None:
                    import mimetypes  # reads the system's type tables: only when needed

                    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
                assert self._entry is not None
                with open(path, "rb") as f:
                    return self.fs.put(
                        f,
                        filename=f"artifact://{self.runs.name}/{self._entry['_id']}/{file.name}",
                        metadata=None if file.metadata is None else self._bson(file.metadata),
                        content_type=content_type,
                    )
            except OSError as exc:
                raise StoreError(f"cannot store the {kind} {path}: {exc.strerror}") from None

    def _put_once(self, filename: str, path: str, md5: str | None) -> Any:
        if md5 is not None:
            found = self.fs.find_one({"filename": filename, "metadata.md5": md5})
            if found is not None:
                return found._id
        actual = file_md5(path)
        if actual != md5:  # changed since it was recorded: store what is there now
            found = self.fs.find_one({"filename": filename, "metadata.md5": actual})
            if found is not None:
                return found._id
        with open(path, "rb") as f:
            return self.fs.put(f, filename=filename, metadata={"md5": actual})

    def append_metrics(self, run_id: Any, columns: dict[str, dict]) -> None:
        """Keep the points (times as BSON dates) for the :meth:`update` that follows."""
        with self._lock:
            for name, column in columns.items():
                staged = self._staged.setdefault(
                    name, {"steps": [], "values": [], "timestamps": []}
                )
                staged["steps"] += self._bson(list(column["steps"]))
                staged["values"] += self._bson(list(column["values"]))
                staged["timestamps"] += utc_datetimes(column["timestamps"])

    def _field(self, key: str, value: Any) -> Any:
        """A field of the layer's document as the run document holds it."""
        if key == "experiment" and isinstance(value, dict):
            experiment = self._bson({k: v for k, v in value.items() if k != "sources"})
            experiment["sources"] = [[f.name, f.ref] for f in value.get("sources") or ()]
            return experiment
        if key == "resources":
            return [[f.name, f.md5] for f in value or ()]
        if key == "artifacts":
            return [{"name": f.name, "file_id": f.ref} for f in value or ()]
        if key == "captured_out":
            return self._tail(value or "")
        return self._bson(value)

    def _bson(self, obj: Any) -> Any:
        return _to_bson(obj, self._secret)

    def _ensure_indexes(self) -> None:
        if not self._indexed:
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
            raise UsageError(
                f"a run with _id {entry['_id']!r} already exists in {self._where()}: "
                "choose another id"
            )
        raise StoreError(f"no free run _id after {_MAX_ID_TRIES} tries in {self._where()}")

    def _overwrite(self, entry: dict) -> dict:
        """Reuse the document ``overwrite`` names: keep its other fields, drop its old outcome."""
        _id = numeric_id(self.overwrite)
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

    def _save(self, doc: dict, changed: frozenset[str], final: bool) -> None:
        """Send the points kept, then one update with the fields that differ from the stored."""
        assert self._entry is not None
        self._send_metrics()
        sets: dict = {}
        unsets: dict = {}
        for key in changed - {"info"}:
            if key == "captured_out":
                self._sync_output(doc.get(key) or "", sets)
                continue
            value = self._field(key, doc.get(key))
            if final or key not in self._entry or value != self._entry[key]:
                sets[key] = value
        # Also when the info is as it was: it links the metrics documents made since.
        self._diff_info(doc.get("info") or {}, sets, unsets)
        if not sets and not unsets:
            return
        update = {"$set": sets}
        if unsets:
            update["$unset"] = unsets
        done = self.runs.update_one({"_id": self._entry["_id"]}, update)
        self._commit(sets, unsets)
        if done.matched_count == 0:  # the document was deleted under us: store it whole again
            self.runs.replace_one({"_id": self._entry["_id"]}, self._entry, upsert=True)
        for file_id in self._stale_files:
            self.fs.delete(file_id)
        self._stale_files.clear()

    def _commit(self, sets: dict, unsets: dict) -> None:
        """Record what the stored document now holds."""
        assert self._entry is not None
        info = self._entry.setdefault("info", {})
        for key, value in sets.items():
            if key.startswith("info."):
                info[key[5:]] = value
            elif key == "info":
                # A copy: later per-key commits must not change what was sent.
                info = self._entry["info"] = dict(value)
            else:
                self._entry[key] = value
        for key in unsets:
            info.pop(key[5:], None)

    def _diff_info(self, info: dict, sets: dict, unsets: dict) -> None:
        assert self._entry is not None
        data = self._bson(info)
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
        want, have = self._info_want, self._entry.get("info") or {}
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
        assert self._entry is not None
        json_util = _import_bson().json_util
        if self._info_file is not None:
            self._stale_files.append(self._info_file)
        self._info_file = self.fs.put(
            json_util.dumps(data).encode("utf-8"),
            filename=f"info://{self.runs.name}/{self._entry['_id']}",
            content_type="application/json",
            metadata={"run_id": self._entry["_id"]},
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
        assert self._entry is not None
        if self._segments or len(text) > TAIL_CHARS:
            self._sync_segments(text)
        tail = self._tail(text)
        if tail != self._entry.get("captured_out"):
            sets["captured_out"] = tail

    def _sync_segments(self, text: str) -> None:
        assert self._entry is not None
        run_id = self._entry["_id"]
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
                {"run_id": run_id, "start": pos, "text": self._scrub(piece)}
            )
            self._segments.append((pos, pos + len(piece), hash(piece)))
            pos += len(piece)
        if not self._indexed_output:
            self.captured_out.create_index([("run_id", 1), ("start", 1)])
            self._indexed_output = True

    def _tail(self, text: str) -> str:
        if len(text) <= TAIL_CHARS:
            return self._scrub(text)
        cut = len(text) - TAIL_CHARS
        newline = text.find("\n", cut, cut + 1024)
        if newline >= 0:
            cut = newline + 1
        note = (
            f"[expkit: the first {cut} characters of this output are in the collection "
            f"'{self.captured_out.name}']\n"
        )
        return note + self._scrub(text[cut:])

    def _send_metrics(self) -> None:
        assert self._entry is not None
        run_id = self._entry["_id"]
        for name in list(self._staged):
            points = self._staged[name]
            push = {key: {"$each": values} for key, values in points.items()}
            query = {"run_id": run_id, "name": name}
            done = self.metrics.update_one(query, {"$push": push}, upsert=True)
            del self._staged[name]
            if all(ref["name"] != name for ref in self._metric_refs):
                metric_id = done.upserted_id
                if metric_id is None:  # created by an earlier attempt whose answer was lost
                    metric_id = self.metrics.find_one(query, {"_id": 1})["_id"]
                self._metric_refs.append({"name": name, "id": str(metric_id)})

    def _dump(self, doc: dict, changed: frozenset[str]) -> str | None:
        """Write everything known about the run to ``failure_dir``; its path, or ``None``."""
        if self.failure_dir is None or self._entry is None:
            return None
        json_util = _import_bson().json_util
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        path = os.path.join(
            self.failure_dir, f"expkit_mongo_fail_{self._entry['_id']}_{stamp}.json"
        )
        record = {
            "run": {**self._entry, **{k: self._field(k, doc.get(k)) for k in changed}},
            "captured_out": self._scrub(doc.get("captured_out") or ""),
            "unsent_metrics": self._staged,
        }
        try:
            os.makedirs(self.failure_dir, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(json_util.dumps(record, indent=2))
        except OSError as exc:
            log.error("MongoDB store: cannot write %s (%s)", path, exc.strerror)
            return None
        return path

    # --- reading ---

    def summaries(self) -> list[dict]:
        """Every run's document but its output, info and host, in id order."""
        with self._errors("listing runs"):
            left_out = ["captured_out", "info", "host", *(f"meta.{k}" for k in SUMMARY_META_OMITS)]
            found = self.runs.find({}, dict.fromkeys(left_out, 0), sort=[("_id", 1)])
            return [self._doc(entry) for entry in found]

    def load(self, run_id: Any) -> dict:
        """The run's document with its whole output and info."""
        with self._errors(f"reading run {run_id!r}"):
            entry = self.runs.find_one({"_id": run_id})
            if entry is None:
                raise KeyError(f"no run {run_id!r} in {self._where()}")
            return self._whole_doc(entry)

    def load_metrics(self, run_id: Any) -> dict[str, dict]:
        """The run's documents of the metrics collection, by name."""
        with self._errors(f"reading the metrics of run {run_id!r}"):
            return {
                str(m.get("name")): {
                    "steps": list(m.get("steps") or ()),
                    "values": list(m.get("values") or ()),
                    "timestamps": list(m.get("timestamps") or ()),
                }
                for m in self.metrics.find({"run_id": run_id})
            }

    def read_file(self, run_id: Any, kind: str, file: StoredFile) -> bytes:
        """The file's content from GridFS."""
        gridfs = _import_pymongo()[0]
        with self._errors(f"reading the {kind} {file.name!r} of run {run_id!r}"):
            file_id = file.ref
            if kind == "resource":
                # Kept once per path and md5: in metadata by expkit, by GridFS for Sacred.
                found = self.fs.find_one({"filename": file.name, "metadata.md5": file.md5})
                found = found or self.fs.find_one({"filename": file.name, "md5": file.md5})
                file_id = found._id if found else None
            if file_id is None:
                raise NotKeptError(f"{file.name!r} is recorded in {self._where()} but not stored")
            try:
                return self.fs.get(file_id).read()
            except gridfs.errors.NoFile:
                raise StoreError(
                    f"{file.name!r} is recorded in {self._where()} but GridFS has no file {file_id}"
                ) from None

    def delete(self, run_id: Any) -> None:
        """Remove the run, its metrics, output pieces, artifacts and large info.

        Sources and resources stay: other runs share them (they are stored once per path and md5).
        """
        with self._errors(f"deleting run {run_id!r}"):
            entry = self.runs.find_one({"_id": run_id}, {"artifacts": 1, "info": 1}) or {}
            files = [a.get("file_id") for a in entry.get("artifacts") or () if isinstance(a, dict)]
            note = (entry.get("info") or {}).get(_INFO_FILE_KEY)
            if isinstance(note, dict):
                files.append(note.get("file_id"))
            self.metrics.delete_many({"run_id": run_id})
            self.captured_out.delete_many({"run_id": run_id})
            for file_id in files:
                if file_id is not None:
                    self.fs.delete(file_id)
            # The run document goes last: a deletion cut short can be run again.
            self.runs.delete_one({"_id": run_id})

    def _whole_doc(self, entry: dict) -> dict:
        """:meth:`_doc` with the whole output and info, wherever they are kept."""
        doc = self._doc(entry)
        doc["captured_out"] = _whole_output(self.runs, entry["_id"], entry.get("captured_out"))
        doc["info"] = _without_metric_refs(_whole_info(self.runs, entry.get("info")))
        experiment = doc.get("experiment")
        if isinstance(experiment, dict):
            # The run names each source by its GridFS id; the md5 that `rerun` checks the copy
            # against is kept with the file (by expkit in metadata, by Sacred's GridFS as md5).
            md5s = self._gridfs_md5s([s.ref for s in experiment["sources"] if s.ref is not None])
            experiment["sources"] = [
                attrs.evolve(source, md5=md5s.get(source.ref)) for source in experiment["sources"]
            ]
        return doc

    def _gridfs_md5s(self, file_ids: list[Any]) -> dict[Any, str]:
        """``{GridFS id: md5}`` of the files, in one query that reads no chunk."""
        found = {}
        for file in self.fs.find({"_id": {"$in": file_ids}}) if file_ids else ():
            md5 = (file.metadata or {}).get("md5") or file.md5
            if isinstance(md5, str):
                found[file._id] = md5
        return found

    def _doc(self, entry: dict) -> dict:
        """A run document as the layer's: file entries as stored files."""
        doc = dict(entry)
        experiment = entry.get("experiment")
        if isinstance(experiment, dict):
            sources = experiment.get("sources")
            doc["experiment"] = {
                **experiment,
                "sources": [
                    StoredFile(str(s[0]), None, s[1] if len(s) > 1 else None)
                    for s in (sources if isinstance(sources, list) else ())
                    if isinstance(s, list) and s
                ],
            }
        if isinstance(entry.get("resources"), list):
            # Found by name and md5 when read: the ref is the GridFS file's name.
            doc["resources"] = [
                StoredFile(str(r[0]), str(r[1]) if len(r) > 1 else None, str(r[0]))
                for r in entry["resources"]
                if isinstance(r, list) and r
            ]
        if isinstance(entry.get("artifacts"), list):
            doc["artifacts"] = [
                StoredFile(str(a["name"]), None, a.get("file_id"))
                for a in entry["artifacts"]
                if isinstance(a, dict) and "name" in a
            ]
        return doc

    # --- the connection ---

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers within ``timeout`` seconds."""
        pymongo = _import_pymongo()[1]
        try:
            with pymongo.timeout(timeout):
                self.runs.database.client.admin.command("ping")
        except pymongo.errors.PyMongoError:
            return False
        return True

    def close(self) -> None:
        """Close the connection this store opened (a ``client`` passed in stays open)."""
        if self._client is not None:
            self._client.close()

    def _where(self) -> str:
        where = f"{self.runs.database.name}.{self.runs.name}"
        return f"{where} at {self.url}" if self.url else where

    def _scrub(self, text: str) -> str:
        return _redact_text(text, self._secret)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn pymongo and bson errors into one-line :class:`~expkit.store.StoreError`\\ s."""
        pymongo, bson = _import_pymongo()[1], _import_bson()
        try:
            yield
        except (pymongo.errors.PyMongoError, bson.errors.BSONError) as exc:
            raise self._error(exc, what) from None

    def _error(self, exc: BaseException, what: str) -> StoreError:
        reason = self._scrub(_reason(exc))
        if isinstance(exc, _import_pymongo()[1].errors.ConnectionFailure):
            return StoreError(f"cannot reach MongoDB at {self._where()}: {what} failed ({reason})")
        return StoreError(f"MongoDB store {self._where()}: {what} failed ({reason})")


# --- Sacred's classes -------------------------------------------------------------------


class MongoObserver(StoreObserver):
    """Store runs in MongoDB with Sacred's schema (Sacred's ``MongoObserver``).

    ``kwargs`` go to :class:`pymongo.MongoClient`; unless they or the URL say
    otherwise, server selection and connection time out after 5 seconds.
    ``collection`` is deprecated in favour of ``collection_prefix`` (runs go to
    ``<prefix>_runs``, metrics to ``<prefix>_metrics``). See :class:`MongoStorage`
    for ``overwrite`` and ``failure_dir``.
    """

    VERSION = FORMAT

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
        _import_pymongo()
        if client is not None and url is not None:
            raise UsageError("MongoObserver: give either url or client, not both")
        if collection != "runs":
            if collection_prefix:
                raise UsageError("MongoObserver: give collection_prefix or collection, not both")
            runs, metrics = collection, "metrics"
        elif collection_prefix:
            runs, metrics = f"{collection_prefix}_runs", f"{collection_prefix}_metrics"
        else:
            runs, metrics = "runs", "metrics"
        if runs in RESERVED_COLLECTIONS:
            raise UsageError(f"MongoObserver: the collection name {runs!r} is reserved")
        if collection != "runs":
            warnings.warn(
                "MongoObserver(collection=...) is deprecated; use collection_prefix",
                DeprecationWarning,
                stacklevel=2,
            )
        storage = MongoStorage.connect(
            url,
            db_name,
            client=client,
            runs=runs,
            metrics=metrics,
            overwrite=overwrite,
            failure_dir=failure_dir,
            **kwargs,
        )
        super().__init__(storage, priority=priority)

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
        if metrics_collection is None:
            metrics_collection = runs_collection.database["metrics"]
        self = cls.__new__(cls)
        storage = MongoStorage(
            runs_collection, metrics_collection, fs, overwrite=overwrite, failure_dir=failure_dir
        )
        StoreObserver.__init__(self, storage, priority=priority)
        return self

    def __repr__(self) -> str:
        runs = self.storage.runs
        where = self.storage.url or runs.database.name
        return f"MongoObserver({where!r}, db={runs.database.name!r}, runs={runs.name!r})"

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers within ``timeout`` seconds."""
        return self.storage.ping(timeout)

    url = property(lambda self: self.storage.url or None, doc="The URL, its password ``***``.")
    runs = property(lambda self: self.storage.runs, doc="The runs collection.")
    metrics = property(lambda self: self.storage.metrics, doc="The metrics collection.")
    fs = property(lambda self: self.storage.fs, doc="GridFS: sources, resources, artifacts.")
    captured_out = property(lambda self: self.storage.captured_out, doc="Output pieces.")
    overwrite = property(lambda self: self.storage.overwrite, doc="The ``_id`` to run into.")
    failure_dir = property(lambda self: self.storage.failure_dir, doc="Where failed ends go.")


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


class MongoRunReader(StoreReader):
    """The runs of a MongoDB store as :class:`~expkit.records.RunRecord`\\ s; Sacred's
    ``MongoObserver`` runs read alike."""

    def __init__(
        self,
        url: str | None = None,
        db_name: str = DEFAULT_DB,
        *,
        client: Any = None,
        runs: str = "runs",
        metrics: str = "metrics",
    ) -> None:
        storage = MongoStorage.connect(url, db_name, client=client, runs=runs, metrics=metrics)
        super().__init__(storage, url=storage.url or f"mongodb://{db_name}")

    runs = property(lambda self: self.storage.runs, doc="The runs collection.")
    metrics = property(lambda self: self.storage.metrics, doc="The metrics collection.")


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
