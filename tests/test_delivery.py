"""Delivery to stores that fail: reported once, spooled in order, retried, replayed, resumed.

The stores here are real file stores on real folders; a store "fails" because its folder
is in the way, gone, or (for a replay cut short) because the disk under it fills up.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from expkit import Experiment, delivery
from expkit.delivery import GuardedStore, SpooledRun, pending, replay, spool_root, store_key
from expkit.errors import UsageError
from expkit.observers import RunObserver
from expkit_plugins.file_store import FileStorageObserver, read_run

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, 0)
T1 = datetime.datetime(2024, 5, 1, 12, 0, 1, 250)
T2 = datetime.datetime(2024, 5, 1, 12, 0, 2, 500000)


@pytest.fixture
def guarded() -> Iterator[Callable[..., GuardedStore]]:
    """Make guarded stores; their retry threads are stopped after the test."""
    made: list[GuardedStore] = []

    def make(store: Any, url: str | None, factory: Callable[[], Any] | None = None) -> GuardedStore:
        guard = GuardedStore(store, url, factory)
        made.append(guard)
        return guard

    yield make
    for guard in made:
        guard.finish()


@pytest.fixture
def ex_info(tmp_path: Path) -> dict:
    return {"name": "demo", "base_dir": str(tmp_path), "sources": [], "mainfile": None}


def started(ex_info: dict, _id: Any = None) -> dict:
    return {
        "ex_info": ex_info,
        "command": "main",
        "host_info": {"hostname": "box"},
        "start_time": T0,
        "config": {"lr": 0.1, "layers": (64, 64), "seed": 1},
        "meta_info": {"command": "main"},
        "_id": _id,
    }


def beat(text: str, when: datetime.datetime = T1) -> dict:
    return {"info": {"epoch": len(text)}, "captured_out": text, "beat_time": when, "result": None}


def metrics(first: int, n: int) -> dict:
    steps = list(range(first, first + n))
    return {
        "metrics_by_name": {
            "loss": {"name": "loss", "steps": steps, "values": steps, "timestamps": [T1] * n}
        },
        "info": {},
    }


def feed(guard: GuardedStore, ex_info: dict) -> None:
    """A whole short run, event by event."""
    guard.call("started_event", started(ex_info))
    guard.call("log_metrics", metrics(0, 2))
    guard.call("heartbeat_event", beat("one\n"))
    guard.call("log_metrics", metrics(2, 2))
    guard.call("heartbeat_event", beat("one\ntwo\n", T2))
    guard.call("completed_event", {"stop_time": T2, "result": 7})


def assert_whole_run(runs: Path, run_id: str = "1") -> None:
    record = read_run(runs, run_id)
    assert (record["status"], record["result"]) == ("COMPLETED", 7)
    assert record["config"]["layers"] == [64, 64]
    assert record["metrics"]["loss"]["steps"] == [0, 1, 2, 3]
    assert (runs / run_id / "cout.txt").read_text() == "one\ntwo\n"
    assert record["start_time"] == "2024-05-01T12:00:00.000000"


# --- where events wait ------------------------------------------------------------------


def test_spool_root_is_the_env_variable_or_a_folder_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPKIT_SPOOL", str(tmp_path / "elsewhere"))
    assert spool_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("EXPKIT_SPOOL")
    monkeypatch.chdir(tmp_path)
    assert spool_root() == tmp_path / ".expkit" / "spool"


def test_store_key_names_the_store_without_its_password(tmp_path: Path) -> None:
    obs = FileStorageObserver(tmp_path / "runs")
    url = "mongodb://alice:s3cret-pw@db.example:27017/runs"
    key = store_key(obs, url)
    assert key.startswith("FileStorageObserver-")
    assert "s3cret" not in key and "alice" not in key
    assert key == store_key(obs, url)
    assert key != store_key(obs, "mongodb://alice:s3cret-pw@db.example:27017/other")
    assert store_key(obs, None) == store_key(FileStorageObserver(tmp_path / "x"), None)


def test_spooled_events_come_back_in_order_with_their_times(tmp_path: Path) -> None:
    spooled = SpooledRun.create(tmp_path / "spool", {"store": "S", "started": False})
    spooled.append("started_event", {"start_time": T0, "config": {"pair": (1, 2)}})
    spooled.append("heartbeat_event", beat("x\n"))
    events = spooled.read()
    assert [method for method, _ in events] == ["started_event", "heartbeat_event"]
    assert events[0][1] == {"start_time": T0, "config": {"pair": [1, 2]}}
    assert events[1][1]["beat_time"] == T1  # microseconds and all
    assert spooled.meta == {"store": "S", "started": False}


def test_a_line_torn_by_a_killed_process_is_skipped(tmp_path: Path) -> None:
    spooled = SpooledRun.create(tmp_path / "spool", {})
    spooled.append("heartbeat_event", beat("x\n"))
    with open(spooled.events, "a") as f:
        f.write('{"method": "completed_event", "kwargs": {"stop_')
    assert [m for m, _ in spooled.read()] == ["heartbeat_event"]


def test_meta_changes_are_kept(tmp_path: Path) -> None:
    spooled = SpooledRun.create(tmp_path / "spool", {"started": False, "store_id": None})
    spooled.update_meta(started=True, store_id="3")
    assert SpooledRun(spooled.folder).meta == {"started": True, "store_id": "3"}
    assert sorted(p.name for p in spooled.folder.iterdir()) == ["lock", "meta.json"]


def test_pending_lists_spooled_runs_oldest_first(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    made = [SpooledRun.create(root / "key", {"n": n}) for n in range(5)]  # within a second
    (root / "key" / "not-a-run").mkdir()
    assert [s.meta["n"] for s in pending(root, "key")] == [0, 1, 2, 3, 4]
    assert [s.folder for s in pending(root, "key")] == [s.folder for s in made]
    assert pending(root, "other") == []


# --- a store that fails -------------------------------------------------------------------


def test_a_store_down_from_the_start_is_reported_once_and_spooled(
    tmp_path: Path,
    spool: Path,
    ex_info: dict,
    caplog: pytest.LogCaptureFixture,
    guarded: Callable[..., GuardedStore],
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    runs.write_text("a file where the folder should be")  # made after: a file is refused
    with caplog.at_level(logging.WARNING, logger="expkit"):
        feed(guard, ex_info)
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert f"store {runs} failed (started_event" in failures[0]
    assert str(spool) in failures[0]
    [kept] = spooled_here = pending(spool, store_key(guard.store, str(runs)))
    assert spooled_here[0].meta["started"] is False
    assert [m for m, _ in kept.read()] == [
        "started_event",
        "log_metrics",
        "heartbeat_event",
        "log_metrics",
        "heartbeat_event",
        "completed_event",
    ]


def test_when_the_store_is_back_a_replay_delivers_the_whole_run(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    runs.write_text("in the way")  # made after: a file is refused
    guard.call("started_event", started(ex_info))
    guard.call("log_metrics", metrics(0, 2))
    assert guard.try_replay() is False  # still in the way: nothing lost, nothing sent
    runs.unlink()
    assert guard.try_replay() is True
    assert (guard.started, guard.store_id) == (True, "1")
    # From now on events go straight to the store.
    guard.call("heartbeat_event", beat("one\n"))
    guard.call("log_metrics", metrics(2, 2))
    guard.call("heartbeat_event", beat("one\ntwo\n", T2))
    guard.call("completed_event", {"stop_time": T2, "result": 7})
    assert_whole_run(runs)
    assert list(spool.glob("*/*/meta.json")) == []


def test_a_store_that_failed_mid_run_is_resumed_not_started_again(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    assert guard.call("started_event", started(ex_info)) == "1"
    guard.call("log_metrics", metrics(0, 2))
    guard.call("heartbeat_event", beat("one\n"))
    (runs / "1").rename(tmp_path / "away")
    guard.call("log_metrics", metrics(2, 2))
    guard.call("heartbeat_event", beat("one\ntwo\n", T2))
    guard.call("completed_event", {"stop_time": T2, "result": 7})
    [kept] = pending(spool, store_key(guard.store, str(runs)))
    assert (kept.meta["started"], kept.meta["store_id"]) == (True, "1")
    guard.finish()  # the run ends with the store still away

    (tmp_path / "away").rename(runs / "1")
    # As `expkit sync` does it: a new store object, which must go on with run 1.
    assert replay(kept, FileStorageObserver(runs)) == "1"
    assert_whole_run(runs)
    assert sorted(p.name for p in runs.iterdir() if p.name != "_index") == ["1"]
    assert not kept.folder.exists()


def test_an_id_taken_meanwhile_makes_the_store_choose_another(
    tmp_path: Path, ex_info: dict
) -> None:
    spooled = SpooledRun.create(tmp_path / "spool", {"started": False, "store_id": None})
    spooled.append("started_event", started(ex_info, _id="7"))
    spooled.append("completed_event", {"stop_time": T2, "result": 7})
    runs = tmp_path / "runs"
    FileStorageObserver(runs).started_event(**started(ex_info, _id="7"))
    assert replay(spooled, FileStorageObserver(runs)) == "8"
    assert read_run(runs, "8")["status"] == "COMPLETED"
    assert read_run(runs, "7")["status"] == "RUNNING"  # the other run is left alone


def test_a_spooled_artifact_outlives_its_original_file(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    runs.write_text("in the way")  # made after: a file is refused
    guard.call("started_event", started(ex_info))
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00weights\xff")
    guard.call(
        "artifact_event",
        {"name": "model.bin", "filename": str(model), "metadata": None, "content_type": None},
    )
    model.unlink()  # a temporary file the experiment cleaned up
    runs.unlink()
    assert guard.try_replay()
    assert (runs / "1" / "model.bin").read_bytes() == b"\x00weights\xff"
    assert read_run(runs, "1")["artifacts"] == ["model.bin"]


def test_a_usage_error_of_the_store_reaches_the_caller(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    guard = guarded(FileStorageObserver(tmp_path / "runs"), None)
    guard.call("started_event", started(ex_info))
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with pytest.raises(UsageError, match="outside the run folder"):
        guard.call(
            "artifact_event",
            {"name": "../x.txt", "filename": str(payload), "metadata": None, "content_type": None},
        )
    assert guard.spooled is None and not spool.exists()


def test_the_end_of_a_run_right_after_a_failure_says_how_to_sync(
    tmp_path: Path,
    spool: Path,
    ex_info: dict,
    caplog: pytest.LogCaptureFixture,
    guarded: Callable[..., GuardedStore],
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), "runs")
    runs.write_text("in the way")  # made after: a file is refused
    feed(guard, ex_info)
    guard.finish()
    [kept] = pending(spool, store_key(guard.store, "runs"))
    assert f"the run is kept in {kept.folder}" in caplog.text
    assert f"'expkit sync {spool / store_key(guard.store, 'runs')} runs'" in caplog.text


def test_the_end_of_a_run_tries_once_more(
    tmp_path: Path,
    spool: Path,
    ex_info: dict,
    guarded: Callable[..., GuardedStore],
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    runs.write_text("in the way")  # made after: a file is refused
    feed(guard, ex_info)
    runs.unlink()
    guard.finish()
    assert guard.spooled is None
    assert_whole_run(runs)


def test_the_background_retry_delivers_without_being_asked(
    tmp_path: Path,
    spool: Path,
    ex_info: dict,
    monkeypatch: pytest.MonkeyPatch,
    guarded: Callable[..., GuardedStore],
) -> None:
    monkeypatch.setattr(delivery, "_RETRY_SECONDS", (0.05,))
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    runs.write_text("in the way")  # made after: a file is refused
    feed(guard, ex_info)
    runs.unlink()
    deadline = time.monotonic() + 5
    while guard.spooled is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert guard.spooled is None
    assert_whole_run(runs)
    guard.finish()


def test_a_spool_that_cannot_be_written_keeps_the_events_in_memory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ex_info: dict,
    caplog: pytest.LogCaptureFixture,
    guarded: Callable[..., GuardedStore],
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, so no folder can be made below it")
    monkeypatch.setenv("EXPKIT_SPOOL", str(blocker / "spool"))
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    runs.write_text("in the way")  # made after: a file is refused
    feed(guard, ex_info)
    assert f"cannot spool the events of store {runs}" in caplog.text
    runs.unlink()
    assert guard.try_replay()
    assert_whole_run(runs)


def test_runs_spooled_earlier_are_delivered_by_the_next_store_in_the_background(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    runs = tmp_path / "runs"
    first = guarded(FileStorageObserver(runs), "runs")
    runs.write_text("in the way")  # made after: a file is refused
    feed(first, ex_info)
    first.finish()
    runs.unlink()

    def factory() -> FileStorageObserver:
        return FileStorageObserver(runs)

    guarded(factory(), "runs", factory)
    deadline = time.monotonic() + 5
    while pending(spool, store_key(first.store, "runs")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pending(spool, store_key(first.store, "runs")) == []
    assert_whole_run(runs)


class FillingDisk(RunObserver):
    """A file store on a disk with room for ``room`` more events; then every write fails."""

    def __init__(self, basedir: Path, room: int) -> None:
        self.store = FileStorageObserver(basedir)
        self.room = room

    def resume(self, _id: Any) -> None:
        self.store.resume(_id)

    def _write(self, method: str, **kwargs: Any) -> Any:
        if self.room <= 0:
            raise OSError(28, "No space left on device")
        self.room -= 1
        return getattr(self.store, method)(**kwargs)

    def started_event(self, **kwargs: Any) -> Any:  # type: ignore[override]
        return self._write("started_event", **kwargs)

    def heartbeat_event(self, **kwargs: Any) -> None:  # type: ignore[override]
        self._write("heartbeat_event", **kwargs)

    def log_metrics(self, **kwargs: Any) -> None:  # type: ignore[override]
        self._write("log_metrics", **kwargs)

    def completed_event(self, **kwargs: Any) -> None:  # type: ignore[override]
        self._write("completed_event", **kwargs)


class SacredOnly:
    """A store with Sacred's interface only, not derived from ``RunObserver``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def started_event(self, **kwargs: Any) -> Any:
        self.calls.append(("started_event", kwargs))
        return 5

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        self.calls.append(("log_metrics", {"metrics_by_name": metrics_by_name, "info": info}))


