"""The store layer: Sacred's observer events and the reading of runs, written once.

A store supplies a :class:`Storage`: a handful of primitives over its medium (a
folder, a JSON file, a database). :class:`StoreObserver` turns a run's events into
calls of those primitives, and :class:`StoreReader` turns what they return into
:class:`~expkit.records.RunRecord`\\ s, so that the logic of recording and reading a
run (its document, resume, de-duplication of files, metrics buffering, status
changes, damaged runs) lives here and nowhere else. A plugin declares a store with
a :class:`StoreBackend` from the ``expkit_store_backends`` hook.

Between the layer and a storage a run travels as one document, the shape of
Sacred's MongoDB run document::

    _id, experiment{name, base_dir, mainfile, sources, dependencies, repositories},
    format, command, host, start_time, config, meta, status, resources, artifacts,
    captured_out, info, heartbeat, result, stop_time, fail_trace

with times as naive UTC datetimes and every stored file (``experiment.sources``,
``resources``, ``artifacts``) a :class:`StoredFile`. Each storage writes it in its
own format (Sacred's, for each of Sacred's stores) and gives it back the same way.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from expkit.errors import ExpkitError, UsageError
from expkit.observers import RunObserver, utc_datetimes
from expkit.records import RunRecord, edited_meta
from expkit.serialize import parse_time, to_data
from expkit.utils import file_md5, redact_url, split_userinfo

log = logging.getLogger("expkit")

# PRUNED: a trial of ``expkit tune`` its pruner stopped early.
FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT", "PRUNED"})
# Fields a run's summary holds: what listing and filtering need, cheap to read for many runs.
SUMMARY_FIELDS = ("command", "start_time", "stop_time", "heartbeat", "result", "meta", "config")


# Left out of a summary's meta: the command-line options and config docs, most of its text,
# which no listing shows (a run read whole has them).
SUMMARY_META_OMITS = ("options", "config_docs")


class StoreError(ExpkitError):
    """A store cannot be read or written; the message says which store and why."""


class NoStoreError(UsageError):
    """Nothing is stored at a store's URL yet: no folder, no database file. A store that is
    written makes it; reading says so, and what reads many may take it as no runs."""


class NotKeptError(StoreError):
    """A file the run recorded (name and md5) whose content its store never kept."""


@attrs.frozen
class StoredFile:
    """A file a store keeps for a run: a source, a resource or an artifact.

    ``name`` is the source's name relative to the experiment's base dir, the
    resource's original path, or the artifact's name; ``ref`` is where the store
    keeps the content (a path, a database id: the storage's own business).
    """

    name: str
    md5: str | None
    ref: Any
    metadata: dict | None = None
    content_type: str | None = None


@attrs.frozen
class Query:
    """What a listing asks for, for stores that select runs themselves (capability ``query``).

    ``where`` holds parsed filters (:class:`expkit.runs.Filter`). ``sort`` is a run field
    or config key, ``None`` for id order; ``limit`` applies after sorting.
    """

    experiment: str | None = None  # a name or a glob pattern
    statuses: frozenset[str] | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    where: tuple[Any, ...] = ()
    sort: str | None = None
    descending: bool = False
    limit: int | None = None


@attrs.frozen
class StoreBackend:
    """A kind of store: the URL schemes it claims and how to open a store of it.

    ``open(url)`` returns the :class:`Storage` for ``url``; it is called only once a
    URL is claimed, so a backend imports its heavy modules there and not before.
    The scheme ``""`` claims plain paths. ``redact`` hides secrets in the URL.
    """

    name: str
    schemes: tuple[str, ...]
    open: Callable[[str], Storage]
    redact: Callable[[str], str] = redact_url

    def claims(self, url: str) -> bool:
        """Whether ``url``'s scheme is one of this backend's (``sqlite+pysqlite`` is ``sqlite``)."""
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        return scheme in self.schemes or scheme.partition("+")[0] in self.schemes


class Storage:
    """The primitives a store supplies; :class:`StoreObserver` and :class:`StoreReader` do the rest.

    Writing (one run at a time, in the order of its events): :meth:`create`,
    :meth:`reopen`, :meth:`update`, :meth:`put_file`, :meth:`append_metrics`.
    Reading: :meth:`summaries`, :meth:`load`, :meth:`load_metrics`,
    :meth:`read_file`, and, where :attr:`capabilities` says so, :meth:`delete`
    and editing through :meth:`update`. A primitive that fails raises (any
    exception; :class:`StoreError` for a clear message): the core keeps the event
    and retries it, nothing is lost.
    """

    url: str = ""
    #: What the store can do beyond recording and reading: ``"delete"``, ``"edit"``.
    capabilities: frozenset[str] = frozenset()

    def create(self, doc: dict) -> Any:
        """Store a new run's document (``doc["_id"]`` is ``None`` or a wanted id); return its id."""
        raise NotImplementedError

    def reopen(self, run_id: Any) -> dict:
        """Go on writing the stored run ``run_id``; return its document as stored."""
        raise NotImplementedError

    def update(self, doc: dict, changed: frozenset[str]) -> None:
        """Save the fields ``changed`` (top-level keys) of the run document ``doc``."""
        raise NotImplementedError

    def put_file(self, kind: str, file: StoredFile, path: str) -> Any:
        """Keep the file ``path`` as the run's ``kind`` (``"source"``, ``"resource"``,
        ``"artifact"``) described by ``file`` (its ``ref`` still ``None``); return its ref.
        ``file.md5`` is ``None`` for artifacts, which alone have metadata and a content type."""
        raise NotImplementedError

    def append_metrics(self, run_id: Any, columns: dict[str, dict]) -> None:
        """Add points ``{name: {"steps", "values", "timestamps"}}`` (epoch seconds) to a run.

        An :meth:`update` always follows in the same write (with no ``changed`` fields
        when only metrics are new), so a storage may keep the points and write both at once.
        """
        raise NotImplementedError

    def summaries(self) -> Iterable[dict]:
        """Every run's document without ``captured_out``, ``info`` and host, in id order
        (files and the meta keys of :data:`SUMMARY_META_OMITS` may be left out; the names
        of artifacts given are listed)."""
        raise NotImplementedError

    def select(self, query: Query) -> tuple[list[dict], bool]:
        """The summaries ``query`` asks for, and whether they are exactly those.

        ``True``: every condition, the order and the limit were applied. ``False``: the
        summaries are candidates (a superset, in id order) that the core filters, sorts
        and cuts. Only stores with the ``query`` capability are asked.
        """
        raise NotImplementedError

    def load(self, run_id: Any) -> dict:
        """The whole document of run ``run_id``; :class:`KeyError` when there is none."""
        raise NotImplementedError

    def load_metrics(self, run_id: Any) -> dict[str, dict]:
        """Every metric point of a run: ``{name: {"steps", "values", "timestamps"}}``."""
        raise NotImplementedError

    def read_file(self, run_id: Any, kind: str, file: StoredFile) -> bytes:
        """The content of one of the run's stored files."""
        raise NotImplementedError

    def delete(self, run_id: Any) -> None:
        """Remove a run (files other runs share stay)."""
        raise NotImplementedError

    def ping(self) -> bool:
        """Whether the store answers now (a quick check before a last retry)."""
        return True

    def stamp(self) -> Any:
        """A cheap value that changes whenever a run starts, ends, is edited or deleted
        (a running run's heartbeat need not change it); ``None``: this store cannot say."""
        return None

    def close(self) -> None:
        """Let go of connections and files."""


def doc_to_data(doc: dict) -> dict:
    """The run document as plain JSON data: stored files as dicts, times as ISO text.

    For stores that keep the document as JSON; :func:`doc_from_data` reverses it.
    """
    out = to_data({k: v for k, v in doc.items() if k not in _FILE_LISTS and k != "experiment"})
    experiment = dict(doc.get("experiment") or {})
    sources = experiment.pop("sources", [])
    out["experiment"] = {**to_data(experiment), "sources": [_file_data(f) for f in sources]}
    for key in _FILE_LISTS:
        if key in doc:
            out[key] = [_file_data(f) for f in doc[key]]
    return out


def doc_from_data(data: dict) -> dict:
    """The run document :func:`doc_to_data` made; times stay ISO text (readers parse it)."""
    doc = dict(data)
    experiment = dict(_dict(data.get("experiment")))
    experiment["sources"] = _file_list(experiment.get("sources"))
    doc["experiment"] = experiment
    for key in _FILE_LISTS:
        if key in data:
            doc[key] = _file_list(data[key])
    return doc


_FILE_LISTS = ("resources", "artifacts")


def _file_data(file: StoredFile) -> dict:
    return to_data(attrs.asdict(file, recurse=False))


def _file_list(value: Any) -> list[StoredFile]:
    if not isinstance(value, list):
        return []
    files = []
    for item in value:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            fields = {f.name: item.get(f.name) for f in attrs.fields(StoredFile)}
            files.append(StoredFile(**fields))
    return files


# --- writing ------------------------------------------------------------------------------


class StoreObserver(RunObserver):
    """Records runs into a :class:`Storage`: Sacred's observer events, once for every store.

    ``write_interval`` is the least number of seconds between two writes caused by
    heartbeats, metrics, artifacts or resources (changes in between are kept and
    written together); a run's start and end are always written at once.
    """

    def __init__(self, storage: Storage, priority: int = 0, write_interval: float = 0.0) -> None:
        if not write_interval >= 0:
            raise UsageError(f"write_interval must be >= 0 seconds, got {write_interval!r}")
        self.storage = storage
        self.priority = priority
        self.write_interval = float(write_interval)
        self._lock = threading.RLock()
        self._doc: dict | None = None
        self._changed: set[str] = set()
        self._pending: dict[str, dict[str, list]] | None = None  # metrics not written yet
        self._last_write = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.storage.url)!r})"

    @property
    def name(self) -> str:
        """The store's URL, its password hidden: what messages about it call it."""
        return redact_url(self.storage.url) or type(self.storage).__name__

    @property
    def run_entry(self) -> dict | None:
        """The document of the run being recorded (Sacred's name for it)."""
        return self._doc

    def ping(self) -> bool:
        """Whether the store answers now."""
        return self.storage.ping()

    def close(self) -> None:
        """Let go of the store's connections and files."""
        self.storage.close()

    # --- Sacred's events ---

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
        """Store a queued run (with its sources, so that it can run later); return its id."""
        meta = {**(meta_info or {}), "queue_time": queue_time}
        return self._create(
            _id, ex_info, {"command": command, "host": dict(host_info or {}), "config": config,
                           "meta": meta, "status": "QUEUED"},
        )  # fmt: skip

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
        """Store the started run's document and sources; return its id."""
        return self._create(
            _id,
            ex_info,
            {
                "command": command,
                "host": dict(host_info or {}),
                "start_time": start_time,
                "config": config,
                "meta": dict(meta_info or {}),
                "status": "RUNNING",
                "resources": [],
                "artifacts": [],
                "captured_out": "",
                "info": {},
                "heartbeat": None,
            },
        )

    def heartbeat_event(
        self, info: dict, captured_out: str, beat_time: datetime.datetime, result: Any
    ) -> None:
        """Save what changed since the last beat: output, info, result, the beat's time."""
        with self._lock:
            doc = self._require("heartbeat_event")
            changed = {"heartbeat"}
            doc["heartbeat"] = beat_time
            news = (("info", info or {}), ("captured_out", captured_out or ""), ("result", result))
            for key, value in news:
                if key not in doc or not _same(doc[key], value):
                    doc[key] = value
                    changed.add(key)
            self._save(changed)

    def completed_event(self, stop_time: datetime.datetime, result: Any) -> None:
        """The run ended with ``result``: COMPLETED."""
        self._end(stop_time=stop_time, result=result, status="COMPLETED")

    def interrupted_event(self, interrupt_time: datetime.datetime, status: str) -> None:
        """The run was interrupted: ``status`` is INTERRUPTED, TIMEOUT or the interrupt's own."""
        self._end(stop_time=interrupt_time, status=status)

    def failed_event(self, fail_time: datetime.datetime, fail_trace: list[str] | str) -> None:
        """The run raised: FAILED, with its traceback (lines, or one text of them)."""
        if isinstance(fail_trace, str):  # Sacred's observers took a text as well
            fail_trace = fail_trace.splitlines(keepends=True)
        self._end(stop_time=fail_time, status="FAILED", fail_trace=list(fail_trace or []))

    def resource_event(self, filename: str) -> None:
        """Keep the input file ``filename`` (once per path and content)."""
        path = os.path.abspath(filename)
        self._add_resource(path, path)

    def copied_resource_event(self, filename: str, original: str) -> None:
        """Keep ``filename`` as the input file the run read at ``original``."""
        self._add_resource(os.path.abspath(filename), str(original))

    def artifact_event(
        self,
        name: str,
        filename: str,
        metadata: dict | None = None,
        content_type: str | None = None,
    ) -> None:
        """Keep the file ``filename`` as the artifact ``name``; a later one of that name wins."""
        _check_readable(filename, "artifact")
        name = str(name) if name else os.path.basename(filename)
        with self._lock:
            doc = self._require("artifact_event")
            stored = StoredFile(name, None, None, metadata, content_type)
            stored = self._keep("artifact", stored, os.path.abspath(filename))
            artifacts = doc.setdefault("artifacts", [])
            same = [i for i, a in enumerate(artifacts) if a.name == name]
            if same:
                artifacts[same[0]] = stored  # replaced where it was listed
            else:
                artifacts.append(stored)
            self._save({"artifacts"})

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        """New points in Sacred's shape (a datetime per point)."""
        self.log_metric_columns(
            {
                name: {
                    "steps": metric["steps"],
                    "values": metric["values"],
                    "timestamps": [_epoch(t) for t in metric["timestamps"]],
                }
                for name, metric in metrics_by_name.items()
            },
            info,
        )

    def log_metric_columns(self, columns: dict, info: dict) -> None:
        """New points as columns with epoch-second times; written with the next write."""
        with self._lock:
            self._require("log_metrics")
            if self._pending is None:
                self._pending = {}
            for name, column in columns.items():
                pending = self._pending.setdefault(
                    str(name), {"steps": [], "values": [], "timestamps": []}
                )
                for key in ("steps", "values", "timestamps"):
                    pending[key].extend(column[key])
            self._save(set())

    def join(self) -> None:
        """Write whatever is still only in memory."""
        with self._lock:
            if self._doc is not None and (self._changed or self._pending is not None):
                self._write()

    def resume(self, _id: Any) -> None:
        """Go on recording the stored run ``_id`` (its spooled events are being replayed)."""
        with self._lock:
            self._reset()
            self._doc = self.storage.reopen(_id)

    # --- the document ---

    def _reset(self) -> None:
        # One observer records every run of its experiment, one after the other.
        self._doc = None
        self._changed = set()
        self._pending = None

    def _create(self, _id: Any, ex_info: dict, fields: dict) -> Any:
        with self._lock:
            self._reset()
            doc = {"_id": _id, "experiment": self._experiment(ex_info), **fields}
            doc["_id"] = self.storage.create(doc)
            self._doc = doc
            self._last_write = time.monotonic()
            return doc["_id"]

    def _experiment(self, ex_info: dict) -> dict:
        # A copy: the same ex_info goes to the other stores.
        experiment = dict(ex_info or {})
        base = experiment.get("base_dir") or ""
        sources = []
        for name, md5 in _source_pairs(experiment.get("sources") or ()):
            path = os.path.abspath(os.path.join(base, name))
            source = StoredFile(name, md5, None)
            if os.path.isfile(path):
                source = self._keep("source", source, path)
            else:
                log.warning("source %s is gone: recorded by name and md5 only", path)
            sources.append(source)
        experiment["sources"] = sources
        experiment["dependencies"] = [str(d) for d in experiment.get("dependencies") or ()]
        experiment["repositories"] = [_repository(r) for r in experiment.get("repositories") or ()]
        return experiment

    def _add_resource(self, path: str, original: str) -> None:
        _check_readable(path, "resource")
        try:
            md5 = file_md5(path)
        except OSError as exc:
            raise UsageError(f"resource {path}: cannot read it ({exc.strerror})") from None
        with self._lock:
            doc = self._require("resource_event")
            resources = doc.setdefault("resources", [])
            if any(r.name == original and r.md5 == md5 for r in resources):
                return
            resources.append(self._keep("resource", StoredFile(original, md5, None), path))
            self._save({"resources"})

    def _keep(self, kind: str, file: StoredFile, path: str) -> StoredFile:
        return attrs.evolve(file, ref=self.storage.put_file(kind, file, path))

    def _end(self, **fields: Any) -> None:
        with self._lock:
            self._require("the end of the run").update(fields)
            self._changed.update(fields)
            self._write()

    def _save(self, changed: set[str]) -> None:
        self._changed |= changed
        if time.monotonic() - self._last_write >= self.write_interval:
            self._write()

    def _write(self) -> None:
        doc = self._require("a write")
        # Metrics first: a store may link them from the document.
        metrics = self._pending is not None
        if metrics:
            pending, self._pending = self._pending, None
            try:
                self.storage.append_metrics(doc["_id"], pending)
            except BaseException:
                self._pending = _joined(pending, self._pending or {})
                raise
        if self._changed or metrics:
            changed = frozenset(self._changed)
            self.storage.update(doc, changed)
            self._changed -= changed
        self._last_write = time.monotonic()

    def _require(self, event: str) -> dict:
        if self._doc is None:
            raise StoreError(f"{self!r} got {event} before any run started")
        return self._doc


