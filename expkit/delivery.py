"""Delivering a run's events to its stores so that a failing store loses nothing.

A store that raises is reported once. From then on its events go, in order, to a
spool folder on local disk (``.expkit/spool`` under the working directory, or
``$EXPKIT_SPOOL``), and a background thread replays them whenever the store
answers again. What is still spooled when the run ends stays there: the next run
into the same store replays it, and so does ``expkit sync SPOOL STORE``. The run
itself never waits on a broken store longer than the store's own time-outs.

A spooled run always starts with the run's started (or queued) event, so that it can
be recreated in any store, a fresh or another one. A store that refuses the run's
data (a value it cannot write) will refuse it again: such a run is kept, marked
undeliverable in its ``meta.json``, reported once, and left out of later automatic
replays; ``expkit sync`` lists it.
"""

from __future__ import annotations

import contextlib
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

import attrs

from expkit.errors import ExpkitError, ExpkitInterrupt, UsageError
from expkit.observers import RunObserver, columns_to_sacred
from expkit.serialize import to_data
from expkit.signals import interrupt_deferred
from expkit.utils import has_control_chars, printable, redact_url

log = logging.getLogger("expkit")

# Events raised straight from what the user asked for: a refusal goes back to the user.
_USER_EVENTS = frozenset({"started_event", "queued_event", "artifact_event", "resource_event"})
_START_EVENTS = ("started_event", "queued_event")
# Errors of the data, not of the connection: the same event fails the same way every time.
_REFUSALS = (UsageError, ValueError, TypeError, RecursionError, OverflowError)
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


