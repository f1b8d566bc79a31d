"""The stores the web view shows, each read through its plugin's reader and kept briefly.

Listing a store of 10,000 runs takes its reader a few hundred milliseconds, and every
open page asks again every few seconds; so each store's listing is kept and read anew
in the background once it is :data:`LISTING_AGE` seconds old (the page sees at most
one refresh's delay); one older than :data:`SHOWN_LISTING_AGE` is read before it is
shown. A store whose reader has a stamp (the file store's is its folder's and index's
times) is read anew only when the stamp changed or runs were not ended yet, and at least
every :data:`STAMPED_LISTING_AGE` seconds: a listing of 10,000 runs costs
half a second of the server's time, which the pages of one user would otherwise wait
behind every two seconds. Full records are kept for a page's burst of requests, longer
once the run has ended, and only while the reader's stamp is the one read with them: a
run deleted and replaced by a new run under its id is never shown as the old one. An
edit or a deletion reads the run anew and checks it, under the reader's lock, before it
writes. A reader is used by one thread at a time: the reader protocol promises nothing
about threads.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from expkit.records import RunRecord, edited_meta
from expkit.store import FINAL_STATUSES
from expkit.utils import redact_url

log = logging.getLogger("expkit")

LISTING_AGE = 2.0  # seconds a listing is shown before it is read again
# Older than this (nobody looked for a while), a listing is read before it is shown: the
# first page after a pause must not show a run RUNNING that ended minutes ago.
SHOWN_LISTING_AGE = 10.0
STAMPED_LISTING_AGE = 60.0  # the same for an unchanged stamp (a run.json edited by hand)
RECORD_AGE = 2.0  # seconds a full record is reused (a store with no stamp: any record)
# The same for a run that has ended, in a store whose stamp says it has not changed.
ENDED_RECORD_AGE = 30.0
KEPT_RECORDS = 8
KEPT_OPTIONS = 100_000  # runs whose options are kept (a few hundred bytes each)


@attrs.frozen(eq=False)
class Listing:
    """One reading of a store's runs (summaries), with what pages derived from it."""

    records: tuple[RunRecord, ...]
    read_at: float  # time.monotonic() of the reading
    error: str | None = None  # why the last refresh failed, shown above the table
    derived: dict = attrs.field(factory=dict)  # query -> selection, see views.select
    stamp: Any = None  # the reader's stamp just before the reading; None: it has none
    taken_at: float = 0.0  # time.monotonic() of the reading (read_at: of the last look)