def _same(old: Any, new: Any) -> bool:
    """Whether ``new`` is known to equal ``old`` (numpy arrays and the like are never)."""
    if old is new:
        # The caller's own dict or list again: it may have been changed in place.
        return not isinstance(old, (dict, list))
    try:
        return type(old) is type(new) and bool(old == new)
    except Exception:
        return False


def _source_pairs(sources: Iterable[Any]) -> Iterable[tuple[str, str | None]]:
    for source in sources:
        if isinstance(source, (list, tuple)):
            yield str(source[0]), (str(source[1]) if len(source) > 1 else None)
        elif isinstance(source, StoredFile):
            yield source.name, source.md5
        else:  # an expkit.records.Source
            yield source.name, source.md5


def _repository(repo: Any) -> Any:
    if isinstance(repo, dict):
        return repo
    return {"url": repo.url, "commit": repo.commit, "dirty": repo.dirty}


def _joined(first: dict, second: dict) -> dict:
    for name, column in second.items():
        target = first.setdefault(name, {"steps": [], "values": [], "timestamps": []})
        for key in target:
            target[key].extend(column[key])
    return first


def _check_readable(filename: str, what: str) -> None:
    if not os.path.exists(filename):
        raise UsageError(f"{what} file {filename} does not exist")
    if not os.path.isfile(filename):
        raise UsageError(f"{what} {filename} is not a file (folders cannot be stored)")


