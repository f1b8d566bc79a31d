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
once the run has ended. A reader is used by one thread at a time: the reader protocol
promises nothing about threads.
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
RECORD_AGE = 2.0  # seconds a running run's full record is reused
ENDED_RECORD_AGE = 30.0  # the same for a run that has ended (only edits change it)
KEPT_RECORDS = 8


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
        self._records: collections.OrderedDict[str, tuple[float, RunRecord]] = (
            collections.OrderedDict()
        )
        self._series: dict[tuple[str, str], tuple[RunRecord, Any]] = {}

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
        found = self._kept(key)
        if found is not None:
            return found
        with self._reader_lock:
            found = self._kept(key)  # read meanwhile by the request this one waited for
            if found is not None:
                return found
            try:
                record = _get_run(self.reader, key)
            except KeyError:
                raise KeyError(f"no run {key!r} in {self.url}") from None
        with self._lock:
            self._records[key] = (time.monotonic(), record)
            self._records.move_to_end(key)
            while len(self._records) > KEPT_RECORDS:
                old, _ = self._records.popitem(last=False)
                self._drop_series(old)
        return record

    def series(self, run_id: str, name: str, make: Callable[[dict], Any]) -> Any:
        """``make(metric)`` for metric ``name`` of the run, kept as long as its record."""
        record = self.record(run_id)
        metrics = record.metrics or {}
        if name not in metrics:
            raise KeyError(f"run {run_id} has no metric {name!r}")
        key = (str(run_id), name)
        with self._lock:
            kept = self._series.get(key)
            if kept is not None and kept[0] is record:
                return kept[1]
        made = make(metrics[name])
        with self._lock:
            self._series[key] = (record, made)
        return made

    def edit(self, run_id: str, comment: str | None, tags: list[str] | None) -> RunRecord:
        """Store the run's comment and tags through the reader; the run as it is now."""
        record = self.record(run_id)
        self._call(self.reader.edit_run, record.id, comment=comment, tags=tags)

        def edited(r: RunRecord) -> RunRecord:
            return attrs.evolve(r, meta=edited_meta(r.meta, comment, tags))

        self._replace(str(run_id), edited)
        return edited(record)

    def delete(self, run_id: str) -> None:
        """Delete the run from the store."""
        record = self.record(run_id)
        self._call(self.reader.delete_run, record.id)
        self._replace(str(run_id), None)

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

    def _kept(self, key: str) -> RunRecord | None:
        with self._lock:
            kept = self._records.get(key)
            if kept is None:
                return None
            read_at, record = kept
            age = time.monotonic() - read_at
            if age < RECORD_AGE or (record.status in FINAL_STATUSES and age < ENDED_RECORD_AGE):
                return record
            return None

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
        """Apply an edit (``None``: a deletion) to the kept listing and forget the record."""
        with self._lock:
            self._edits += 1
            self._records.pop(key, None)
            self._drop_series(key)
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
