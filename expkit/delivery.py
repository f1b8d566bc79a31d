"""Delivering a run's events to its stores so that a failing store loses nothing.

A store that raises is reported once. From then on its events go, in order, to a
spool folder on local disk (``.expkit/spool`` under the working directory, or
``$EXPKIT_SPOOL``), and a background thread replays them whenever the store
answers again. What is still spooled when the run ends stays there: the next run
into the same store replays it, and so does ``expkit sync SPOOL STORE``. The run
itself never waits on a broken store longer than the store's own time-outs.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expkit.errors import UsageError
from expkit.observers import RunObserver, columns_to_sacred
from expkit.serialize import to_data
from expkit.utils import redact_url

log = logging.getLogger("expkit")

# Events raised straight from what the user asked for: a refusal goes back to the user.
_USER_EVENTS = frozenset({"started_event", "queued_event", "artifact_event", "resource_event"})
_RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
_OLD_RUNS_WAIT = 30.0  # how long the end of a run waits for older spooled runs


def spool_root() -> Path:
    """Where undelivered events wait: ``$EXPKIT_SPOOL`` or ``.expkit/spool`` here."""
    return Path(os.environ.get("EXPKIT_SPOOL") or Path.cwd() / ".expkit" / "spool")


def store_key(store: Any, url: str | None) -> str:
    """A name for the store's spool folder that never contains its password."""
    ident = url or f"{type(store).__module__}.{type(store).__qualname__}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return f"{type(store).__name__}-{digest}"


