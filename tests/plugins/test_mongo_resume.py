"""``MongoObserver.resume(_id)``: another observer (``expkit sync``, the next run) goes on with
a stored run, so replayed events extend its documents instead of making new ones. Against the
in-memory server of tests/mongo_server.py (real sockets, real pymongo) or, when
``EXPKIT_TEST_MONGO_URL`` is set, a real MongoDB."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pymongo")
pytest.importorskip("mockupdb")

from mongo_server import MemoryMongo

from expkit.errors import UsageError
from expkit.store import StoreError
from expkit_plugins.mongo_store import TAIL_CHARS, MongoObserver, load_captured_out

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, 0)
T1 = datetime.datetime(2024, 5, 1, 12, 0, 1, 250000)
T2 = datetime.datetime(2024, 5, 1, 12, 0, 2, 500000)


@pytest.fixture
def make(mongo_url: str, mongo_db: Any) -> Iterator[Callable[[], MongoObserver]]:
    """Observers on the test database, each with a connection of its own."""
    made: list[MongoObserver] = []

    def new() -> MongoObserver:
        # A short server selection time-out keeps a call with the server away quick.
        obs = MongoObserver(url=mongo_url, db_name=mongo_db.name, serverSelectionTimeoutMS=300)
        made.append(obs)
        return obs

    yield new
    for obs in made:
        obs.close()


@pytest.fixture
def ex_info(tmp_path: Path) -> dict:
    return {"name": "demo", "base_dir": str(tmp_path), "sources": [], "mainfile": None}


def start(obs: MongoObserver, ex_info: dict) -> Any:
    return obs.started_event(
        ex_info=ex_info,
        command="main",
        host_info={"hostname": "box"},
        start_time=T0,
        config={"lr": 0.1},
        meta_info={"command": "main"},
        _id=None,
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


def test_a_new_observer_goes_on_with_a_stored_run(
    make: Callable[[], MongoObserver], mongo_db: Any, ex_info: dict
) -> None:
    first = make()
    run_id = start(first, ex_info)
    first.log_metrics(points([0, 1]), info={})
    first.heartbeat_event(info={"epoch": 1}, captured_out="one\n", beat_time=T1, result=None)

    later = make()
    later.resume(run_id)
    later.log_metrics(points([2, 3]), info={"epoch": 2})
    later.heartbeat_event(info={"epoch": 2}, captured_out="one\ntwo\n", beat_time=T2, result=5)
    later.completed_event(stop_time=T2, result=5)

    [doc] = mongo_db.runs.find()
    assert (doc["_id"], doc["status"], doc["result"]) == (run_id, "COMPLETED", 5)
    assert doc["captured_out"] == "one\ntwo\n"
    assert doc["start_time"] == T0 and doc["config"] == {"lr": 0.1}
    [loss] = mongo_db.metrics.find()  # the same metrics document, extended
    assert (loss["run_id"], loss["steps"]) == (run_id, [0, 1, 2, 3])
    assert doc["info"]["epoch"] == 2
    assert doc["info"]["metrics"] == [{"name": "loss", "id": str(loss["_id"])}]  # linked once


def test_long_output_is_continued_not_stored_twice(
    make: Callable[[], MongoObserver], mongo_db: Any, ex_info: dict
) -> None:
    first = make()
    run_id = start(first, ex_info)
    early = "".join(f"line {i:06d}\n" for i in range(TAIL_CHARS // 12 + 100))
    first.heartbeat_event(info={}, captured_out=early, beat_time=T1, result=None)

    later = make()
    later.resume(run_id)
    whole = early + "the end\n"
    later.heartbeat_event(info={}, captured_out=whole, beat_time=T2, result=None)
    later.completed_event(stop_time=T2, result=None)

    assert load_captured_out(mongo_db.runs, run_id) == whole
    assert mongo_db.runs.find_one({"_id": run_id})["captured_out"].endswith("the end\n")


def test_a_digit_string_id_resumes_the_numeric_run(
    make: Callable[[], MongoObserver], mongo_db: Any, ex_info: dict
) -> None:
    run_id = start(make(), ex_info)
    later = make()
    later.resume(str(run_id))
    later.interrupted_event(interrupt_time=T2, status="INTERRUPTED")
    assert mongo_db.runs.find_one({"_id": run_id})["status"] == "INTERRUPTED"


def test_resuming_a_run_that_is_not_stored_is_a_clear_error(
    make: Callable[[], MongoObserver], mongo_db: Any, ex_info: dict
) -> None:
    start(make(), ex_info)
    with pytest.raises(
        UsageError, match=rf"cannot resume run 99: it is not in {mongo_db.name}\.runs"
    ):
        make().resume(99)


def test_resuming_the_observer_that_failed_records_every_point_once(
    make: Callable[[], MongoObserver], memory_mongo: MemoryMongo, mongo_db: Any, ex_info: dict
) -> None:
    # Events the store failed to send are replayed after resume(); what the failed calls
    # left in the observer's memory must not be sent a second time.
    obs = make()
    run_id = start(obs, ex_info)
    memory_mongo.down = True
    with pytest.raises(StoreError):
        obs.log_metrics(points([0, 1]), info={})
    memory_mongo.down = False
    obs.resume(run_id)
    obs.log_metrics(points([0, 1]), info={})  # the replayed event
    obs.heartbeat_event(info={}, captured_out="replayed\n", beat_time=T1, result=None)
    obs.completed_event(stop_time=T2, result=1)
    doc = mongo_db.runs.find_one({"_id": run_id})
    assert (doc["status"], doc["captured_out"]) == ("COMPLETED", "replayed\n")
    assert mongo_db.metrics.find_one({"run_id": run_id})["steps"] == [0, 1]