def test_spooled_metric_columns_reach_a_store_without_them_as_sacreds_shape(
    tmp_path: Path, ex_info: dict
) -> None:
    spooled = SpooledRun.create(tmp_path / "spool", {"started": False, "store_id": None})
    spooled.append("started_event", started(ex_info))
    columns = {"loss": {"name": "loss", "steps": [0, 1], "values": [1.0, 0.5]}}
    columns["loss"]["timestamps"] = [1714564801.00025, 1714564802.5]
    spooled.append("log_metric_columns", {"columns": columns, "info": {"epoch": 1}})
    store = SacredOnly()
    assert replay(spooled, store) == 5
    assert store.calls[1] == (
        "log_metrics",
        {
            "metrics_by_name": {
                "loss": {
                    "name": "loss",
                    "steps": [0, 1],
                    "values": [1.0, 0.5],
                    "timestamps": [T1, datetime.datetime(2024, 5, 1, 12, 0, 2, 500000)],
                }
            },
            "info": {"epoch": 1},
        },
    )


def test_a_replay_cut_short_and_done_again_records_nothing_twice(
    tmp_path: Path, ex_info: dict
) -> None:
    runs = tmp_path / "runs"
    spooled = SpooledRun.create(tmp_path / "spool", {"started": False, "store_id": None})
    for method, kwargs in [
        ("started_event", started(ex_info)),
        ("log_metrics", metrics(0, 2)),
        ("heartbeat_event", beat("one\n")),
        ("log_metrics", metrics(2, 2)),
        ("heartbeat_event", beat("one\ntwo\n", T2)),
        ("completed_event", {"stop_time": T2, "result": 7}),
    ]:
        spooled.append(method, kwargs)
    with pytest.raises(OSError, match="No space left"):
        replay(spooled, FillingDisk(runs, room=4))  # the disk fills up half-way
    assert spooled.folder.exists()  # so the run is still spooled
    replay(spooled, FillingDisk(runs, room=100))  # room again: the replay is done again
    assert_whole_run(runs)
    assert sorted(p.name for p in runs.iterdir() if p.name != "_index") == ["1"]