def _encode(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return to_data(value)


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$datetime"}:
            return datetime.datetime.fromisoformat(value["$datetime"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class SpoolBusy(Exception):
    """Another process (or store) is writing or replaying this spooled run."""


class SpooledRun:
    """The undelivered events of one run for one store, in a folder of their own.

    Whoever writes or replays a spooled run holds an exclusive lock on its folder, so that
    a run still spooling is never replayed (and removed) under its feet.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.events = folder / "events.jsonl"
        self._lock_fd: int | None = None
        # Read once the lock is ours: only its holder changes it, through update_meta.
        self._meta: dict | None = None

    def try_lock(self) -> bool:
        """Take the folder's lock unless someone else holds it; True when it is ours."""
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self._meta = None  # whoever held it before may have changed it
        return True

    def unlock(self) -> None:
        """Let others replay this run."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @classmethod
    def create(cls, root: Path, meta: dict) -> SpooledRun:
        """A new spool folder holding ``meta`` (which store, which run)."""
        # Named by time to the microsecond, so that a listing is in the order they were made.
        folder = root / f"{datetime.datetime.now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        spooled = cls(folder)
        spooled.try_lock()
        (folder / "meta.json").write_text(json.dumps(_encode(meta), indent=2))
        spooled._meta = dict(meta)
        return spooled

    @property
    def meta(self) -> dict:
        """Which store and run these events belong to."""
        if self._meta is None:
            self._meta = _decode(json.loads((self.folder / "meta.json").read_text()))
        return dict(self._meta)

    def update_meta(self, **changes: Any) -> None:
        """Change entries of the meta data (e.g. the id a store gave the run)."""
        meta = self.meta
        meta.update(changes)
        tmp = self.folder / "meta.json.tmp"
        tmp.write_text(json.dumps(_encode(meta), indent=2))
        os.replace(tmp, self.folder / "meta.json")
        self._meta = meta

    def append(self, method: str, kwargs: dict) -> None:
        """Add one event; files the event names are copied in, so they survive the run."""
        if method == "artifact_event" or method == "resource_event":
            kwargs = dict(kwargs)
            source = kwargs["filename"]
            kept = self.folder / "files" / hashlib.md5(source.encode()).hexdigest()
            kept.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, kept)
            kwargs["filename"] = str(kept)
            kwargs.setdefault("original", source)
        line = json.dumps({"method": method, "kwargs": _encode(kwargs)})
        with open(self.events, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[tuple[str, dict]]:
        """The events in order; a half-written last line (a killed process) is skipped."""
        if not self.events.exists():
            return []
        out = []
        for line in self.events.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.append((entry["method"], _decode(entry["kwargs"])))
        return out

    def remove(self) -> None:
        """Forget the run: every event reached the store."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.unlock()


def replay(spooled: SpooledRun, store: Any) -> Any:
    """Send a spooled run's events to ``store`` in order; return the run's id in that store.

    When the store had accepted the run's start before it failed, the run is resumed
    under its id (``store.resume(id)``), so nothing is recorded twice. A replay cut
    short (the store failed again, the process ended) goes on where it stopped.
    """
    held = getattr(spooled, "_lock_fd", None) is not None  # the owner replays its own spool
    if not spooled.try_lock():
        raise SpoolBusy(f"{spooled.folder} is being written or replayed by another process")
    try:
        meta = spooled.meta
        if meta.get("started") and meta.get("store_id") is not None and hasattr(store, "resume"):
            store.resume(meta["store_id"])
        done = meta.get("delivered", 0)
        for number, (method, kwargs) in enumerate(spooled.read()):
            if number >= done:
                _deliver(spooled, store, method, kwargs)
                spooled.update_meta(delivered=number + 1)
    except BaseException:
        if not held:
            spooled.unlock()
        raise
    run_id = spooled.meta.get("store_id")
    spooled.remove()
    return run_id


def _deliver(spooled: SpooledRun, store: Any, method: str, kwargs: dict) -> None:
    original = kwargs.pop("original", None)
    if method == "resource_event" and original and hasattr(store, "copied_resource_event"):
        # The file is the spool's copy: the store records the path the run read.
        method, kwargs = "copied_resource_event", {**kwargs, "original": original}
    if method == "log_metric_columns" and not hasattr(store, method):
        # Replayed into a store of another kind (expkit sync): it takes Sacred's shape.
        method = "log_metrics"
        kwargs = {"metrics_by_name": columns_to_sacred(kwargs["columns"]), "info": kwargs["info"]}
    if method not in ("started_event", "queued_event"):
        getattr(store, method)(**kwargs)
        return
    meta = spooled.meta
    if meta.get("started") and hasattr(store, "resume"):
        return  # resumed instead
    if kwargs.get("_id") is None:
        kwargs["_id"] = meta.get("store_id")
    try:
        result = getattr(store, method)(**kwargs)
    except UsageError:
        if kwargs["_id"] is None:
            raise
        kwargs["_id"] = None  # the id is taken in this store: let it choose one
        result = getattr(store, method)(**kwargs)
    spooled.update_meta(started=True, store_id=result if result is not None else kwargs["_id"])


def pending(root: Path, key: str) -> list[SpooledRun]:
    """The spooled runs waiting for the store with spool name ``key``, oldest first."""
    folder = root / key
    if not folder.is_dir():
        return []
    return [SpooledRun(p) for p in sorted(folder.iterdir()) if (p / "meta.json").exists()]


class GuardedStore:
    """One store of one run: events go straight to it while it works, else to the spool."""

    def __init__(
        self, store: Any, url: str | None = None, factory: Callable[[], Any] | None = None
    ) -> None:
        self.store = store
        self.url = url
        self.factory = factory  # makes another store like this one, to replay old runs
        self.name = store.name if isinstance(store, RunObserver) else type(store).__name__
        self.root = spool_root() / store_key(store, url)
        self.started = False  # the store accepted started_event/queued_event
        self.store_id: Any = None
        self.spooled: SpooledRun | None = None
        self._lock = threading.RLock()
        self._retry: threading.Thread | None = None
        self._stop = threading.Event()
        self._old_runs: threading.Thread | None = None
        self._replay_old()

    def __repr__(self) -> str:
        return f"<GuardedStore {self.name} {redact_url(self.url or '')}>"

    def call(self, method: str, kwargs: dict) -> Any:
        """Deliver one event, or spool it when the store failed; returns the store's answer."""
        fn = getattr(self.store, method, None)
        if fn is None:
            return None
        with self._lock:
            if self.spooled is None:
                try:
                    result = fn(**kwargs)
                except UsageError:
                    if method in _USER_EVENTS:
                        raise  # a taken id, a bad artifact name: the user must hear of it
                    self._fail(method, UsageError("refused"))
                except Exception as exc:
                    self._fail(method, exc)
                else:
                    if method in ("started_event", "queued_event"):
                        self.started, self.store_id = True, result
                    return result
            if method != "join":
                self._spool(method, kwargs)
            return None

    def _fail(self, method: str, exc: Exception) -> None:
        log.warning(
            "store %s failed (%s: %s); its events are kept in %s and retried",
            self.name,
            method,
            redact_url(str(exc)),
            self.root,
        )
        meta = {
            "store": self.name,
            "url": redact_url(self.url) if self.url else None,
            "started": self.started,
            "store_id": self.store_id,
        }
        try:
            self.spooled = SpooledRun.create(self.root, meta)
        except OSError as err:
            log.error("cannot spool the events of store %s: %s", self.name, err)
            self.spooled = _MemorySpool(meta)
        self._start_retry()

    def _spool(self, method: str, kwargs: dict) -> None:
        assert self.spooled is not None
        try:
            self.spooled.append(method, kwargs)
        except OSError as err:
            log.error("cannot spool %s for store %s: %s", method, self.name, err)

    def _start_retry(self) -> None:
        if self._retry is None:
            self._retry = threading.Thread(
                target=self._retry_loop, name=f"expkit-retry-{self.name}", daemon=True
            )
            self._retry.start()

    def _retry_loop(self) -> None:
        attempt = 0
        while self.spooled is not None:
            delay = _RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)]
            if self._stop.wait(delay):
                return
            attempt += 1
            self.try_replay()

    def try_replay(self) -> bool:
        """Replay what is spooled now; True when the store took everything."""
        with self._lock:
            if self.spooled is None:
                return True
            try:
                run_id = replay(self.spooled, self.store)
            except Exception as exc:
                log.debug("store %s still failing: %s", self.name, redact_url(str(exc)))
                return False
            self.started, self.store_id, self.spooled = True, run_id, None
            log.warning("store %s is back: the spooled events were delivered", self.name)
            return True

    def finish(self) -> None:
        """At the end of the run: one more try if the store answers, then leave the rest."""
        if self._old_runs is not None:
            # Older runs being delivered in the background must not be cut off at exit.
            self._old_runs.join(timeout=_OLD_RUNS_WAIT)
        # Stop the background retries first, so that what is spooled stays as it is now.
        self._stop.set()
        if self._retry is not None:
            self._retry.join(timeout=_OLD_RUNS_WAIT)
        if self.spooled is None:
            return
        if self._reachable():
            self.try_replay()
        if self.spooled is not None:
            if isinstance(self.spooled, SpooledRun):
                self.spooled.unlock()  # from now on the next run or expkit sync may replay it
            where = getattr(self.spooled, "folder", "memory")
            log.warning(
                "store %s did not come back: the run is kept in %s; "
                "replay it with 'expkit sync %s %s' or by the next run into the store",
                self.name,
                where,
                self.root,
                redact_url(self.url or "STORE"),
            )

    def _reachable(self) -> bool:
        """Whether a last try is worth it: ask the store if it can say quickly, else try."""
        ping = getattr(self.store, "ping", None)
        if ping is None:
            return True
        try:
            return bool(ping())
        except Exception:
            return False

    def _replay_old(self) -> None:
        """Deliver runs spooled by earlier runs into this store, in the background."""
        factory = self.factory
        if factory is None:
            return
        old = pending(self.root.parent, self.root.name)
        if not old:
            return

        def work() -> None:
            for spooled in old:
                try:
                    replay(spooled, factory())
                except SpoolBusy:
                    continue  # a run still going, or another process replaying it
                except Exception as exc:
                    log.debug("an earlier spooled run is not delivered yet: %s", exc)
                    return
            log.warning("store %s: %d spooled run(s) from earlier delivered", self.name, len(old))

        self._old_runs = threading.Thread(target=work, name="expkit-replay", daemon=True)
        self._old_runs.start()


class _MemorySpool:
    """The last resort when the spool folder cannot be written: keep events in memory."""

    def __init__(self, meta: dict) -> None:
        self._meta = dict(meta)
        self._events: list[tuple[str, dict]] = []

    @property
    def meta(self) -> dict:
        return dict(self._meta)

    def update_meta(self, **changes: Any) -> None:
        self._meta.update(changes)

    def try_lock(self) -> bool:
        return True

    def unlock(self) -> None:
        pass

    def append(self, method: str, kwargs: dict) -> None:
        self._events.append((method, dict(kwargs)))

    def read(self) -> list[tuple[str, dict]]:
        return [(m, dict(k)) for m, k in self._events]

    def remove(self) -> None:
        self._events.clear()