def _epoch(t: Any) -> float:
    if isinstance(t, datetime.datetime):
        if t.tzinfo is not None:
            return t.timestamp()
        return (t - _EPOCH).total_seconds()
    return float(t)


_EPOCH = datetime.datetime(1970, 1, 1)


# --- reading ------------------------------------------------------------------------------


class StoreReader:
    """Reads the runs of a :class:`Storage` as :class:`~expkit.records.RunRecord`\\ s.

    A run whose stored document is damaged (not an object, a field of the wrong
    type) is still listed as far as it can be read; one that cannot be read at all
    is skipped in listings with one warning line, and named in the error of
    :meth:`get_run`. Neither stops the others from being read.
    """

    def __init__(self, storage: Storage, url: str | None = None) -> None:
        self.storage = storage
        self.url = redact_url(url if url is not None else storage.url)

    def __repr__(self) -> str:
        return f"StoreReader({self.url!r})"

    @property
    def capabilities(self) -> frozenset[str]:
        """What this store can do beyond reading: ``"delete"``, ``"edit"``."""
        return self.storage.capabilities

    def stamp(self) -> Any:
        """:meth:`Storage.stamp`: whether a listing taken before may be out of date."""
        return self.storage.stamp()

    def list_runs(self) -> list[RunRecord]:
        """Every run as a summary (no output, metrics, host or experiment info), in id order."""
        records = []
        for doc in self.storage.summaries():
            record = self._record(doc)
            if record is not None:
                records.append(record)
        return records

    def select(self, query: Query) -> tuple[list[RunRecord], bool]:
        """The runs ``query`` asks for, and whether the store applied all of it.

        ``False`` means the records are candidates still to be filtered, sorted and cut.
        """
        if "query" not in self.storage.capabilities:
            return self.list_runs(), False
        docs, exact = self.storage.select(query)
        return [r for r in map(self._record, docs) if r is not None], exact

    def get_run(self, run_id: Any) -> RunRecord:
        """Everything recorded about run ``run_id``; :class:`KeyError` when there is none."""
        doc = self._load(run_id)
        record = self._record(doc, whole=True)
        if record is None:
            raise StoreError(f"run {run_id!r} in {self.url} is damaged: its document is unreadable")
        try:
            metrics = self.storage.load_metrics(record.id)
        except (ValueError, TypeError, KeyError, StoreError) as exc:
            log.warning("run %s in %s: metrics unreadable (%s)", record.id, self.url, exc)
            metrics = {}
        return attrs.evolve(record, metrics=_metrics(metrics))

    def read_source(self, run_id: Any, name: str) -> bytes:
        """The stored copy of the run's source file ``name`` (relative to its base dir)."""
        doc = self._load(run_id)
        return self._read(doc, "source", _dict(doc.get("experiment")).get("sources"), name)

    def read_artifact(self, run_id: Any, name: str) -> bytes:
        """The content of the run's artifact ``name``."""
        doc = self._load(run_id)
        return self._read(doc, "artifact", doc.get("artifacts"), name)

    def read_resource(self, run_id: Any, path: str) -> bytes:
        """The stored copy of the input file the run recorded under its original ``path``."""
        doc = self._load(run_id)
        return self._read(doc, "resource", doc.get("resources"), path)

    def delete_run(self, run_id: Any) -> None:
        """Remove the run from the store."""
        self._need("delete")
        self.storage.delete(self._load(run_id)["_id"])

    def edit_run(
        self, run_id: Any, *, comment: str | None = None, tags: Sequence[str] | None = None
    ) -> RunRecord:
        """Set the run's ``meta.comment`` and/or ``meta.tags``; return the run as now stored."""
        self._need("edit")
        doc = self._load(run_id)
        tags = None if tags is None else [str(t) for t in tags]
        doc["meta"] = edited_meta(_dict(doc.get("meta")), comment, tags)
        self.storage.update(doc, frozenset({"meta"}))
        return self.get_run(doc["_id"])

    def close(self) -> None:
        """Let go of the store's connections and files."""
        self.storage.close()

    def _need(self, capability: str) -> None:
        if capability not in self.storage.capabilities:
            raise UsageError(f"the store {self.url} cannot {capability} runs")

    def _load(self, run_id: Any) -> dict:
        for candidate in id_candidates(run_id):
            try:
                return self.storage.load(candidate)
            except KeyError:
                continue
        raise KeyError(f"no run {run_id!r} in {self.url}")

    def _read(self, doc: dict, kind: str, files: Any, name: str) -> bytes:
        run_id = doc["_id"]
        for file in reversed(_files(files)):  # the latest of a name
            if file.name == name:
                if file.ref is None:
                    raise NotKeptError(f"{kind} {name!r} of run {run_id!r} was recorded, not kept")
                return self.storage.read_file(run_id, kind, file)
        raise KeyError(f"run {run_id!r} in {self.url} has no {kind} {name!r}")

    def _record(self, doc: Any, whole: bool = False) -> RunRecord | None:
        if not isinstance(doc, dict) or doc.get("_id") is None:
            ident = doc.get("_id") if isinstance(doc, dict) else None
            log.warning(
                "skipping a damaged run %s in %s", ident if ident is not None else "", self.url
            )
            return None
        experiment = _dict(doc.get("experiment"))
        record = RunRecord(
            id=doc["_id"],
            store=self.url,
            experiment=_str(experiment.get("name")),
            status=_str(doc.get("status")) or "UNKNOWN",
            command=_str(doc.get("command")) or None,
            start_time=_time(doc.get("start_time")),
            stop_time=_time(doc.get("stop_time")),
            heartbeat=_time(doc.get("heartbeat")),
            config=_dict(_plain(doc.get("config")) if whole else doc.get("config")),
            result=_plain(doc.get("result")),
            meta=_dict(doc.get("meta")) if whole else _listed_meta(doc.get("meta")),
            artifacts=_names(doc.get("artifacts")),
        )
        if not whole:
            return record
        trace = doc.get("fail_trace")
        return attrs.evolve(
            record,
            host=_dict(doc.get("host")),
            experiment_info={
                **experiment,
                "sources": [[f.name, f.md5] for f in _files(experiment.get("sources"))],
            },
            info=_dict(_plain(doc.get("info"))),
            fail_trace=[str(line) for line in trace] if isinstance(trace, list) else None,
            resources=tuple((f.name, f.md5 or "") for f in _files(doc.get("resources"))),
            captured_out=doc.get("captured_out")
            if isinstance(doc.get("captured_out"), str)
            else "",
        )