def store_target(url: str | None) -> str | None:
    """Which store ``url`` names, comparable between processes and free of passwords."""
    if not url:
        return None
    if "://" not in url or url.startswith("file://"):
        return "file://" + os.path.abspath(url.removeprefix("file://"))
    return redact_url(url)


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` says the store refused the data (retrying cannot help), not that it
    could not be reached."""
    return isinstance(exc, _REFUSALS) and not isinstance(exc, OSError)


def _reason(exc: BaseException) -> str:
    """``exc`` as one line without passwords: ``Type: message``."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ExpkitError) and text:
        return redact_url(text)
    return redact_url(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


# Ints this long are written in hex: in decimal, json (and Python's int()) refuse them.
_LONG_INT_BITS = 10_000


def _encode(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"$int": hex(value)} if value.bit_length() > _LONG_INT_BITS else value
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return to_data(value)


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$datetime"}:
            return datetime.datetime.fromisoformat(value["$datetime"])
        if set(value) == {"$int"}:
            return int(value["$int"], 16)
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class SpoolBusy(Exception):
    """Another process (or store) is writing or replaying this spooled run."""


class Undeliverable(ExpkitError):
    """The store refused a spooled run's data; the run is kept, marked so in its meta."""


class StoreLostRun(ExpkitError):
    """The store no longer holds the run it had accepted; ``expkit sync`` recreates it."""


@attrs.frozen
class StoreOutcome:
    """Where one run went for one store, as :meth:`GuardedStore.outcome` tells it."""

    store: str  # the store's URL, its password redacted (or the store's class name)
    state: str  # "stored", "spooled" (expkit sync delivers it), "undeliverable" or "lost"
    run_id: Any = None  # the run's id in the store, when the store has the run
    folder: str | None = None  # spooled: the store's spool folder; undeliverable: the run's
    reason: str | None = None  # why the run is not in the store, one line

    @property
    def missing(self) -> bool:
        """Whether the store does not have the run and will not get it by itself: refused
        (undeliverable) or lost. A spooled run is safe: ``expkit sync`` delivers it."""
        return self.state in ("undeliverable", "lost")


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

    @property
    def failed(self) -> str | None:
        """Why no store can take this run (it was marked undeliverable), else ``None``."""
        return self.meta.get("failed")

    def mark_undeliverable(self, reason: str) -> None:
        """Keep the run but leave it out of automatic replays; ``expkit sync`` lists it."""
        self.update_meta(failed=reason, failed_time=datetime.datetime.now())

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


def replay(
    spooled: SpooledRun,
    store: Any,
    *,
    url: str | None = None,
    reader: Any = None,
    recreate: bool = False,
    live: bool = False,
) -> Any:
    """Send a spooled run's events to ``store`` in order; return the run's id in that store.

    When the store (``url``) had accepted the run's start before it failed, and still holds
    it (``reader``, when given, shows the same start time under that id), the run is resumed
    under its id (``store.resume(id)``), so nothing is recorded twice. Else the run is sent
    from its start: always when the store never had it; when the store had it and lost it,
    only with ``recreate`` (``expkit sync``; a store that went away may yet come back).
    ``live`` says that ``store`` is the very object that took the run's start (the run's own
    retries): it goes on without ``resume`` if it has none.
    A replay cut short (the store failed again, the process ended) goes on where it stopped.
    A store that refuses the run's data marks it undeliverable (:class:`Undeliverable`).
    """
    held = getattr(spooled, "_lock_fd", None) is not None  # the owner replays its own spool
    if not spooled.try_lock():
        raise SpoolBusy(f"{spooled.folder} is being written or replayed by another process")
    try:
        events = spooled.read()
        if not _resume(spooled, store, url, reader, events, live):
            _restart(spooled, events, recreate)
        done = spooled.meta.get("delivered", 0)
        for number, (method, kwargs) in enumerate(events):
            if number >= done:
                try:
                    _deliver(spooled, store, method, kwargs, url)
                except Exception as exc:
                    if not _refused(exc):
                        raise
                    reason = f"the store refused its {method}: {_reason(exc)}"
                    spooled.mark_undeliverable(reason)
                    raise Undeliverable(reason) from exc
                spooled.update_meta(delivered=number + 1)
    except BaseException:
        if not held:
            spooled.unlock()
        raise
    run_id = spooled.meta.get("store_id")
    spooled.remove()
    return run_id


def _resume(
    spooled: Any, store: Any, url: str | None, reader: Any, events: list, live: bool
) -> bool:
    """Go on with the run in ``store`` where it stopped, if the store holds it; True if so."""
    meta = spooled.meta
    run_id = meta.get("store_id")
    if not meta.get("started") or run_id is None:
        return False
    if not hasattr(store, "resume"):
        return live  # only the object that took the start knows the run
    target = store_target(url)
    if target and meta.get("target") and target != meta["target"]:
        return False  # another store: its run with this id, if any, is another run
    if reader is not None and not _same_run(reader, run_id, events):
        return False
    try:
        store.resume(run_id)
    except UsageError:
        return False  # the store no longer has the run
    return True


def _same_run(reader: Any, run_id: Any, events: list) -> bool:
    """Whether the store's run ``run_id`` is this spooled run (the same start time)."""
    start = events[0][1].get("start_time") if events and events[0][0] in _START_EVENTS else None
    try:
        record = reader.get_run(run_id)
    except KeyError:
        return False
    if start is None or record.start_time is None:
        return True  # nothing to tell them apart by (a queued run): as the store says
    # MongoDB keeps times to the millisecond.
    return abs(record.start_time - start) < datetime.timedelta(milliseconds=1)


def _restart(spooled: Any, events: list, recreate: bool) -> None:
    """Prepare to send the run from its start: the store does not hold it (any more)."""
    meta = spooled.meta
    if not events or events[0][0] not in _START_EVENTS:
        reason = "it lacks the start of the run (spooled by an older expkit)"
        spooled.mark_undeliverable(reason)
        raise Undeliverable(reason)
    if meta.get("started") and not recreate:
        raise StoreLostRun(
            f"the store no longer holds run {meta.get('store_id')!r}; "
            "'expkit sync' sends the whole run again"
        )
    if meta.get("delivered", 0) or meta.get("started"):
        spooled.update_meta(started=False, delivered=0)


def _deliver(spooled: Any, store: Any, method: str, kwargs: dict, url: str | None) -> None:
    original = kwargs.pop("original", None)
    if method == "resource_event" and original and hasattr(store, "copied_resource_event"):
        # The file is the spool's copy: the store records the path the run read.
        method, kwargs = "copied_resource_event", {**kwargs, "original": original}
    if method == "log_metric_columns" and not hasattr(store, method):
        # Replayed into a store of another kind (expkit sync): it takes Sacred's shape.
        method = "log_metrics"
        kwargs = {"metrics_by_name": columns_to_sacred(kwargs["columns"]), "info": kwargs["info"]}
    if method not in _START_EVENTS:
        getattr(store, method)(**kwargs)
        return
    if kwargs.get("_id") is None:
        kwargs["_id"] = spooled.meta.get("store_id")  # the id the run had: kept where free
    try:
        result = getattr(store, method)(**kwargs)
    except UsageError:
        if kwargs["_id"] is None:
            raise
        kwargs["_id"] = None  # the id is taken in this store: let it choose one
        result = getattr(store, method)(**kwargs)
    run_id = result if result is not None else kwargs["_id"]
    spooled.update_meta(started=True, store_id=run_id, target=store_target(url))


def pending(root: Path, key: str) -> list[SpooledRun]:
    """The spooled runs waiting for the store with spool name ``key``, oldest first."""
    folder = root / key
    if not folder.is_dir():
        return []
    runs = [SpooledRun(p) for p in sorted(folder.iterdir()) if (p / "meta.json").exists()]
    return [run for run in runs if not _failed(run)]


def _failed(spooled: SpooledRun) -> bool:
    try:
        return bool(spooled.failed)
    except (OSError, ValueError):
        return True  # a meta.json no one can read: expkit sync lists it


class GuardedStore:
    """One store of one run: events go straight to it while it works, else to the spool."""

    def __init__(
        self, store: Any, url: str | None = None, factory: Callable[[], Any] | None = None
    ) -> None:
        self.store = store
        self.url = url
        self.factory = factory  # makes another store like this one, to replay old runs
        # Makes the store's reader, to check that a run to resume is this one.
        self.reader_factory: Callable[[], Any] | None = getattr(store, "_expkit_reader", None)
        self.name = store.name if isinstance(store, RunObserver) else type(store).__name__
        self.root = spool_root() / store_key(store, url)
        self.started = False  # the store accepted started_event/queued_event
        self.refused = False  # the store refused started_event/queued_event: it gets no more
        self.store_id: Any = None
        self.spooled: SpooledRun | _MemorySpool | None = None
        self.error: str | None = None  # the store's first failure, one line
        self._history = _History()  # what the store took: a spool begins with it
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
        if fn is None or self.refused:
            return None
        with self._lock:
            if self.spooled is None:
                try:
                    result = fn(**kwargs)
                except UsageError:
                    if method in _START_EVENTS:
                        # The store refused the run itself (a taken or malformed id): it
                        # will never take its events, so none are kept for it.
                        self.refused = True
                    if method in _USER_EVENTS:
                        raise  # a taken id, a bad artifact name: the user must hear of it
                    self._fail(method, UsageError("refused"))
                except ExpkitInterrupt as exc:
                    # The user's interrupt (a time limit's signal) landed while the store
                    # wrote. During the run it is meant for the run, not a failure of the
                    # store; once the run ended, the event is kept and retried. (SIGTERM
                    # and Ctrl-C are no Exception: they pass by themselves.)
                    if method in _USER_EVENTS:
                        raise
                    self._fail(method, exc)
                except Exception as exc:
                    self._fail(method, exc)
                except BaseException as exc:
                    if method in _START_EVENTS:
                        # Ctrl-C or SIGTERM while the store waited to take the run's start
                        # (a locked database): the start is kept, so that the run can still
                        # be delivered whole. (A run's end defers them; during the run they
                        # are the run's, no failure of the store.)
                        self._fail(method, exc)
                        self._spool(method, kwargs)
                        self._history.add(method, kwargs)
                        if interrupt_deferred():
                            return None  # raised by the run once every store has the start
                    raise
                else:
                    if method in _START_EVENTS:
                        return self._started(method, kwargs, result)
                    self._history.add(method, kwargs)
                    return result
            if method != "join":
                self._spool(method, kwargs)
                self._history.add(method, kwargs)  # the spool goes to the store, or stays
            return None

    def _started(self, method: str, kwargs: dict, result: Any) -> Any:
        """Note the store's id for the run; an id with control characters is refused."""
        self._history.add(method, kwargs)
        if isinstance(result, str) and has_control_chars(result):
            # Ids are printed and name folders: one that can rewrite the terminal is no id.
            bad = f"it named the run '{printable(result)}', an id with control characters"
            self._fail(method, UsageError(bad))
            self._spool(method, kwargs)
            return None
        self.started = True
        self.store_id = result if result is not None else kwargs.get("_id")
        return result

    def _fail(self, method: str, exc: BaseException) -> None:
        self.error = _reason(exc)
        meta = {
            "store": self.name,
            "url": redact_url(self.url) if self.url else None,
            "target": store_target(self.url),
            "started": self.started,
            "store_id": self.store_id,
        }
        try:
            self.spooled = SpooledRun.create(self.root, meta)
        except OSError as err:
            log.error("cannot spool the events of store %s: %s", self.name, err)
            self.spooled = _MemorySpool(meta)
        if self.started:
            # What the store took goes first, so that any other store can take the whole run.
            taken = self._history.events()
            for event in taken:
                self._spool(*event)
            with contextlib.suppress(OSError):
                self.spooled.update_meta(delivered=len(taken))
        if _refused(exc):
            self._give_up(f"the store refused its {method}: {self.error}")
            return
        log.warning(
            "store %s failed (%s: %s); its events are kept in %s and retried",
            self.name,
            method,
            self.error,
            self.root,
        )
        self._start_retry()

    def _give_up(self, reason: str) -> None:
        """The store refuses this run: keep it, marked undeliverable, and say so once."""
        assert self.spooled is not None
        with contextlib.suppress(OSError):
            self.spooled.mark_undeliverable(reason)
        where = getattr(self.spooled, "folder", "memory")
        log.error(
            "store %s cannot take this run (%s); it is kept in %s and not retried: "
            "'expkit sync %s STORE' lists it",
            self.name,
            reason,
            where,
            self.root,
        )

    def _spool(self, method: str, kwargs: dict) -> None:
        assert self.spooled is not None
        try:
            self.spooled.append(method, kwargs)
        except OSError as err:
            # A full disk: a spool short of this event must not be delivered as the whole
            # run. The events go on in memory, those in the folder with them.
            log.error("cannot spool %s for store %s: %s", method, self.name, err)
            self.spooled = _MemorySpool.taking_over(self.spooled, method, kwargs)
        except Exception as err:  # a value no spool can keep, e.g. a list that holds itself
            if not self._undeliverable():
                self._give_up(f"its {method} cannot be kept: {_reason(err)}")

    def _undeliverable(self) -> bool:
        try:
            return bool(self.spooled is not None and self.spooled.failed)
        except (OSError, ValueError):
            return False

    def _start_retry(self) -> None:
        if self._retry is None:
            self._retry = threading.Thread(
                target=self._retry_loop, name=f"expkit-retry-{self.name}", daemon=True
            )
            self._retry.start()

    def _retry_loop(self) -> None:
        attempt = 0
        while self.spooled is not None and not self._undeliverable():
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
            if self._undeliverable():
                return False
            reader = None
            try:
                if self.spooled.meta.get("started"):
                    reader = reader_or_none(self.reader_factory)
                run_id = replay(self.spooled, self.store, url=self.url, reader=reader, live=True)
            except Undeliverable as exc:
                self._give_up(str(exc))
                return False
            except Exception as exc:
                log.debug("store %s still failing: %s", self.name, _reason(exc))
                return False
            finally:
                _close(reader)
            self.started, self.store_id, self.spooled = True, run_id, None
            log.warning("store %s is back: the spooled events were delivered", self.name)
            return True

    def finish(self) -> None:
        """At the end of the run: one more try if the store answers, then leave the rest."""
        if self._old_runs is not None:
            # Older runs being delivered in the background must not be cut off at exit.
            self._old_runs.join(timeout=_OLD_RUNS_WAIT)
        if self._stop.is_set():
            return  # finished already
        # Stop the background retries first, so that what is spooled stays as it is now.
        self._stop.set()
        if self._retry is not None:
            self._retry.join(timeout=_OLD_RUNS_WAIT)
        if self.spooled is None:
            return
        if not self._undeliverable() and self._reachable():
            self.try_replay()
        if self.spooled is None:
            return
        self.spooled.unlock()  # from now on `expkit sync` (or the next run) may take it
        if self._undeliverable() or isinstance(self.spooled, _MemorySpool):
            return  # said already
        log.warning(
            "store %s did not come back: the run is kept in %s; "
            "replay it with 'expkit sync %s %s' or by the next run into the store",
            self.name,
            self.spooled.folder,
            self.root,
            redact_url(self.url or "STORE"),
        )

    def outcome(self) -> StoreOutcome:
        """Where this run went for this store: stored, spooled, undeliverable or lost."""
        store = redact_url(self.url) if self.url else self.name
        spooled = self.spooled
        if spooled is None:
            return StoreOutcome(store, "stored", run_id=self.store_id)
        if isinstance(spooled, _MemorySpool):
            reason = f"{self.error}; the spool folder {self.root} could not be written"
            return StoreOutcome(store, "lost", reason=reason)
        if self._undeliverable():
            return StoreOutcome(
                store, "undeliverable", folder=str(spooled.folder), reason=spooled.failed
            )
        run_id = self.store_id if self.started else None
        return StoreOutcome(store, "spooled", run_id, folder=str(self.root), reason=self.error)

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
            delivered = 0
            reader = reader_or_none(self.reader_factory)
            try:
                for spooled in old:
                    store = factory()
                    try:
                        replay(spooled, store, url=self.url, reader=reader)
                    except (SpoolBusy, StoreLostRun):
                        continue  # still being written, or waiting for `expkit sync`
                    except Undeliverable as exc:
                        log.error(
                            "store %s cannot take the run spooled in %s (%s); it is kept "
                            "there and not retried: 'expkit sync %s STORE' lists it",
                            self.name,
                            spooled.folder,
                            exc,
                            self.root,
                        )
                        continue
                    except Exception as exc:
                        log.debug("an earlier spooled run is not delivered yet: %s", _reason(exc))
                        return
                    finally:
                        _close(store)
                    delivered += 1
            finally:
                _close(reader)
                if delivered:
                    log.warning(
                        "store %s: %d spooled run(s) from earlier delivered", self.name, delivered
                    )

        self._old_runs = threading.Thread(target=work, name="expkit-replay", daemon=True)
        self._old_runs.start()


def reader_or_none(factory: Callable[[], Any] | None) -> Any:
    """A reader of the store from ``factory``, or ``None`` when there is none to be had
    (e.g. a folder store whose folder is gone: it holds no run to resume either)."""
    if factory is None:
        return None
    try:
        return factory()
    except Exception as exc:
        log.debug("no reader to check a run to resume: %s", _reason(exc))
        return None


class _History:
    """What a store took, kept to start a spool with: the run's start, its metric points,
    artifacts and resources, and the latest heartbeat (which holds all output and info)."""

    def __init__(self) -> None:
        self.start: tuple[str, dict] | None = None
        # name -> column -> the lists as delivered: kept, never copied, so that keeping
        # them costs a run no time (a point's memory lives on, ~100 bytes).
        self.columns: dict[str, dict[str, list[list]]] = {}
        self.info: dict = {}
        self.others: list[tuple[str, dict]] = []  # in order: Sacred-shaped metrics, files
        self.beat: dict | None = None

    def add(self, method: str, kwargs: dict) -> None:
        """Note one event the store took (or will take from the spool)."""
        if method in _START_EVENTS:
            self.start = (method, dict(kwargs))
        elif method == "heartbeat_event":
            self.beat = dict(kwargs)
        elif method == "log_metric_columns":
            for name, series in kwargs["columns"].items():
                kept = self.columns.setdefault(name, {"steps": [], "values": [], "timestamps": []})
                for key, chunks in kept.items():
                    chunks.append(series[key])
            self.info = kwargs["info"]
        elif method in ("log_metrics", "artifact_event", "resource_event"):
            self.others.append((method, dict(kwargs)))

    def events(self) -> list[tuple[str, dict]]:
        """The events that recreate what the store took, in an order any store takes."""
        if self.start is None:
            return []
        events = [self.start]
        if self.columns:
            columns = {
                name: {key: [x for chunk in chunks for x in chunk] for key, chunks in kept.items()}
                for name, kept in self.columns.items()
            }
            events.append(("log_metric_columns", {"columns": columns, "info": self.info}))
        events += self.others
        if self.beat is not None:
            events.append(("heartbeat_event", self.beat))
        return events


def _close(store_or_reader: Any) -> None:
    """Let go of a store's or a reader's connection, for those that hold one."""
    close = getattr(store_or_reader, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


def _set_aside(spooled: SpooledRun, reason: str) -> None:
    """Keep ``spooled`` from being delivered as if whole: marked (``expkit sync`` lists it),
    or, on a disk too full for that, its meta renamed out of sight."""
    try:
        spooled.mark_undeliverable(reason)
    except OSError:
        with contextlib.suppress(OSError):
            os.replace(spooled.folder / "meta.json", spooled.folder / "meta.partial")


class _MemorySpool:
    """The last resort when the spool folder cannot be written: keep events in memory."""

    def __init__(self, meta: dict) -> None:
        self._meta = dict(meta)
        self._events: list[tuple[str, dict]] = []
        self._folder: SpooledRun | None = None  # the spool it took over, removed with it

    @classmethod
    def taking_over(cls, spooled: SpooledRun, method: str, kwargs: dict) -> _MemorySpool:
        """A memory spool that goes on from ``spooled``, which could not take ``method``."""
        try:
            memory, events = cls(spooled.meta), spooled.read()
        except (OSError, ValueError):
            memory, events = cls({}), []
        memory._events = [*events, (method, dict(kwargs))]
        memory._folder = spooled
        _set_aside(spooled, f"the spool could not take its {method}: it holds the run up to there")
        return memory

    @property
    def meta(self) -> dict:
        return dict(self._meta)

    @property
    def failed(self) -> str | None:
        return self._meta.get("failed")

    def mark_undeliverable(self, reason: str) -> None:
        self._meta["failed"] = reason

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
        if self._folder is not None:
            self._folder.remove()