# --- through a real run ------------------------------------------------------------------


def test_a_broken_store_changes_nothing_for_the_experiment_or_the_other_stores(
    tmp_path: Path, spool: Path
) -> None:
    broken = tmp_path / "broken"
    ex = Experiment("two_stores", interactive=True)
    ex.observers += [FileStorageObserver(broken), FileStorageObserver(tmp_path / "good")]
    broken.write_text("in the way")

    @ex.main
    def main(_run: Any) -> int:
        print("working")
        _run.log_scalar("loss", 0.5)
        return 7

    run = ex.run(options={"--capture": "sys"})
    assert (run.status, run.result, run._id) == ("COMPLETED", 7, "1")
    good = read_run(tmp_path / "good", "1")
    assert (good["status"], good["result"]) == ("COMPLETED", 7)
    assert good["metrics"]["loss"]["values"] == [0.5]
    assert "working" in (tmp_path / "good" / "1" / "cout.txt").read_text()
    [kept] = list(spool.glob("*/*/events.jsonl"))
    methods = [json.loads(line)["method"] for line in kept.read_text().splitlines()]
    assert methods[0] == "started_event" and methods[-1] == "completed_event"


def test_a_failing_experiment_with_a_broken_store_still_fails_as_itself(
    tmp_path: Path, spool: Path
) -> None:
    broken = tmp_path / "broken"
    ex = Experiment("fails", interactive=True)
    ex.observers.append(FileStorageObserver(broken))
    broken.write_text("in the way")

    @ex.main
    def main() -> None:
        raise ZeroDivisionError("the experiment's own error")

    with pytest.raises(ZeroDivisionError, match="the experiment's own error"):
        ex.run(options={"--capture": "sys"})
    assert ex.current_run is None
    [kept] = list(spool.glob("*/*/events.jsonl"))
    assert '"failed_event"' in kept.read_text()