def numeric_id(run_id: Any) -> Any:
    """``run_id`` as an int when it is a digit string (``--id 7``, an id typed on a command
    line), else as it is: the one place that decides when text is a number."""
    if isinstance(run_id, str) and run_id.isascii() and run_id.removeprefix("-").isdigit():
        return int(run_id)
    return run_id


def id_candidates(run_id: Any) -> list[Any]:
    """The ids a store may hold run ``run_id`` under: as given, then a digit string as a
    number (MongoDB's, Sacred's) or a number as text (a file store's folder names)."""
    if isinstance(run_id, int) and not isinstance(run_id, bool):
        return [run_id, str(run_id)]
    number = numeric_id(run_id)
    return [run_id] if number is run_id else [run_id, number]


def _plain(value: Any) -> Any:
    """``value`` with numpy's scalars and small arrays as Sacred wrote them (jsonpickle's
    ``{"py/object": "numpy.float64", "value": 0.5, ...}``) turned into the plain values
    expkit stores for them: a Sacred run's ``np.float64`` result compares equal to its rerun's.

    Arrays jsonpickle wrote as base64 bytes are left as stored.
    """
    if isinstance(value, dict):
        kind = value.get("py/object")
        if isinstance(kind, str) and kind.startswith("numpy.") and "dtype" in value:
            if "value" in value:
                return value["value"]
            if isinstance(value.get("values"), list):
                return value["values"]
            return value
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _files(value: Any) -> list[StoredFile]:
    if not isinstance(value, list):
        return []
    return [f for f in value if isinstance(f, StoredFile)]