class StoreView:
    """One store of the web view: its reader, its cached listing and records."""

    def __init__(
        self, index: int, url: str, reader: Any, prepare: Callable[[Listing], None] | None = None
    ) -> None:
        self.index = index
        self.url = redact_url(url)
        self.reader = reader
        # Called with each new listing before pages see it: derive what they ask for most.
        self.prepare = prepare
        self._reader_lock = threading.Lock()
        self._first_reading = threading.Lock()
        self._lock = threading.Lock()  # guards the fields below
        self._listing: Listing | None = None
        self._refreshing = False
        self._edits = 0  # edits and deletions so far: a listing read meanwhile may miss one
        # URL id -> (time read, the reader's stamp before, record); "01" and "1" may both
        # name stored run 1: edits and deletions forget every entry of the stored id.
        self._records: collections.OrderedDict[str, tuple[float, Any, RunRecord]] = (
            collections.OrderedDict()
        )
        self._series: dict[tuple[str, str, Any], tuple[RunRecord, Any]] = {}
        # (stored id, start time) -> the run's options, which never change: a listing's
        # summaries leave them out, and a running run's heartbeat interval is among them.
        self._options: dict[tuple[str, Any], dict] = {}

    def __repr__(self) -> str:
        return f"StoreView({self.index}, {self.url!r})"

    @property
    def editable(self) -> bool:
        """Whether the store's reader can edit comments and tags (``edit_run``)."""
        return self._can("edit", "edit_run")

    @property
    def deletable(self) -> bool:
        """Whether the store's reader can delete runs (``delete_run``)."""
        return self._can("delete", "delete_run")

    def _can(self, capability: str, method: str) -> bool:
        # Readers of the store layer say what they can; others have the method or not.
        capabilities = getattr(self.reader, "capabilities", None)
        if capabilities is not None:
            return capability in capabilities
        return callable(getattr(self.reader, method, None))

    def listing(self) -> Listing:
        """The runs as summaries: the kept listing, read anew in the background when old."""
        with self._lock:
            current = self._listing
            age = None if current is None else time.monotonic() - current.read_at
            if age is not None and age <= SHOWN_LISTING_AGE:
                if age > LISTING_AGE and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, daemon=True).start()
                return current
        with self._first_reading:  # one reading for all the requests that wait for it
            current = self._listing
            if current is None:
                listing = self._read_listing()
                with self._lock:
                    self._listing = listing
            elif time.monotonic() - current.read_at > SHOWN_LISTING_AGE:
                self._refresh()  # here, not in the background; by the stamp where there is one
            return self._listing

    def record(self, run_id: str) -> RunRecord:
        """Everything about run ``run_id`` (as typed in a URL); :class:`KeyError` if none."""
        key = str(run_id)
        stamp = self._stamp()  # before: a change made during the reading is seen next time
        found = self._kept(key, stamp)
        if found is not None:
            return found
        with self._reader_lock:
            found = self._kept(key, stamp)  # read meanwhile by the request this one waited for
            if found is not None:
                return found
            record = self._read(key)
        with self._lock:
            self._records[key] = (time.monotonic(), stamp, record)
            self._records.move_to_end(key)
            if len(self._options) >= KEPT_OPTIONS:
                self._options.clear()
            options = record.meta.get("options")
            self._options[(str(record.id), record.start_time)] = (
                options if isinstance(options, dict) else {}
            )
            while len(self._records) > KEPT_RECORDS:
                old, _ = self._records.popitem(last=False)
                self._drop_series(old)
        return record

    def options_of(self, summary: RunRecord) -> dict:
        """The options the run of ``summary`` was started with (``meta.options``), read
        whole once per run when the summary lacks them; ``{}`` if it is gone."""
        options = summary.meta.get("options")
        if isinstance(options, dict):
            return options
        key = (str(summary.id), summary.start_time)
        with self._lock:
            known = self._options.get(key)
        if known is not None:
            return known
        try:
            record = self.record(str(summary.id))
        except KeyError:
            return {}
        options = record.meta.get("options")
        return options if isinstance(options, dict) else {}

    def series(self, run_id: str, name: str, make: Callable[[dict], Any]) -> Any:
        """``make(metric)`` for metric ``name`` of the run, kept as long as its record."""
        record = self.record(run_id)
        metrics = record.metrics or {}
        if name not in metrics:
            raise KeyError(f"run {run_id} has no metric {name!r}")
        key = (str(run_id), name, make)  # a series' arrays and its summary are kept apart
        with self._lock:
            kept = self._series.get(key)
            if kept is not None and kept[0] is record:
                return kept[1]
        made = make(metrics[name])
        with self._lock:
            self._series[key] = (record, made)
        return made

    def edit(
        self,
        run_id: str,
        comment: str | None,
        tags: list[str] | None,
        check: Callable[[RunRecord], None] | None = None,
    ) -> RunRecord:
        """Store the run's comment and tags through the reader; the run as it is now.

        ``check`` is called with the run as the store holds it just before the edit (and
        no other edit of this view in between); it raises to refuse the edit."""
        with self._reader_lock:
            record = self._read(str(run_id))
            if check is not None:
                check(record)
            self.reader.edit_run(record.id, comment=comment, tags=tags)

        def edited(r: RunRecord) -> RunRecord:
            return attrs.evolve(r, meta=edited_meta(r.meta, comment, tags))

        self._replace(str(record.id), edited)
        return edited(record)

    def delete(self, run_id: str, check: Callable[[RunRecord], None] | None = None) -> None:
        """Delete the run from the store, after ``check`` of it as :meth:`edit` does."""
        with self._reader_lock:
            record = self._read(str(run_id))
            if check is not None:
                check(record)
            self.reader.delete_run(record.id)
        self._replace(str(record.id), None)

    def read_source(self, run_id: Any, name: str) -> bytes:
        """The stored source ``name`` of the run whose stored id is ``run_id``."""
        return self._call(self.reader.read_source, run_id, name)

    def read_artifact(self, run_id: Any, name: str) -> bytes:
        """The artifact ``name`` of the run whose stored id is ``run_id``."""
        return self._call(self.reader.read_artifact, run_id, name)

    def read_resource(self, run_id: Any, path: str) -> bytes:
        """The stored input file ``path`` of the run whose stored id is ``run_id``."""
        return self._call(self.reader.read_resource, run_id, path)

    def close(self) -> None:
        """Let go of the reader's connection, for readers that hold one."""
        close = getattr(self.reader, "close", None)
        if callable(close):
            with self._reader_lock:
                close()

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._reader_lock:
            return method(*args, **kwargs)

    def _read(self, key: str) -> RunRecord:
        """The run as the store holds it now (the caller holds the reader's lock)."""
        try:
            return _get_run(self.reader, key)
        except KeyError:
            raise KeyError(f"no run {key!r} in {self.url}") from None

    def _kept(self, key: str, stamp: Any) -> RunRecord | None:
        """The kept record of ``key``, if still young and read under the stamp ``stamp``."""
        with self._lock:
            kept = self._records.get(key)
        if kept is None:
            return None
        read_at, kept_stamp, record = kept
        age = time.monotonic() - read_at
        if kept_stamp is None or stamp is None:
            return record if age < RECORD_AGE else None  # no stamp: a change goes unseen
        if kept_stamp != stamp:
            return None  # a run started, ended, was edited or deleted (maybe this one)
        ended = record.status in FINAL_STATUSES
        return record if age < (ENDED_RECORD_AGE if ended else RECORD_AGE) else None

    def _read_listing(self) -> Listing:
        stamp = self._stamp()  # before: a change made during the reading is seen next time
        records = tuple(self._call(self.reader.list_runs))
        now = time.monotonic()
        listing = Listing(records, now, stamp=stamp, taken_at=now)
        if self.prepare is not None:
            self.prepare(listing)
        return listing

    def _stamp(self) -> Any:
        stamp = getattr(self.reader, "stamp", None)  # readers of the store layer have one
        if stamp is None:
            return None
        try:
            return self._call(stamp)
        except Exception:  # no stamp today: read the listing as if it had none
            return None

    def _unchanged(self, old: Listing | None) -> bool:
        """Whether ``old`` still lists the store's runs as they are, by the reader's stamp."""
        if old is None or old.stamp is None or old.error is not None:
            return False
        if time.monotonic() - old.taken_at > STAMPED_LISTING_AGE:
            return False
        if any(r.status not in FINAL_STATUSES for r in old.records):
            return False  # their heartbeats and ends need not change the stamp
        return self._stamp() == old.stamp

    def _refresh(self) -> None:
        with self._lock:
            edits, old = self._edits, self._listing
        try:
            if self._unchanged(old):
                fresh = attrs.evolve(old, read_at=time.monotonic())
            else:
                fresh = self._read_listing()
        except Exception as exc:  # the store went away: keep showing what was read, say why
            log.warning("expkit ui: reading %s failed: %s", self.url, exc)
            with self._lock:
                old = self._listing
                fresh = attrs.evolve(old, read_at=time.monotonic(), error=str(exc), derived={})
        with self._lock:
            if self._edits != edits:
                fresh = attrs.evolve(fresh, read_at=0.0)  # maybe read before an edit: again
            self._listing = fresh
            self._refreshing = False

    def _replace(self, key: str, change: Callable[[RunRecord], RunRecord] | None) -> None:
        """Apply an edit (``None``: a deletion) of stored run ``key`` to the kept listing,
        and forget the run's records under every id it was asked for by."""
        with self._lock:
            self._edits += 1
            for url_id in [k for k, v in self._records.items() if k == key or str(v[2].id) == key]:
                del self._records[url_id]
                self._drop_series(url_id)
            listing = self._listing
            if listing is None:
                return
            records = []
            for record in listing.records:
                if str(record.id) != key:
                    records.append(record)
                elif change is not None:
                    records.append(change(record))
            self._listing = attrs.evolve(listing, records=tuple(records), derived={})

    def _drop_series(self, key: str) -> None:
        for series_key in [k for k in self._series if k[0] == key]:
            del self._series[series_key]


def _get_run(reader: Any, run_id: str) -> RunRecord:
    """The run, its id as typed or, for stores with numeric ids, as a number."""
    candidates: list[Any] = [run_id]
    if run_id.lstrip("-").isdigit():
        candidates.append(int(run_id))
    for candidate in candidates:
        try:
            return reader.get_run(candidate)
        except KeyError:
            continue
    raise KeyError(run_id)