def test_a_run_still_spooling_is_not_replayed_by_another_run(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    # Two runs into one failing store: the second must not replay (and remove) the first's
    # spool while the first is still writing to it, or the first run's end would be lost.
    runs = tmp_path / "runs"
    first = guarded(FileStorageObserver(runs), str(runs))
    runs.write_text("in the way")  # made after: a file is refused
    first.call("started_event", started(ex_info))
    assert first.spooled is not None
    runs.unlink()
    second = guarded(FileStorageObserver(runs), str(runs), lambda: FileStorageObserver(runs))
    if second._old_runs is not None:
        second._old_runs.join(timeout=10)
    assert first.spooled.folder.exists()  # left alone: it is still the first run's
    first.call("heartbeat_event", beat("one\ntwo\n", T2))
    first.call("log_metrics", metrics(0, 4))
    first.call("completed_event", {"stop_time": T2, "result": 7})
    first.finish()
    assert first.spooled is None
    record = read_run(runs, "1")
    assert (record["status"], record["result"]) == ("COMPLETED", 7)
    assert record["metrics"]["loss"]["steps"] == [0, 1, 2, 3]


# --- every spool can be delivered (issue 10, point 6) ------------------------------------


def stored_outcome(guard: GuardedStore) -> tuple[str, Any]:
    outcome = guard.outcome()
    return outcome.state, outcome.run_id


def test_a_spool_made_mid_run_begins_with_the_runs_start(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    guard.call("started_event", started(ex_info))
    guard.call("log_metrics", metrics(0, 2))
    shutil.rmtree(runs)  # the whole store folder, mid-run
    runs.write_text("and a file in its place, so that nothing can recreate it")
    guard.call("heartbeat_event", beat("one\n"))
    guard.call("log_metrics", metrics(2, 2))
    guard.call("heartbeat_event", beat("one\ntwo\n", T2))
    guard.call("completed_event", {"stop_time": T2, "result": 7})
    guard.finish()
    assert stored_outcome(guard) == ("spooled", "1")
    [kept] = pending(spool, store_key(guard.store, str(runs)))
    # What the store had taken first (it is gone with the store), then what came after.
    assert [m for m, _ in kept.read()] == [
        "started_event",
        "log_metrics",
        "heartbeat_event",
        "log_metrics",
        "heartbeat_event",
        "completed_event",
    ]
    assert kept.meta["delivered"] == 2

    # Any store takes it whole: here a fresh folder, which had never heard of run 1.
    fresh = tmp_path / "fresh"
    assert replay(kept, FileStorageObserver(fresh), url=str(fresh), recreate=True) == "1"
    record = read_run(fresh, "1")
    assert record["metrics"]["loss"]["steps"] == [0, 1, 2, 3]
    assert (record["status"], record["result"], record["config"]["lr"]) == ("COMPLETED", 7, 0.1)
    assert (fresh / "1" / "cout.txt").read_text() == "one\ntwo\n"
    assert not kept.folder.exists()


def test_a_run_the_store_lost_is_recreated_by_sync_not_by_automatic_replays(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    guard.call("started_event", started(ex_info))
    shutil.rmtree(runs)
    guard.call("heartbeat_event", beat("one\n"))
    guard.call("completed_event", {"stop_time": T2, "result": 7})
    # The store can be written again, but run 1 is gone from it: it may come back (a disk
    # mounted again), so the run's own retries do not make a second run 1.
    assert guard.try_replay() is False
    guard.finish()
    assert not runs.exists()
    [kept] = pending(spool, store_key(guard.store, str(runs)))
    kept.unlock()
    with pytest.raises(delivery.StoreLostRun, match="no longer holds run '1'"):
        replay(kept, FileStorageObserver(runs), url=str(runs))
    assert replay(kept, FileStorageObserver(runs), url=str(runs), recreate=True) == "1"
    record = read_run(runs, "1")
    assert (record["status"], record["result"], record["start_time"]) == (
        "COMPLETED",
        7,
        "2024-05-01T12:00:00.000000",
    )


def test_a_run_is_never_resumed_into_another_run_that_took_its_id(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    from expkit.runs import reader_for_url

    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    guard.call("started_event", started(ex_info))
    shutil.rmtree(runs)
    guard.call("heartbeat_event", beat("mine\n"))
    guard.call("completed_event", {"stop_time": T2, "result": 7})
    guard.finish()
    # Meanwhile another run starts in the recreated folder and is given id 1 too.
    other = FileStorageObserver(runs)
    other.started_event(**{**started(ex_info), "start_time": T1, "config": {"who": "other"}})
    [kept] = pending(spool, store_key(guard.store, str(runs)))
    kept.unlock()

    reader = reader_for_url(str(runs))
    run_id = replay(kept, FileStorageObserver(runs), url=str(runs), reader=reader, recreate=True)
    assert run_id == "2"
    assert read_run(runs, "1")["config"] == {"who": "other"}  # left alone
    assert read_run(runs, "1")["status"] == "RUNNING"
    assert (read_run(runs, "2")["result"], read_run(runs, "2")["config"]["lr"]) == (7, 0.1)
    assert (runs / "2" / "cout.txt").read_text() == "mine\n"


def test_a_spooled_run_goes_to_a_store_of_another_kind(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    from expkit_plugins.tinydb_store import TinyDbObserver

    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    guard.call("started_event", started(ex_info, _id="1"))
    (runs / "1").rename(tmp_path / "away")
    guard.call("log_metrics", metrics(0, 2))
    guard.call("completed_event", {"stop_time": T2, "result": 7})
    guard.finish()
    [kept] = pending(spool, store_key(guard.store, str(runs)))
    kept.unlock()
    db = tmp_path / "db"
    # The same id exists in no TinyDB: the run is not resumed there, it is made there.
    assert replay(kept, TinyDbObserver(str(db)), url=f"tinydb://{db}", recreate=True) == "1"
    [doc] = json.loads((db / "metadata.json").read_text())["runs"].values()
    assert (doc["status"], doc["result"], doc["config"]["lr"]) == ("COMPLETED", 7, 0.1)


def test_ints_no_json_can_write_survive_the_spool(tmp_path: Path) -> None:
    huge = 10**5000 + 1
    spooled = SpooledRun.create(tmp_path / "spool", {"store": "S", "started": False})
    spooled.append("started_event", {"config": {"n": huge, "m": [-huge, 3]}, "start_time": T0})
    assert SpooledRun(spooled.folder).read() == [
        ("started_event", {"config": {"n": huge, "m": [-huge, 3]}, "start_time": T0})
    ]


def test_a_store_that_refuses_the_runs_data_keeps_it_marked_and_says_so_once(
    tmp_path: Path,
    spool: Path,
    ex_info: dict,
    caplog: pytest.LogCaptureFixture,
    guarded: Callable[..., GuardedStore],
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    with caplog.at_level(logging.DEBUG, logger="expkit"):
        guard.call("started_event", {**started(ex_info), "config": {"n": 10**5000}})
        guard.call("heartbeat_event", beat("one\n"))
        guard.call("completed_event", {"stop_time": T2, "result": 7})
        guard.finish()
    assert guard._retry is None  # never retried: the store would refuse it again
    outcome = guard.outcome()
    assert outcome.state == "undeliverable"
    assert "the store refused its started_event: ValueError: Exceeds the limit" in outcome.reason
    [error] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert error.levelname == "ERROR"
    assert f"it is kept in {outcome.folder} and not retried" in error.getMessage()
    # Kept whole, marked, and left out of what later runs replay.
    kept = SpooledRun(Path(outcome.folder))
    assert [m for m, _ in kept.read()] == ["started_event", "heartbeat_event", "completed_event"]
    assert kept.read()[0][1]["config"]["n"] == 10**5000
    assert kept.failed == outcome.reason
    assert pending(spool, store_key(guard.store, str(runs))) == []
    caplog.clear()

    def factory() -> FileStorageObserver:
        return FileStorageObserver(runs)

    with caplog.at_level(logging.DEBUG, logger="expkit"):
        later = guarded(factory(), str(runs), factory)
        later.finish()
    assert later._old_runs is None and caplog.text == ""  # not retried, not reported again


def test_a_spool_without_the_runs_start_is_reported_once_as_undeliverable(
    tmp_path: Path, spool: Path, ex_info: dict
) -> None:
    # As older expkit versions spooled a store that failed mid-run.
    kept = SpooledRun.create(spool / "key", {"started": True, "store_id": "1"})
    kept.append("heartbeat_event", beat("one\n"))
    kept.unlock()
    runs = tmp_path / "runs"
    with pytest.raises(delivery.Undeliverable, match="it lacks the start of the run"):
        replay(kept, FileStorageObserver(runs), url=str(runs), recreate=True)
    assert "lacks the start" in SpooledRun(kept.folder).failed
    assert pending(spool, "key") == []


def test_a_store_given_id_with_control_characters_is_refused(
    ex_info: dict, caplog: pytest.LogCaptureFixture, guarded: Callable[..., GuardedStore]
) -> None:
    class Hostile(RunObserver):
        def started_event(self, **kwargs: Any) -> str:  # type: ignore[override]
            return "\x1b[2J\x1b]0;owned\x07"

    guard = guarded(Hostile(), "hostile://store")
    assert guard.call("started_event", started(ex_info)) is None  # the run gets no such id
    guard.finish()
    outcome = guard.outcome()
    assert outcome.state == "undeliverable"
    assert "'\\x1b[2J\\x1b]0;owned\\x07', an id with control characters" in outcome.reason
    assert "\x1b" not in caplog.text


def test_a_disk_that_fills_up_mid_run_leaves_the_run_spooled_not_stored(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    guard = guarded(FillingDisk(tmp_path / "runs", room=2), str(tmp_path / "runs"))
    feed(guard, ex_info)
    guard.finish()
    outcome = guard.outcome()
    assert (outcome.state, outcome.run_id) == ("spooled", "1")
    assert outcome.folder == str(spool / store_key(guard.store, str(tmp_path / "runs")))
    assert "No space left on device" in outcome.reason


def columns(steps: list, values: list) -> dict:
    return {
        "columns": {"acc": {"steps": steps, "values": values, "timestamps": [1.7e9] * len(steps)}},
        "info": {"n": len(steps)},
    }


def test_points_the_store_took_before_it_failed_are_kept_as_they_were(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    guard.call("started_event", started(ex_info))
    guard.call("log_metric_columns", columns([0, 1], [0.5, 1]))
    guard.call("log_metric_columns", columns([2], ["n/a"]))
    guard.call("heartbeat_event", beat("so far\n"))
    (runs / "1").rename(tmp_path / "away")
    guard.call("log_metric_columns", columns([3], [0.75]))
    guard.finish()
    [kept] = pending(spool, store_key(guard.store, str(runs)))
    events = kept.read()
    assert [m for m, _ in events] == [
        "started_event",
        "log_metric_columns",
        "heartbeat_event",
        "log_metric_columns",
    ]
    acc = events[1][1]["columns"]["acc"]
    assert (acc["steps"], acc["values"]) == ([0, 1, 2], [0.5, 1, "n/a"])
    assert [type(v) for v in acc["values"]] == [float, int, str]
    assert events[2][1]["captured_out"] == "so far\n"
    assert kept.meta["delivered"] == 3


def test_a_run_neither_the_store_nor_the_spool_can_keep_is_said_to_be_lost(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ex_info: dict,
    guarded: Callable[..., GuardedStore],
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, so no folder can be made below it")
    monkeypatch.setenv("EXPKIT_SPOOL", str(blocker / "spool"))
    runs = tmp_path / "runs"
    guard = guarded(FileStorageObserver(runs), str(runs))
    runs.write_text("in the way")  # made after: a file is refused
    feed(guard, ex_info)
    guard.finish()
    outcome = guard.outcome()
    assert outcome.state == "lost"
    assert outcome.reason.startswith("FileExistsError: ")
    assert outcome.reason.endswith(
        f"the spool folder {spool_root()}/{guard.root.name} could not be written"
    )


def test_an_interrupt_while_the_store_takes_the_start_keeps_the_start(
    tmp_path: Path, spool: Path, ex_info: dict, guarded: Callable[..., GuardedStore]
) -> None:
    runs = tmp_path / "runs"

    class Locked(FileStorageObserver):
        """A store whose database another writer holds: Ctrl-C lands while it waits."""

        waited = False

        def started_event(self, **kwargs: Any) -> Any:  # type: ignore[override]
            if not self.waited:
                self.waited = True
                raise KeyboardInterrupt
            return super().started_event(**kwargs)

    guard = guarded(Locked(runs), str(runs))
    with pytest.raises(KeyboardInterrupt):  # the interrupt goes on, to stop the run
        guard.call("started_event", started(ex_info))
    guard.call("interrupted_event", {"interrupt_time": T1, "status": "INTERRUPTED"})
    guard.finish()  # the writer let go: the last try delivers the run from its start
    assert (guard.outcome().state, guard.outcome().run_id) == ("stored", "1")
    assert read_run(runs, "1")["status"] == "INTERRUPTED"