def _listed_meta(meta: Any) -> dict:
    # Alike from every store, whether or not its summaries left these keys out already.
    meta = _dict(meta)
    if any(key in meta for key in SUMMARY_META_OMITS):
        return {k: v for k, v in meta.items() if k not in SUMMARY_META_OMITS}
    return meta


def _names(files: Any) -> tuple[str, ...]:
    found = _files(files)
    return tuple(dict.fromkeys(f.name for f in found)) if found else ()  # each name once


def _time(value: Any) -> datetime.datetime | None:
    if type(value) is datetime.datetime and value.tzinfo is None:
        return value  # as stores keep times: naive UTC
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else _naive(value)
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            return None  # not a time expkit or Sacred wrote: shown as unknown
    return None


def _naive(value: datetime.datetime) -> datetime.datetime:
    return value.astimezone(datetime.timezone.utc).replace(tzinfo=None)


def _metrics(metrics: Any) -> dict[str, dict]:
    """Stored metrics as the reader returns them: equal-length lists, datetimes for times."""
    out = {}
    for name, series in _dict(metrics).items():
        if not isinstance(series, dict):
            continue
        steps, values, times = (
            list(series.get(k) or ()) for k in ("steps", "values", "timestamps")
        )
        n = min(len(steps), len(values), len(times)) if times else min(len(steps), len(values))
        out[str(name)] = {
            "steps": steps[:n],
            "values": values[:n],
            "timestamps": _metric_times(times[:n]) if times else [None] * n,
        }
    return out


