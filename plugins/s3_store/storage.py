"""The S3 store: every run under a key prefix of its own, in the file store's layout.

::

    <prefix>/<id>/run.json                the run record, replaced when it changes
    <prefix>/<id>/config.json             the configuration
    <prefix>/<id>/cout.txt                the captured output, replaced when it grew
    <prefix>/<id>/metrics.json            Sacred's metrics format, complete once the run ended
    <prefix>/<id>/info.json               ``run.info``, only once it is non-empty
    <prefix>/<id>/<artifacts>
    <prefix>/<id>/_metrics/000001.jsonl   while the run runs: its metric points (see below)
    <prefix>/_sources/<stem>_<md5><ext>
    <prefix>/_resources/<stem>_<md5><ext>

These are the keys of Sacred's ``S3Observer`` and the files of the file store, so a
prefix copied to disk (``aws s3 sync``) is a file store, and Sacred-era scripts read
it. The JSON is the file store's (:mod:`expkit_plugins.file_store.storage`). Only
sources and resources differ: Sacred 0.8.7's observer uploaded them to the key it
recorded inside the run's folder (``<prefix>/<id>/<prefix>/_sources/...``), where
they are read too.

S3 cannot append to an object. Sacred's observer rewrote metrics.json whole at every
batch, which costs more and more as a run logs; here each batch of points goes into a
small *segment* object of the metrics log (the file store's ``metrics.jsonl`` lines),
rewritten until it holds 64 KiB and then followed by the next one, so that a write
never sends more than a segment. metrics.json is rewritten when the number of points
has doubled and when the run ends; then the segments are deleted (the first one first,
so that a reader never takes what is left of them for the whole log). ``cout.txt`` is
rewritten when the output changed, at most once a heartbeat.

A new run's id is the largest numeric folder + 1, as in Sacred, and is claimed by
writing its ``run.json`` with ``If-None-Match: *``: of runs started at the same time
exactly one gets each id, the others take the next. A service that does not know
conditional writes gets Sacred's behaviour.

boto3 is imported only when a store is opened; credentials come from boto3's own
configuration (environment, profile, instance role), never from the URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from expkit.errors import ExpkitError, UsageError
from expkit.observers import utc_isoformat_json
from expkit.serialize import dumps
from expkit.store import FINAL_STATUSES, Storage, StoredFile, StoreError, StoreObserver
from expkit.utils import file_md5, redact_url, split_userinfo
from expkit_plugins.file_store.storage import (
    CONFIG_FILE,
    COUT_FILE,
    INFO_FILE,
    METRICS_FILE,
    RESERVED_NAMES,
    RESOURCES_DIR,
    RUN_FILE,
    SOURCES_DIR,
    FileStorageObserver,
    _compact,
    _doc_from_disk,
    _doc_from_summary,
    _id_order,
    _metrics_json,
    _run_json,
    _summary,
    is_content_of,
    metrics_from_log_lines,
    spliced_log_lines,
)

try:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError:  # boto3 is missing: opening a store says how to install it

    class BotoCoreError(Exception):  # type: ignore[no-redef]
        """Never raised: boto3 is not installed."""

    Boto3Error = ClientError = BotoCoreError  # type: ignore[misc]

log = logging.getLogger("expkit")

METRICS_DIR = "_metrics"  # the segments of a running run's metrics log, in its folder
SEGMENT_BYTES = 64 * 1024  # a segment is rewritten until it holds this much
URL_OPTIONS = ("endpoint_url", "region")
DEFAULT_PRIORITY = 20

_READERS = 16  # objects read at once when listing runs
_MAX_ID_TRIES = 10_000
_RELIST_EVERY = 8  # ids found taken in a row before listing the folders again
_MISSING = ("NoSuchKey", "NoSuchBucket", "404", "NotFound")
_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3Storage(Storage):
    """Runs as key prefixes in an S3 bucket: the primitives of the S3 store.

    ``prefix`` is the runs' folder in the bucket (``""``: its top); ``resource_dir``
    and ``source_dir`` are the keys of the shared copies (default ``<prefix>/_resources``
    and ``<prefix>/_sources``). ``endpoint_url`` names an S3-compatible service
    (MinIO, Google Cloud Storage's XML API); without it boto3's own configuration
    decides (``AWS_ENDPOINT_URL``, a profile's ``endpoint_url``, else AWS).
    """

    capabilities = frozenset({"delete", "edit"})

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        resource_dir: str | None = None,
        source_dir: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        url: str | None = None,
    ) -> None:
        check_bucket(bucket)
        self.bucket = bucket
        self.prefix = _clean_key(prefix, "prefix")
        self.resource_dir = _clean_key(resource_dir, "resource_dir") or _join(
            self.prefix, RESOURCES_DIR
        )
        self.source_dir = _clean_key(source_dir, "source_dir") or _join(self.prefix, SOURCES_DIR)
        self.region = region
        self.endpoint_url = endpoint_url
        self.url = url if url is not None else f"s3://{bucket}/{self.prefix}"
        self.client = _client(region, endpoint_url)
        self._pinger: Any = None  # a client that gives up at once, made on the first ping
        self._lock = threading.RLock()
        self._stored: set[str] = set()  # keys of sources and resources known to be there
        self._bucket_checked = False
        self._reset()

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        """The storage of ``s3://BUCKET/PREFIX[?endpoint_url=URL&region=NAME]``."""
        _, userinfo, _ = split_userinfo(url)
        if userinfo is not None:
            raise UsageError(
                f"store URL {redact_url(url)!r} holds credentials: S3 credentials go in "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or an AWS profile, never in the URL"
            )
        parts = urllib.parse.urlsplit(url)
        options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - set(URL_OPTIONS))
        if unknown:
            raise UsageError(
                f"store URL {redact_url(url)!r}: unknown option {unknown[0]!r} "
                f"(known: {', '.join(URL_OPTIONS)})"
            )
        if not parts.netloc:
            raise UsageError(
                f"store URL {redact_url(url)!r} names no bucket: write s3://BUCKET/PREFIX"
            )
        return cls(
            parts.netloc,
            urllib.parse.unquote(parts.path),
            region=options.get("region") or None,
            endpoint_url=options.get("endpoint_url") or None,
            url=url,
        )

    def __repr__(self) -> str:
        return f"S3Storage({redact_url(self.url)!r})"

    def _reset(self) -> None:
        # Per-run state: one store records several runs one after the other.
        self.dir: str | None = None  # the key prefix of the run being written
        self._cout: str | None = None
        self._info_text: str | None = None
        self._lines: list[str] = []  # every batch of metric points of the run, as log lines
        self._points = 0
        self._points_saved: int | None = None
        self._segment = 0  # the number of the segment being filled
        self._segment_lines: list[str] | None = None  # None: start a new one
        self._replayed: str | None = None  # the last batch stored before a resume

    # --- writing ---

    def create(self, doc: dict) -> Any:
        """Claim the run's id (a conditional write of its run.json) and write its files."""
        with self._lock:
            self._reset()
            self._ensure_bucket()
            body = dumps(_run_json(doc)).encode()
            name = self._claim(doc["_id"], body)
            self.dir = self._run_key(name)
            self._put(CONFIG_FILE, dumps(doc.get("config") or {}).encode())
            if doc.get("status") == "QUEUED":
                # A queued run keeps its own copy of the code it is to run, as Sacred's did.
                base = doc["experiment"].get("base_dir") or ""
                for source in doc["experiment"].get("sources") or ():
                    self._copy_source(os.path.join(base, source.name), source.name)
            else:
                self._put(COUT_FILE, b"")
                self._cout = ""
            return _run_id(name)

    def reopen(self, run_id: Any) -> dict:
        """Go on writing the stored run ``run_id`` (its spooled events are being replayed)."""
        with self._lock:
            self._reset()
            try:
                doc = self.load(run_id)
            except KeyError:
                raise UsageError(f"cannot resume run {run_id!r}: it is not in {self}") from None
            self.dir = self._run_key(_checked_name(run_id))
            self._cout = doc.get("captured_out") or ""
            if doc.get("info"):
                self._info_text = dumps(doc["info"])
            segments = self._segment_numbers(self.dir)
            if segments:
                self._lines = self._read_segments(self.dir, segments)
                self._segment = segments[-1]
            else:
                metrics = self._get_json(_join(self.dir, METRICS_FILE), default={})
                if metrics:
                    # The run ended once (its segments are gone): a log that goes on starts
                    # with what metrics.json holds, so that readers of the log miss nothing.
                    self._lines = [_compact(metrics) + "\n"]
                    self._put(_segment_name(1), self._lines[0].encode())
                    self._segment = 1
            metrics = metrics_from_log_lines(self._lines, self._where(_join(self.dir, METRICS_DIR)))
            self._points = sum(len(series["steps"]) for series in metrics.values())
            self._points_saved = self._points if self._lines else None
            self._replayed = self._lines[-1] if self._lines else None
            return doc

    def update(self, doc: dict, changed: frozenset[str]) -> None:
        """Write the objects that hold the ``changed`` fields; complete metrics.json at the end."""
        with self._lock:
            name = _checked_name(doc["_id"])
            if self.dir != self._run_key(name):
                # Not the run being written: an edit of a stored run.
                self._reset()
                self.dir = self._run_key(name)
            if "config" in changed:
                self._put(CONFIG_FILE, dumps(doc.get("config") or {}).encode())
            if "captured_out" in changed:
                text = doc.get("captured_out") or ""
                if text != self._cout:
                    self._put(COUT_FILE, text.encode("utf-8", errors="replace"))
                    self._cout = text
            if "info" in changed:
                self._save_info(doc.get("info") or {})
            ended = doc.get("status") in FINAL_STATUSES and "status" in changed
            if ended and self._lines and self._points != self._points_saved:
                self._save_metrics()
            if changed - {"config", "captured_out", "info"}:
                self._put(RUN_FILE, dumps(_run_json(doc)).encode())
            if ended and self._segment:
                self._drop_segments()

    def put_file(self, kind: str, file: StoredFile, path: str) -> str:
        """Sources and resources once per content in ``_sources``/``_resources``; artifacts
        in the run's folder under their name (which may hold subfolders, never leave it)."""
        if kind == "artifact":
            with self._lock:
                self._upload(path, self._artifact_key(self._current(), file.name), file)
            return file.name
        self._ensure_bucket()  # sources are kept before the run is created
        folder = self.source_dir if kind == "source" else self.resource_dir
        stem, ext = os.path.splitext(os.path.basename(file.name if kind == "resource" else path))
        key = _join(folder, f"{stem}_{file_md5(path)}{ext}")
        if key not in self._stored and not self._exists(key):
            self._upload(path, key)
        self._stored.add(key)
        return _relative(key, self.prefix)

    def append_metrics(self, run_id: Any, columns: dict[str, dict]) -> None:
        """Write the batch into the current segment; metrics.json too once the points doubled."""
        series = [
            (name, c["steps"], utc_isoformat_json(c["timestamps"]), c["values"])
            for name, c in columns.items()
        ]
        parts, count = _metrics_json(series)
        if not count:
            return
        line = b"".join(parts).decode() + "\n"
        with self._lock:
            if line == self._replayed:
                # The batch the store took just before it failed, spooled again: kept once.
                self._replayed = None
                return
            self._replayed = None
            if self._segment_lines is None or (
                self._segment_lines and _size(self._segment_lines) + len(line) > SEGMENT_BYTES
            ):
                self._segment, self._segment_lines = self._segment + 1, []
            self._segment_lines.append(line)
            try:
                self._put(_segment_name(self._segment), "".join(self._segment_lines).encode())
            except BaseException:
                self._segment_lines.pop()
                raise
            self._lines.append(line)
            self._points += count
            saved = self._points_saved
            # Rewriting only after doubling keeps the total work linear in the points.
            if saved is None or self._points >= 2 * saved:
                try:
                    self._save_metrics()
                except ExpkitError as exc:
                    # The points are in the log already: failing here would make a replay
                    # record them twice. metrics.json is rewritten at the next chance.
                    log.debug("metrics.json not refreshed: %s", exc)

    # --- reading ---

    def summaries(self) -> list[dict]:
        """Every run's summary, from its run.json and config.json (read many at once)."""
        names = [n for n in self._folders(missing_ok=False) if not n.startswith(("_", "."))]
        with ThreadPoolExecutor(_READERS) as pool:
            found = [s for s in pool.map(self._summary_of, names) if s is not None]
        docs = []
        for summary in sorted(found, key=_id_order):
            doc = _doc_from_summary(summary)
            doc["_id"] = _run_id(summary["id"])
            docs.append(doc)
        return docs

    def load(self, run_id: Any) -> dict:
        """The run's document from run.json, config.json, info.json and cout.txt."""
        rundir = self._run_dir(run_id)
        try:
            entry = self._get_json(_join(rundir, RUN_FILE))
        except KeyError:
            raise KeyError(f"no run {str(run_id)!r} in {self}") from None
        if not isinstance(entry, dict):
            raise StoreError(f"{self._where(_join(rundir, RUN_FILE))} holds no JSON object")
        doc = _doc_from_disk(entry, posixpath.basename(rundir))
        doc["_id"] = _run_id(posixpath.basename(rundir))
        doc["config"] = self._get_json(_join(rundir, CONFIG_FILE), default={}, damaged={})
        doc["info"] = self._get_json(_join(rundir, INFO_FILE), default={}, damaged={})
        cout = self._get(_join(rundir, COUT_FILE))
        doc["captured_out"] = "" if cout is None else cout.decode("utf-8", errors="replace")
        return doc

    def load_metrics(self, run_id: Any) -> dict[str, dict]:
        """The run's metrics: from the log's segments while there are any, else metrics.json."""
        rundir = self._run_dir(run_id)
        segments = self._segment_numbers(rundir)
        if segments and segments[0] == 1:
            lines = self._read_segments(rundir, segments)
            return metrics_from_log_lines(lines, self._where(_join(rundir, METRICS_DIR)))
        # No segments, or the end of the run is deleting them: metrics.json is complete.
        return self._get_json(_join(rundir, METRICS_FILE), default={}, damaged={})

    def read_file(self, run_id: Any, kind: str, file: StoredFile) -> bytes:
        """A stored source or resource (by its key relative to the prefix; Sacred's
        observer wrote resources' whole keys, and put both under the run's folder) or an
        artifact (by name)."""
        rundir = self._run_key(_checked_name(run_id))
        if kind == "artifact":
            try:
                keys = [self._artifact_key(rundir, file.name)]
            except UsageError:
                keys = [_join(rundir, file.name)]  # a name Sacred's observer took as it was
        else:
            ref = str(file.ref)
            keys = [posixpath.normpath(_join(self.prefix, ref)), ref]
            # Sacred 0.8.7's S3Observer uploaded a run's sources and resources to the key
            # it recorded, inside the run's folder: <prefix>/<id>/<prefix>/_sources/...
            keys = list(dict.fromkeys([*keys, *(_join(rundir, key) for key in keys)]))
        other = False
        for key in keys:
            data = self._get(key)
            if data is not None and is_content_of(file, key, data):
                return data
            other = other or data is not None
        if other:
            raise ExpkitError(f"{kind} {file.name!r} is recorded, but {self} holds other content")
        raise ExpkitError(
            f"{kind} {file.name!r} is recorded but not kept in {self} (no object {keys[0]})"
        )

    def delete(self, run_id: Any) -> None:
        """Remove the run's objects, its run.json last (sources in ``_sources`` stay)."""
        rundir = self._run_dir(run_id)
        keys = self._keys(rundir + "/")
        run_key = _join(rundir, RUN_FILE)
        if run_key not in keys:
            raise KeyError(f"no run {str(run_id)!r} in {self}")
        self._delete_keys([k for k in keys if k != run_key])
        self._delete_keys([run_key])

    def ping(self) -> bool:
        """Whether the bucket answers within a few seconds, asked once."""
        try:
            if self._pinger is None:
                self._pinger = _client(self.region, self.endpoint_url, quick=True)
            self._pinger.head_bucket(Bucket=self.bucket)
        except Exception:
            return False
        return True

    def close(self) -> None:
        """Let go of the clients' connections."""
        for client in (self.client, self._pinger):
            with contextlib.suppress(Exception):
                client.close()

    # --- ids ---

    def _claim(self, run_id: Any, body: bytes) -> str:
        """The folder name of a new run whose run.json ``body`` is now stored under it."""
        if run_id is not None:
            name = _checked_name(run_id)
            if self._keys(self._run_key(name) + "/", limit=1) or not self._put_new(name, body):
                raise UsageError(f"run {name} already exists in {self}: choose another id")
            return name
        number = self._max_id() + 1
        for tries in range(1, _MAX_ID_TRIES + 1):
            if self._put_new(str(number), body):
                return str(number)
            number += 1
            if tries % _RELIST_EVERY == 0:
                number = max(number, self._max_id() + 1)  # many runs started meanwhile
        raise StoreError(f"could not claim a new run id in {self}")

    def _put_new(self, name: str, body: bytes) -> bool:
        """Write run.json of folder ``name`` unless there is one; False when there is."""
        key = _join(self._run_key(name), RUN_FILE)
        for attempt in range(2):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                    IfNoneMatch="*",
                )
                return True
            except ClientError as exc:
                code = _code(exc)
                if code in _TAKEN:
                    return False
                if code == "NoSuchBucket" and attempt == 0:
                    self._create_bucket()  # as Sacred's observer did
                    continue
                if code == "NotImplemented":
                    log.debug("%s takes no conditional writes: ids as in Sacred", self)
                    self._put_key(key, body, "application/json")
                    return True
                raise self._error(exc, f"writing {key}") from None
            except BotoCoreError as exc:
                raise self._error(exc, f"writing {key}") from None
        raise StoreError(f"bucket {self.bucket!r} was not created in {self}")

    def _max_id(self) -> int:
        return max(
            (int(n) for n in self._folders(missing_ok=True) if n.isascii() and n.isdigit()),
            default=0,
        )

    def _ensure_bucket(self) -> None:
        """Create the bucket if it is missing (as Sacred's observer did), once per storage."""
        if self._bucket_checked:
            return
        found = self._unless_missing(
            "looking for the bucket", lambda: self.client.head_bucket(Bucket=self.bucket)
        )
        if found is None:
            self._create_bucket()
        self._bucket_checked = True

    def _create_bucket(self) -> None:
        region = self.client.meta.region_name
        kwargs: dict[str, Any] = {}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc, "creating the bucket") from None
        except BotoCoreError as exc:
            raise self._error(exc, "creating the bucket") from None

    # --- objects ---

    def _put(self, name: str, data: bytes) -> None:
        """Replace the object ``name`` of the run being written (S3 writes are atomic)."""
        content_type = "application/json" if name.endswith(".json") else "text/plain"
        self._put_key(_join(self._current(), name), data, content_type)

    def _put_key(self, key: str, data: bytes, content_type: str) -> None:
        with self._errors(f"writing {key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def _upload(self, path: str, key: str, file: StoredFile | None = None) -> None:
        extra = {"ContentType": file.content_type} if file and file.content_type else None
        with self._errors(f"uploading {path} to {key}"):
            # upload_file sends big files in parts, several at once.
            self.client.upload_file(path, self.bucket, key, ExtraArgs=extra)

    def _get(self, key: str) -> bytes | None:
        """The content of ``key``; ``None`` when there is no such object (or bucket)."""
        return self._unless_missing(
            f"reading {key}",
            lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
        )

    def _get_json(self, key: str, default: Any = None, damaged: Any = None) -> Any:
        """The JSON of ``key``: ``default`` when it is missing (KeyError if None), ``damaged``
        when it is no JSON (StoreError if None)."""
        data = self._get(key)
        if data is None:
            if default is None:
                raise KeyError(f"no object {key} in {self}")
            return default
        try:
            return json.loads(data)
        except ValueError as exc:
            if damaged is None:
                raise StoreError(f"{self._where(key)} is not valid JSON: {exc}") from None
            log.warning("%s is damaged (%s): read as empty", self._where(key), exc)
            return damaged

    def _exists(self, key: str) -> bool:
        found = self._unless_missing(
            f"looking for {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=key)
        )
        return found is not None

    def _unless_missing(self, what: str, request: Callable[[], Any]) -> Any:
        """What ``request`` gives, ``None`` when the object or bucket is missing; any other
        failure is a StoreError saying ``what`` failed."""
        try:
            return request()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise self._error(exc, what) from None
        except BotoCoreError as exc:
            raise self._error(exc, what) from None

    def _keys(self, prefix: str, limit: int | None = None) -> list[str]:
        """The keys under ``prefix`` (at most ``limit``); none when the bucket is missing."""
        keys: list[str] = []
        for page in self._pages(Prefix=prefix, missing_ok=True):
            keys += [item["Key"] for item in page.get("Contents", ())]
            if limit is not None and len(keys) >= limit:
                return keys[:limit]
        return keys

    def _folders(self, missing_ok: bool) -> list[str]:
        """The names of the folders right under the prefix."""
        base = self.prefix + "/" if self.prefix else ""
        names = []
        for page in self._pages(Prefix=base, Delimiter="/", missing_ok=missing_ok):
            names += [p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", ())]
        return names

    def _pages(self, missing_ok: bool, **kwargs: Any) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            yield from paginator.paginate(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _code(exc) != "NoSuchBucket":
                raise self._error(exc, "listing") from None
            if not missing_ok:
                raise UsageError(f"no S3 store at {self}: the bucket does not exist") from None
        except BotoCoreError as exc:
            raise self._error(exc, "listing") from None

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # S3's most per request
            batch = keys[start : start + 1000]
            try:
                done = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except ClientError as exc:
                if _code(exc) != "NotImplemented":
                    raise self._error(exc, "deleting") from None
                # Google Cloud Storage's XML API deletes one object per request.
                for key in batch:
                    with self._errors(f"deleting {key}"):
                        self.client.delete_object(Bucket=self.bucket, Key=key)
                continue
            except BotoCoreError as exc:
                raise self._error(exc, "deleting") from None
            if done.get("Errors"):
                first = done["Errors"][0]
                raise StoreError(
                    f"cannot delete {first.get('Key')} in {self}: {first.get('Message')}"
                )

    # --- runs ---

    def _run_key(self, name: str) -> str:
        return _join(self.prefix, name)

    def _current(self) -> str:
        if self.dir is None:
            raise StoreError(f"{self} got a run event before the run started")
        return self.dir

    def _run_dir(self, run_id: Any) -> str:
        """The key prefix of run ``run_id``; KeyError for an id no run can have."""
        try:
            return self._run_key(_checked_name(run_id))
        except UsageError:
            raise KeyError(f"no run {str(run_id)!r} in {self}") from None

    def _summary_of(self, name: str) -> dict | None:
        rundir = self._run_key(name)
        try:
            entry = self._get_json(_join(rundir, RUN_FILE))
        except KeyError:
            return None  # not a run folder, or a run whose start is being written
        except StoreError as exc:
            log.warning("skipping run %s: %s", name, exc)
            return None
        if not isinstance(entry, dict):
            log.warning("skipping run %s: its run.json holds no JSON object", name)
            return None
        config = self._get_json(_join(rundir, CONFIG_FILE), default={}, damaged={})
        return _summary(name, entry, config)

    def _artifact_key(self, rundir: str, name: str) -> str:
        """The key of artifact ``name`` in the run's folder, or a UsageError saying why not."""
        if "\0" in name:
            raise UsageError(f"artifact name {name!r} contains a NUL character")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise UsageError(f"artifact name {name!r} would be stored outside the run folder")
        if not parts or name.endswith("/"):
            raise UsageError(f"artifact name {name!r} is not a file name")
        if (len(parts) == 1 and parts[0].casefold() in RESERVED_NAMES) or parts[0] == METRICS_DIR:
            reserved = ", ".join([*sorted(RESERVED_NAMES), METRICS_DIR + "/"])
            raise UsageError(
                f"artifact name {name!r} is reserved for the S3 store (reserved: {reserved})"
            )
        return _join(rundir, *parts)

    def _copy_source(self, path: str, name: str) -> None:
        try:
            key = self._artifact_key(self._current(), name)
        except UsageError:
            return  # outside base_dir or named like a store file: it is still in _sources
        if os.path.isfile(path):
            self._upload(path, key)

    def _save_info(self, info: dict) -> None:
        if not info and self._info_text is None:
            return  # Sacred writes no info.json while the info is empty
        text = dumps(info)
        if text != self._info_text:
            self._put(INFO_FILE, text.encode())
            self._info_text = text

    # --- metrics ---

    def _save_metrics(self) -> None:
        self._put(METRICS_FILE, b"".join(spliced_log_lines(self._lines)))
        self._points_saved = self._points

    def _segment_numbers(self, rundir: str) -> list[int]:
        folder = _join(rundir, METRICS_DIR) + "/"
        numbers = []
        for key in self._keys(folder):
            stem = key[len(folder) :].removesuffix(".jsonl")
            if stem.isascii() and stem.isdigit():
                numbers.append(int(stem))
        return sorted(numbers)

    def _read_segments(self, rundir: str, numbers: list[int]) -> list[str]:
        keys = [_join(rundir, _segment_name(n)) for n in numbers]
        with ThreadPoolExecutor(max(1, min(_READERS, len(keys)))) as pool:
            contents = list(pool.map(self._get, keys))
        lines = []
        for key, data in zip(keys, contents):
            if data is None:
                log.warning("%s is gone: its metric points are skipped", self._where(key))
                continue
            lines += data.decode("utf-8", errors="replace").splitlines(keepends=True)
        return lines

    def _drop_segments(self) -> None:
        """Delete the log's segments now that metrics.json holds every point: the first
        one first, so that a reader meanwhile takes metrics.json, not the rest of the log."""
        try:
            numbers = self._segment_numbers(self._current())
            keys = [_join(self._current(), _segment_name(n)) for n in numbers]
            self._delete_keys(keys[:1])
            self._delete_keys(keys[1:])
        except ExpkitError as exc:
            log.debug("segments of %s not deleted: %s", self._current(), exc)
        self._segment, self._segment_lines = 0, None

    # --- errors ---

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error(exc, what) from None

    def _error(self, exc: BaseException, what: str) -> StoreError:
        """One line about a failed request: what, where and the service's reason."""
        reason = " ".join(str(exc).split())
        if type(exc).__name__ == "NoCredentialsError":
            reason += " (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        return StoreError(f"{what} in {self}: {type(exc).__name__}: {redact_url(reason)}")

    def __str__(self) -> str:
        return redact_url(self.url)


class S3Observer(StoreObserver):
    """Store runs in an S3 bucket under ``basedir``, in the file store's layout (Sacred's
    ``S3Observer``; the bucket is created when missing).

    ``region`` is the bucket's AWS region; without it boto3's configuration decides
    (``AWS_DEFAULT_REGION``, a profile). The service is AWS unless boto3's configuration
    names another (``AWS_ENDPOINT_URL``).
    """

    VERSION = "S3Observer-0.1.0"

    def __init__(
        self,
        bucket: str,
        basedir: str,
        resource_dir: str | None = None,
        source_dir: str | None = None,
        priority: int = DEFAULT_PRIORITY,
        region: str | None = None,
    ) -> None:
        storage = S3Storage(
            bucket, basedir, resource_dir=resource_dir, source_dir=source_dir, region=region
        )
        super().__init__(storage, priority=priority)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, S3Observer):
            return (self.bucket, self.basedir) == (other.bucket, other.basedir)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((S3Observer, self.bucket, self.basedir))

    def __repr__(self) -> str:
        return f"S3Observer({self.bucket!r}, {self.basedir!r})"

    bucket = property(lambda self: self.storage.bucket, doc="The bucket's name.")
    basedir = property(lambda self: self.storage.prefix, doc="The runs' folder in the bucket.")
    resource_dir = property(lambda self: self.storage.resource_dir, doc="Where resources go.")
    source_dir = property(lambda self: self.storage.source_dir, doc="Where sources go.")
    region = property(lambda self: self.storage.client.meta.region_name, doc="AWS region.")
    dir = property(lambda self: self.storage.dir, doc="The key prefix of the run being recorded.")

    # Sacred's views of the run being recorded, as the file store's observer has them.
    config = FileStorageObserver.config
    info = FileStorageObserver.info

    def save_json(self, obj: Any, filename: str) -> None:
        """Write ``obj`` as JSON to ``filename`` in the run's folder (Sacred's method)."""
        with self.storage._lock:
            key = self._target(filename)
            self.storage._put_key(key, dumps(obj).encode(), "application/json")

    def save_file(self, filename: str, target_name: str | None = None) -> None:
        """Upload ``filename`` into the run's folder as ``target_name`` (Sacred's method)."""
        if not os.path.isfile(filename):
            raise UsageError(f"save_file: {filename} is not a file")
        with self.storage._lock:
            self.storage._upload(filename, self._target(target_name or os.path.basename(filename)))

    def _target(self, name: str) -> str:
        return self.storage._artifact_key(self.storage._current(), name)


# --- names ------------------------------------------------------------------------------


def check_bucket(name: str) -> None:
    """Refuse a bucket name AWS refuses (Sacred's check): a :class:`BucketNameError`."""
    labels = name.split(".")
    valid = (
        3 <= len(name) <= 63
        and all(
            label and label[0] != "-" and label[-1] != "-" and all(_bucket_char(c) for c in label)
            for label in labels
        )
        and not _is_ip_address(name)
    )
    if not valid:
        raise BucketNameError(
            f"bucket name {name!r} does not follow AWS's rules: 3 to 63 lowercase letters, "
            "digits, '-' and '.', not like an IP address"
        )


class BucketNameError(UsageError, ValueError):
    """A bucket name AWS refuses (a ``ValueError``, as in Sacred)."""


def _bucket_char(c: str) -> bool:
    return c.isascii() and (c.isdigit() or c.islower() or c == "-")


def _is_ip_address(name: str) -> bool:
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True


def _clean_key(key: str | None, what: str) -> str:
    """A key prefix without slashes at either end; ``..`` is refused."""
    parts = [p for p in (key or "").split("/") if p]
    if ".." in parts or "." in parts:
        raise UsageError(f"S3 {what} {key!r} may not hold '.' or '..' parts")
    return "/".join(parts)


def _checked_name(run_id: Any) -> str:
    """``run_id`` as the name of its folder; a UsageError for ids no folder can have."""
    name = str(run_id)
    if (
        not name
        or name.startswith(("_", "."))
        or "/" in name
        or not name.isprintable()
        or len(name.encode()) > 200
    ):
        raise UsageError(
            f"run id {name!r} cannot be a folder in the S3 store: no '/', not starting with "
            "'_' or '.'"
        )
    return name


def _run_id(name: str) -> Any:
    """A folder's name as the run's id: a number where it is one (as Sacred's observer
    returned it), else the text."""
    if name.isascii() and name.isdigit() and str(int(name)) == name:
        return int(name)
    return name


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _relative(key: str, prefix: str) -> str:
    """``key`` relative to the runs' prefix, as the file store keeps its paths."""
    return posixpath.relpath(key, prefix) if prefix else key


def _segment_name(number: int) -> str:
    return f"{METRICS_DIR}/{number:06d}.jsonl"


def _size(lines: list[str]) -> int:
    return sum(len(line) for line in lines)


def _code(exc: Any) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", ""))


def _client(region: str | None, endpoint_url: str | None, quick: bool = False) -> Any:
    """An S3 client; a ``quick`` one waits 1 s to connect, 2 s for an answer, and never retries."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError("the S3 store needs boto3: pip install 'expkit[s3]'") from None
    options: dict[str, Any] = {
        "connect_timeout": 1 if quick else 5,
        "read_timeout": 2 if quick else 60,
        "retries": {"max_attempts": 1 if quick else 3, "mode": "standard"},
        "max_pool_connections": _READERS,
    }
    if endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        # S3-compatible services (Google Cloud Storage, older MinIO) refuse the checksum
        # trailers boto3 sends to AWS by default since 1.36.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    for name in _QUIET_LOGGERS:
        # At -l DEBUG botocore logs every request with its signed headers: a run's output
        # would keep the access key id, and grow by the store's own writes. Unless the user
        # set these loggers' levels, they log warnings only.
        quiet = logging.getLogger(name)
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)
    global _session
    with _session_lock:
        # One session for the process: it keeps the service's model, which costs a tenth of
        # a second to load; making clients from a session is not thread-safe.
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=Config(**options)
        )


_session: Any = None
_session_lock = threading.Lock()
_QUIET_LOGGERS = ("boto3", "botocore", "s3transfer")
