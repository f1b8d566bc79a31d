"""``TinyDbObserver.resume(_id)``: another observer (``expkit sync``, the next run) goes on
with a stored run, so replayed events extend it instead of making a second one."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from tinydb import Query, TinyDB

from expkit.errors import UsageError
from expkit.store import StoreError
from expkit_plugins.tinydb_store import TinyDbObserver

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, 0)
T1 = datetime.datetime(2024, 5, 1, 12, 0, 1, 250)
T2 = datetime.datetime(2024, 5, 1, 12, 0, 2, 500000)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs_db"


@pytest.fixture
def ex_info(tmp_path: Path) -> dict:
    return {"name": "demo", "base_dir": str(tmp_path), "sources": [], "mainfile": None}


def start(obs: TinyDbObserver, ex_info: dict, _id: Any = None) -> Any:
    return obs.started_event(
        ex_info=ex_info,
        command="main",
        host_info={"hostname": "box"},
        start_time=T0,
        config={"lr": 0.1},
        meta_info={"command": "main"},
        _id=_id,
    )


def points(steps: list[int]) -> dict:
    return {
        "loss": {
            "name": "loss",
            "steps": steps,
            "values": [s / 10 for s in steps],
            "timestamps": [T1] * len(steps),
        }
    }


def tables(db: Path) -> dict:
    """The store's file as plain ``tinydb`` reads it."""
    with TinyDB(db / "metadata.json", access_mode="r") as handle:
        return {name: handle.table(name).all() for name in ("runs", "metrics")}


def test_resume_finds_the_run_among_runs_written_since(db: Path, ex_info: dict) -> None:
    first = TinyDbObserver(db, write_interval=0)
    run_id = start(first, ex_info, _id="mine")
    first.log_metrics(points([0]), info={})
    other = TinyDbObserver(db, write_interval=0)
    start(other, ex_info, _id="theirs")
    other.log_metrics(points([7]), info={})
    other.completed_event(stop_time=T1, result="theirs")

    later = TinyDbObserver(db, write_interval=0)
    later.resume(run_id)
    later.log_metrics(points([1]), info={})
    later.failed_event(fail_time=T2, fail_trace=["Traceback", "ValueError: x"])

    with TinyDB(db / "metadata.json", access_mode="r") as handle:
        mine = handle.table("runs").get(Query()._id == "mine")
        theirs = handle.table("runs").get(Query()._id == "theirs")
        metric_docs = {d["run_id"]: d["steps"] for d in handle.table("metrics").all()}
    assert (mine["status"], mine["fail_trace"]) == ("FAILED", ["Traceback", "ValueError: x"])
    assert (theirs["status"], theirs["result"]) == ("COMPLETED", "theirs")
    assert metric_docs == {"mine": [0, 1], "theirs": [7]}


def test_resuming_a_run_that_is_not_stored_is_a_clear_error(db: Path, ex_info: dict) -> None:
    start(TinyDbObserver(db, write_interval=0), ex_info, _id="known")
    with pytest.raises(UsageError, match=r"cannot resume run 'unknown': it is not in .*metadata"):
        TinyDbObserver(db).resume("unknown")


def test_resuming_the_observer_that_failed_records_every_point_once(
    db: Path, ex_info: dict
) -> None:
    # Events the store failed to write are replayed after resume(); what the failed calls
    # left in the observer's memory must not be written a second time.
    obs = TinyDbObserver(db)
    run_id = start(obs, ex_info)
    aside = db.with_name("aside")
    db.rename(aside)
    db.write_text("not a folder")
    with pytest.raises(StoreError):
        obs.log_metrics(points([0, 1]), info={})
    db.unlink()
    aside.rename(db)
    obs.resume(run_id)
    obs.log_metrics(points([0, 1]), info={})  # the replayed event
    obs.heartbeat_event(info={}, captured_out="replayed\n", beat_time=T1, result=None)
    obs.completed_event(stop_time=T2, result=1)
    stored = tables(db)
    assert stored["runs"][0]["captured_out"] == "replayed\n"
    assert stored["metrics"][0]["steps"] == [0, 1]