def _metric_times(times: list) -> list[datetime.datetime | None]:
    """Stored times as datetimes: ISO text or epoch seconds, a million points in a blink."""
    kinds = set(map(type, times))
    try:
        if kinds == {str}:
            return list(map(datetime.datetime.fromisoformat, times))
        if kinds <= {float, int} and all(map(math.isfinite, times)):
            return utc_datetimes(times)
    except (ValueError, OverflowError):
        pass  # a damaged point among them: each on its own
    return [_metric_time(t) for t in times]


def _metric_time(value: Any) -> datetime.datetime | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return _EPOCH + datetime.timedelta(seconds=value)
    return _time(value)


# --- finding the store for a URL ------------------------------------------------------------


def backends(pm: Any) -> list[StoreBackend]:
    """Every store backend the plugins of ``pm`` declare, in hook order."""
    return [b for part in pm.hook.expkit_store_backends() for b in part or ()]


def open_storage(pm: Any, url: str) -> tuple[StoreBackend, Storage] | None:
    """The backend claiming ``url`` and its storage for it, or ``None`` if none claims it."""
    scheme, colon, _ = url.partition(":")
    if colon and not url.startswith(f"{scheme}://"):
        # "sqlite:/runs.db" would otherwise be a folder of that name in the file store.
        if scheme.lower().partition("+")[0] in _known_schemes(pm):
            example = " (sqlite:///runs.db is runs.db here)" if "sqlite" in scheme else ""
            raise UsageError(
                f"store URL {redact_url(url)!r}: a {scheme} URL begins {scheme}://{example}; "
                f"a folder of that name is ./{redact_url(url)}"
            )
    backend = next((b for b in backends(pm) if b.claims(url)), None)
    if backend is None:
        return None
    try:
        return backend, backend.open(url)
    except (UsageError, StoreError):
        raise
    except Exception as exc:
        raise StoreError(
            f"cannot open the {backend.name} store {backend.redact(url)}: {exc}"
        ) from None


