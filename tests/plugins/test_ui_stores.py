"""The web view's stores: a listing is read again when the store changed, not every time."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import attrs
import pytest

pytest.importorskip("starlette")

from expkit.observers import FileStorageObserver
from expkit_plugins.file_store import FileStoreReader
from expkit_plugins.ui import stores
from expkit_plugins.ui.stores import StoreView

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0)


class CountingReader(FileStoreReader):
    """The file store's reader, counting its readings of the whole store."""

    readings = 0

    def list_runs(self):
        self.readings += 1
        return super().list_runs()


def _record(store: Path, ended: bool = True) -> FileStorageObserver:
    obs = FileStorageObserver(store)
    info = {"name": "demo", "base_dir": str(store.parent), "sources": [], "mainfile": "x.py"}
    obs.started_event(info, "main", {"hostname": "h"}, T0, {"C": 1}, {}, None)
    if ended:
        obs.completed_event(T0, 0.5)
    return obs


def _looked_again(view: StoreView) -> list:
    """The listing after one more background look at the store."""
    time.sleep(0.001)  # older than LISTING_AGE (0 here): the call starts a look
    before = view.listing().read_at
    deadline = time.monotonic() + 10
    while view._refreshing:
        assert time.monotonic() < deadline, "the look did not end"
        time.sleep(0.005)
    listing = view._listing  # as the next page gets it (listing() would look again)
    assert listing.read_at > before
    return [str(r.id) for r in listing.records]


@pytest.fixture
def view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StoreView:
    monkeypatch.setattr(stores, "LISTING_AGE", 0.0)
    for _ in range(2):
        _record(tmp_path / "runs")
    return StoreView(0, str(tmp_path / "runs"), CountingReader(tmp_path / "runs"))


def test_a_store_of_ended_runs_is_not_read_again_while_unchanged(view):
    assert [str(r.id) for r in view.listing().records] == ["1", "2"]
    for _ in range(3):
        assert _looked_again(view) == ["1", "2"]
    assert view.reader.readings == 1


def test_a_run_started_ended_edited_or_deleted_is_seen_at_the_next_look(view, tmp_path):
    view.listing()
    running = _record(tmp_path / "runs", ended=False)
    assert _looked_again(view) == ["1", "2", "3"]
    assert [r.status for r in view._listing.records] == ["COMPLETED"] * 2 + ["RUNNING"]
    running.heartbeat_event({}, "", T0, None)  # while a run runs, every look reads
    assert _looked_again(view) == ["1", "2", "3"]
    running.completed_event(T0, 0.75)
    _looked_again(view)
    assert [r.status for r in view._listing.records] == ["COMPLETED"] * 3
    readings = view.reader.readings
    FileStoreReader(tmp_path / "runs").edit_run("1", comment="best so far")
    _looked_again(view)
    assert view._listing.records[0].meta["comment"] == "best so far"
    FileStoreReader(tmp_path / "runs").delete_run("2")
    assert _looked_again(view) == ["1", "3"]
    assert view.reader.readings == readings + 2
    assert _looked_again(view) == ["1", "3"]
    assert view.reader.readings == readings + 2


def test_an_unchanged_listing_is_read_again_after_a_minute(view, monkeypatch):
    view.listing()
    monkeypatch.setattr(stores, "STAMPED_LISTING_AGE", 0.0)  # a run.json edited by hand
    _looked_again(view)
    assert view.reader.readings == 2


def test_a_listing_nobody_looked_at_for_a_while_is_read_before_it_is_shown(view, tmp_path):
    # The first page after a pause must not show what the store held minutes ago.
    view.listing()
    running = _record(tmp_path / "runs", ended=False)
    running.completed_event(T0, 0.25)
    view._listing = attrs.evolve(view._listing, read_at=time.monotonic() - 60)
    listing = view.listing()
    assert [str(r.id) for r in listing.records] == ["1", "2", "3"]
    assert [r.status for r in listing.records] == ["COMPLETED"] * 3