def open_store(pm: Any, url: str) -> RunObserver:
    """The observer that records runs into the store at ``url``; one no store claims is a
    usage error naming the known schemes."""
    opened = open_storage(pm, url)
    if opened is not None:
        return StoreObserver(opened[1])
    store = pm.hook.expkit_store_for_url(url=url)  # deprecated: plugins of before backends
    if store is None:
        raise no_store_error(pm, url)
    _deprecated("expkit_store_for_url")
    return store


def open_reader(pm: Any, url: str) -> Any:
    """The reader of the runs stored at ``url`` (a :class:`StoreReader` for every backend)."""
    opened = open_storage(pm, url)
    if opened is not None:
        return StoreReader(opened[1], url=opened[0].redact(url))
    reader = pm.hook.expkit_reader_for_url(url=url)  # deprecated, as above
    if reader is None:
        raise no_store_error(pm, url, reading=True)
    _deprecated("expkit_reader_for_url")
    return reader


def store_identity(url: str) -> str:
    """The store at ``url`` named one way however the URL is typed: two URLs of one store
    are one store (a run records into it once; a sync copies into it once).

    A folder (a path or ``file://``), a TinyDB file and an SQLite file are named by their
    absolute path, links resolved; a server's URL by its scheme, hosts and database, without
    the user, the password or options that only tell the client how to connect.
    """
    scheme, sep, rest = url.partition("://")
    kind = scheme.lower().partition("+")[0]
    if not sep or kind == "file":
        return _absolute(rest if sep else url)
    if kind == "tinydb":
        path = _absolute(rest)  # a folder, or the .json file in it
        if os.path.basename(path) == "metadata.json" and not os.path.isdir(path):
            path = os.path.dirname(path)  # the file TinyDB uses when given the folder
        return f"tinydb://{path}"
    if kind == "sqlite":
        # sqlite:///runs.db is runs.db here; sqlite:////abs/runs.db is absolute.
        return f"sqlite:///{_absolute(rest.partition('?')[0][1:])}"
    where, _, query = split_userinfo(url)[2].partition("?")
    hosts, _, path = where.partition("/")
    if kind in _DEFAULT_PORTS:
        hosts = ",".join(h.removesuffix(_DEFAULT_PORTS[kind]) for h in hosts.split(","))
    path = path.strip("/") or ("sacred" if kind == "mongodb" else "")  # Sacred's default db
    if kind in ("mongodb", "postgresql"):
        query = ""  # client options: the same database, however it is reached
    elif kind == "s3":  # the bucket's service counts, not its region
        import urllib.parse  # only for S3 URLs

        endpoint = [(k, v) for k, v in urllib.parse.parse_qsl(query) if k == "endpoint_url"]
        query = urllib.parse.urlencode(endpoint)
    name = scheme.lower() if kind == "mongodb" else kind  # mongodb+srv finds its hosts otherwise
    text = (
        f"{name}://{hosts.lower()}" + (f"/{path}" if path else "") + (f"?{query}" if query else "")
    )
    return redact_url(text)


_DEFAULT_PORTS = {"mongodb": ":27017", "postgresql": ":5432"}


def _absolute(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def no_store_error(pm: Any, url: str, reading: bool = False) -> UsageError:
    """The one-line error for a URL no store claims, naming the schemes that are known."""
    known = _known_schemes(pm)
    verb = "reads" if reading else "handles"
    return UsageError(
        f"no store plugin {verb} {redact_url(url)!r}; known schemes: "
        f"{', '.join(s + '://' for s in sorted(known)) or 'none'} (or a plain folder path)"
    )


def _known_schemes(pm: Any) -> set[str]:
    """The URL schemes the store plugins claim (those of the deprecated hook too)."""
    known = {s for b in backends(pm) for s in b.schemes if s}
    return known | {s for part in pm.hook.expkit_store_schemes() for s in part or ()}


_warned: set[str] = set()


def _deprecated(hook: str) -> None:
    if hook not in _warned:
        _warned.add(hook)
        import warnings

        warnings.warn(
            f"a plugin implements {hook}, which is deprecated: declare a StoreBackend "
            "from expkit_store_backends instead (see 'Writing a store plugin')",
            DeprecationWarning,
            stacklevel=3,
        )
