"""The MongoDB store, against the in-memory server of tests/mongo_server.py or,
when ``EXPKIT_TEST_MONGO_URL`` is set, a real MongoDB (one fresh database per test)."""

from __future__ import annotations

import datetime
import hashlib
import logging
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pymongo")
pytest.importorskip("mockupdb")
gridfs = pytest.importorskip("gridfs")
import bson  # noqa: E402
from bson import ObjectId, json_util  # noqa: E402
from mongo_server import PASSWORD, MemoryMongo  # noqa: E402
from pymongo import monitoring  # noqa: E402

from expkit.errors import ExpkitError, UsageError  # noqa: E402
from expkit.pluginmanager import create_plugin_manager  # noqa: E402
from expkit.serialize import utcnow  # noqa: E402
from expkit.utils import redact_url  # noqa: E402
from expkit_plugins import mongo_store  # noqa: E402
from expkit_plugins.mongo_store import (  # noqa: E402
    INFO_LIMIT,
    TAIL_CHARS,
    MongoObserver,
    MongoStoreError,
    load_captured_out,
    load_info,
)

# --- fixtures (the server, its URL and database: tests/conftest.py) ----------------------


class _Listener(monitoring.CommandListener):
    def __init__(self) -> None:
        self.started_events: list = []

    def started(self, event: Any) -> None:
        self.started_events.append(event)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@pytest.fixture
def listener() -> _Listener:
    return _Listener()


@pytest.fixture
def make_observer(mongo_url: str, listener: _Listener) -> Iterator[Callable[..., MongoObserver]]:
    """Build observers on the test database; their connections are closed afterwards."""
    made: list[MongoObserver] = []

    def make(**kwargs: Any) -> MongoObserver:
        kwargs.setdefault("url", mongo_url)
        kwargs.setdefault("db_name", mongo_url.rpartition("/")[2].partition("?")[0])
        obs = MongoObserver(event_listeners=[listener], **kwargs)
        made.append(obs)
        return obs

    yield make
    for obs in made:
        obs.close()


@pytest.fixture
def observer(make_observer: Callable[..., MongoObserver]) -> MongoObserver:
    return make_observer()


@pytest.fixture
def sent(
    mongo_server: MemoryMongo | None, listener: _Listener, mongo_db: Any
) -> Callable[..., list[tuple]]:
    """``sent(name, collection)``: the commands the server received, as ``(doc, size)``."""

    def sent(name: str, collection: str) -> list[tuple[dict, int]]:
        if mongo_server is not None:
            return [
                (s.doc, s.size)
                for s in mongo_server.commands(name, collection)
                if s.db == mongo_db.name
            ]
        return [
            (dict(e.command), len(bson.encode(e.command)))
            for e in listener.started_events
            if e.command_name == name and e.command.get(name) == collection
        ]

    return sent


@pytest.fixture
def experiment(tmp_path: Path) -> dict:
    """Sacred's ``ex_info`` of an experiment with one source file."""
    source = tmp_path / "exp_demo.py"
    source.write_text("print('hello')\n")
    return {
        "name": "demo",
        "base_dir": str(tmp_path),
        "sources": [["exp_demo.py", hashlib.md5(source.read_bytes()).hexdigest()]],
        "dependencies": ["numpy==1.26.4", "expkit==0.1.0"],
        "repositories": [{"url": "git:/repo", "commit": "abc123", "dirty": False}],
        "mainfile": "exp_demo.py",
    }


HOST = {"hostname": "vm", "os": ["Linux", "Linux-6"], "python_version": "3.11.7", "ENV": {}}
CONFIG = {"C": 1.0, "gamma": 0.7, "seed": 42, "nested": {"a": [1, 2]}}
META = {"command": "main", "options": {"--unobserved": False}, "named_configs": []}


def start(obs: MongoObserver, experiment: dict, _id: Any = None, **meta: Any) -> Any:
    return obs.started_event(
        ex_info=experiment,
        command="main",
        host_info=HOST,
        start_time=utcnow(),
        config=CONFIG,
        meta_info={**META, **meta},
        _id=_id,
    )


def bson_time(t: datetime.datetime) -> datetime.datetime:
    """``t`` as it comes back from MongoDB: milliseconds only."""
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def points(name: str, steps: list[int], values: list[float]) -> dict:
    now = utcnow()
    return {
        name: {"name": name, "steps": steps, "values": values, "timestamps": [now] * len(steps)}
    }


# --- the run document -------------------------------------------------------------------


def test_run_document_has_sacreds_schema(
    observer: MongoObserver, experiment: dict, mongo_db: Any, tmp_path: Path
) -> None:
    t0 = utcnow()
    run_id = observer.started_event(
        ex_info=experiment,
        command="main",
        host_info=HOST,
        start_time=t0,
        config=CONFIG,
        meta_info=META,
        _id=None,
    )
    running = mongo_db.runs.find_one({"_id": run_id})
    assert running["status"] == "RUNNING"
    assert running["heartbeat"] is None
    assert (
        running["captured_out"],
        running["info"],
        running["artifacts"],
        running["resources"],
    ) == (
        "",
        {},
        [],
        [],
    )

    t1 = utcnow()
    observer.heartbeat_event(info={"lr": 0.1}, captured_out="epoch 1\n", beat_time=t1, result=None)
    t2 = utcnow()
    observer.completed_event(stop_time=t2, result=0.93)

    run = mongo_db.runs.find_one({"_id": run_id})
    assert run_id == 1 and isinstance(run["_id"], int)
    assert run["format"] == "MongoObserver-0.7.0"
    assert run["status"] == "COMPLETED"
    assert run["command"] == "main"
    exp = run["experiment"]
    assert {
        k: exp[k] for k in ("name", "base_dir", "mainfile", "dependencies", "repositories")
    } == {
        "name": "demo",
        "base_dir": str(tmp_path),
        "mainfile": "exp_demo.py",
        "dependencies": ["numpy==1.26.4", "expkit==0.1.0"],
        "repositories": [{"url": "git:/repo", "commit": "abc123", "dirty": False}],
    }
    [[relpath, file_id]] = exp["sources"]
    assert relpath == "exp_demo.py" and isinstance(file_id, ObjectId)
    assert run["host"] == HOST
    assert run["config"] == CONFIG
    assert run["meta"] == META
    assert run["start_time"] == bson_time(t0)
    assert run["heartbeat"] == bson_time(t1)
    assert run["stop_time"] == bson_time(t2)
    assert run["captured_out"] == "epoch 1\n"
    assert run["info"] == {"lr": 0.1}
    assert run["result"] == 0.93
    assert "fail_trace" not in run


def test_failed_and_interrupted_runs(
    make_observer: Callable, experiment: dict, mongo_db: Any
) -> None:
    obs = make_observer()
    failed = start(obs, experiment)
    trace = ["Traceback (most recent call last):\n", "ValueError: boom\n"]
    obs.failed_event(fail_time=utcnow(), fail_trace=trace)
    stopped = start(obs, experiment)
    obs.interrupted_event(interrupt_time=utcnow(), status="TIMEOUT")

    run = mongo_db.runs.find_one({"_id": failed})
    assert (run["status"], run["fail_trace"]) == ("FAILED", trace)
    assert isinstance(run["stop_time"], datetime.datetime)
    run = mongo_db.runs.find_one({"_id": stopped})
    assert run["status"] == "TIMEOUT" and isinstance(run["stop_time"], datetime.datetime)
    assert "fail_trace" not in run


def test_values_are_made_storable(observer: MongoObserver, experiment: dict, mongo_db: Any) -> None:
    import numpy as np

    run_id = start(observer, experiment)
    info = {"a.b": 1, "$weird": np.float32(0.5), "arr": np.arange(3), "big": 2**70, "t": (1, 2)}
    observer.heartbeat_event(info=info, captured_out="", beat_time=utcnow(), result=np.int64(3))
    run = mongo_db.runs.find_one({"_id": run_id})
    # Sacred's substitutions for keys MongoDB refuses.
    assert run["info"] == {
        "a,b": 1,
        "@weird": 0.5,
        "arr": [0, 1, 2],
        "big": str(2**70),
        "t": [1, 2],
    }
    assert run["result"] == 3


# --- ids ----------------------------------------------------------------------------------


def test_ids_count_up_from_the_largest_number(
    make_observer: Callable, experiment: dict, mongo_db: Any
) -> None:
    mongo_db.runs.insert_one(
        {"_id": "a-string-id"}
    )  # ids of other observers must not break numbering
    obs = make_observer()
    assert start(obs, experiment) == 1
    assert start(obs, experiment) == 2
    assert start(obs, experiment, _id="7") == 7  # --id 7: stored as a number, for Omniboard
    assert start(obs, experiment) == 8
    assert sorted(r["_id"] for r in mongo_db.runs.find({"_id": {"$type": "number"}})) == [
        1,
        2,
        7,
        8,
    ]


def test_concurrent_runs_get_distinct_ids(
    make_observer: Callable, experiment: dict, mongo_db: Any
) -> None:
    observers = [make_observer() for _ in range(6)]
    ids: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(observers))

    def run(obs: MongoObserver) -> None:
        try:
            barrier.wait()
            ids.append(start(obs, experiment))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(o,)) for o in observers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(ids) == [1, 2, 3, 4, 5, 6]
    assert mongo_db.runs.count_documents({}) == 6


def test_given_id_that_exists_is_a_clear_error(observer: MongoObserver, experiment: dict) -> None:
    start(observer, experiment, _id=5)
    with pytest.raises(
        MongoStoreError, match=r"a run with _id 5 already exists in expkit_test_\w+\.runs"
    ):
        start(observer, experiment, _id=5)


def test_queued_run_then_started_under_its_id(
    observer: MongoObserver, experiment: dict, mongo_db: Any
) -> None:
    queued_at = utcnow()
    run_id = observer.queued_event(
        ex_info=experiment,
        command="main",
        host_info=HOST,
        queue_time=queued_at,
        config=CONFIG,
        meta_info=META,
        _id=None,
    )
    doc = mongo_db.runs.find_one({"_id": run_id})
    assert set(doc) == {"_id", "experiment", "command", "host", "config", "meta", "status"}
    assert doc["status"] == "QUEUED"
    assert doc["meta"]["queue_time"] == bson_time(queued_at)
    assert isinstance(doc["experiment"]["sources"][0][1], ObjectId)

    assert start(observer, experiment, _id=run_id) == run_id
    assert mongo_db.runs.find_one({"_id": run_id})["status"] == "RUNNING"


def test_overwrite_reuses_a_document(
    make_observer: Callable, experiment: dict, mongo_db: Any
) -> None:
    first = make_observer()
    run_id = start(first, experiment)
    first.log_metrics(points("loss", [0], [1.0]), info={})
    first.failed_event(fail_time=utcnow(), fail_trace=["boom\n"])
    mongo_db.runs.update_one({"_id": run_id}, {"$set": {"omniboard": {"tags": ["keep"]}}})

    again = make_observer(overwrite=run_id)
    assert start(again, experiment) == run_id
    again.completed_event(stop_time=utcnow(), result=1)
    run = mongo_db.runs.find_one({"_id": run_id})
    assert run["status"] == "COMPLETED" and run["result"] == 1
    assert run["omniboard"] == {"tags": ["keep"]}  # what other tools wrote stays
    assert "fail_trace" not in run  # the old outcome does not
    assert mongo_db.metrics.count_documents({"run_id": run_id}) == 0
    assert mongo_db.runs.count_documents({}) == 1

    with pytest.raises(UsageError, match="no run with _id 99 to overwrite"):
        start(make_observer(overwrite=99), experiment)


# --- metrics ---------------------------------------------------------------------------


def test_metrics_are_pushed_and_linked_from_info(
    observer: MongoObserver, experiment: dict, mongo_db: Any
) -> None:
    run_id = start(observer, experiment)
    observer.log_metrics(points("loss", [0, 1], [1.0, 0.5]), info={})
    observer.heartbeat_event(info={}, captured_out="", beat_time=utcnow(), result=None)
    batch = {**points("loss", [2], [0.25]), **points("acc", [10], [0.9])}
    observer.log_metrics(batch, info={})
    observer.completed_event(stop_time=utcnow(), result=None)

    loss = mongo_db.metrics.find_one({"run_id": run_id, "name": "loss"})
    assert (loss["steps"], loss["values"]) == ([0, 1, 2], [1.0, 0.5, 0.25])
    assert all(isinstance(t, datetime.datetime) for t in loss["timestamps"])
    assert len(loss["timestamps"]) == 3
    assert isinstance(loss["run_id"], int)
    assert mongo_db.metrics.count_documents({"run_id": run_id}) == 2
    # Omniboard joins info.metrics[].id ($toObjectId) to metrics._id.
    refs = mongo_db.runs.find_one({"_id": run_id})["info"]["metrics"]
    assert sorted(r["name"] for r in refs) == ["acc", "loss"]
    for ref in refs:
        assert mongo_db.metrics.find_one({"_id": ObjectId(ref["id"])})["name"] == ref["name"]


def test_metric_columns_are_stored_as_datetimes(
    observer: MongoObserver, experiment: dict, mongo_db: Any
) -> None:
    run_id = start(observer, experiment)
    stamps = [1714979299.25, 1714979299.9999996]
    columns = {
        "loss": {"name": "loss", "steps": [0, 1], "values": [1.0, 0.5], "timestamps": stamps}
    }
    observer.log_metric_columns(columns, info={})
    observer.completed_event(stop_time=utcnow(), result=None)
    loss = mongo_db.metrics.find_one({"run_id": run_id, "name": "loss"})
    assert (loss["steps"], loss["values"]) == ([0, 1], [1.0, 0.5])
    assert loss["timestamps"] == [
        datetime.datetime(2024, 5, 6, 7, 8, 19, 250000),
        datetime.datetime(2024, 5, 6, 7, 8, 20),
    ]


def test_one_observer_serves_many_runs(
    observer: MongoObserver, experiment: dict, mongo_db: Any
) -> None:
    ids = []
    for value in (1.0, 2.0):
        ids.append(start(observer, experiment))
        observer.log_metrics(points("loss", [0], [value]), info={})
        observer.heartbeat_event(
            info={}, captured_out=f"run {value}\n", beat_time=utcnow(), result=None
        )
        observer.completed_event(stop_time=utcnow(), result=value)
    assert ids == [1, 2]
    for run_id, value in zip(ids, (1.0, 2.0)):
        run = mongo_db.runs.find_one({"_id": run_id})
        assert run["captured_out"] == f"run {value}\n"
        [ref] = run["info"]["metrics"]
        assert mongo_db.metrics.find_one({"_id": ObjectId(ref["id"])})["values"] == [value]


# --- GridFS: sources, artifacts, resources ---------------------------------------------------


def test_sources_are_stored_once_per_content(
    make_observer: Callable, experiment: dict, mongo_db: Any, tmp_path: Path
) -> None:
    obs = make_observer()
    first = mongo_db.runs.find_one({"_id": start(obs, experiment)})["experiment"]["sources"][0][1]
    second = mongo_db.runs.find_one({"_id": start(obs, experiment)})["experiment"]["sources"][0][1]
    assert first == second
    fs = gridfs.GridFS(mongo_db)
    stored = fs.get(first)
    source = tmp_path / "exp_demo.py"
    assert stored.read() == source.read_bytes()
    assert stored.filename == str(source)
    assert stored.metadata["md5"] == hashlib.md5(source.read_bytes()).hexdigest()

    source.write_text("print('changed')\n")
    experiment["sources"] = [["exp_demo.py", hashlib.md5(source.read_bytes()).hexdigest()]]
    third = mongo_db.runs.find_one({"_id": start(obs, experiment)})["experiment"]["sources"][0][1]
    assert third != first and fs.get(third).read() == b"print('changed')\n"
    assert mongo_db["fs.files"].count_documents({}) == 2


def test_artifacts_go_to_gridfs(
    observer: MongoObserver, experiment: dict, mongo_db: Any, tmp_path: Path
) -> None:
    run_id = start(observer, experiment)
    plot = tmp_path / "plot.txt"
    plot.write_text("some numbers\n")
    model = tmp_path / "model.bin"
    model.write_bytes(bytes(range(256)) * 2000)
    observer.artifact_event(name="plot.txt", filename=str(plot))
    observer.artifact_event(
        name="weights", filename=str(model), metadata={"epoch": 3}, content_type="application/x-w"
    )
    observer.completed_event(stop_time=utcnow(), result=None)

    artifacts = mongo_db.runs.find_one({"_id": run_id})["artifacts"]
    assert [a["name"] for a in artifacts] == ["plot.txt", "weights"]
    fs = gridfs.GridFS(mongo_db)
    text, weights = (fs.get(a["file_id"]) for a in artifacts)
    assert text.read() == b"some numbers\n"
    assert text.filename == f"artifact://runs/{run_id}/plot.txt"
    files = {f["_id"]: f for f in mongo_db["fs.files"].find()}
    assert files[text._id]["contentType"] == "text/plain"  # guessed; Incense reads it
    assert weights.read() == model.read_bytes()
    assert files[weights._id]["contentType"] == "application/x-w"
    assert weights.metadata == {"epoch": 3}

    with pytest.raises(UsageError, match=r"artifact 'nope'.*is not a readable file"):
        observer.artifact_event(name="nope", filename=str(tmp_path / "missing"))


def test_resources_are_uploaded(
    observer: MongoObserver, experiment: dict, mongo_db: Any, tmp_path: Path
) -> None:
    run_id = start(observer, experiment)
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    observer.resource_event(filename=str(data))
    observer.resource_event(filename=str(data))  # the same file twice is listed once
    md5 = hashlib.md5(data.read_bytes()).hexdigest()
    assert mongo_db.runs.find_one({"_id": run_id})["resources"] == [[str(data), md5]]
    stored = gridfs.GridFS(mongo_db).find_one({"filename": str(data), "metadata.md5": md5})
    assert stored is not None and stored.read() == b"x,y\n1,2\n"


# --- heartbeats ---------------------------------------------------------------------------


def test_heartbeat_sends_only_what_changed(
    observer: MongoObserver, experiment: dict, mongo_db: Any, sent: Callable
) -> None:
    run_id = start(observer, experiment)
    info = {"history": list(range(5000)), "note": "x"}
    out = "line\n" * 100

    def beat() -> tuple[dict, int]:
        before = len(sent("update", "runs"))
        observer.heartbeat_event(info=info, captured_out=out, beat_time=utcnow(), result=None)
        updates = sent("update", "runs")[before:]
        assert len(updates) == 1  # one update per beat, never a replacement
        doc, size = updates[0]
        [spec] = doc["updates"]
        assert all(op.startswith("$") for op in spec["u"])
        return spec["u"], size

    update, first_size = beat()
    assert set(update["$set"]) == {"heartbeat", "result", "info", "captured_out"}

    update, size = beat()  # nothing changed but the time
    assert set(update["$set"]) == {"heartbeat"} and "$unset" not in update
    assert size < 1000 < first_size

    info["note"] = "y"
    update, size = beat()
    assert update["$set"].keys() == {"heartbeat", "info.note"} and size < 1000

    del info["note"]
    out += "more\n"
    update, _ = beat()
    assert update["$set"].keys() == {"heartbeat", "captured_out"}
    assert update["$unset"] == {"info.note": ""}

    observer.completed_event(stop_time=utcnow(), result=5)
    final = sent("update", "runs")[-1][0]["updates"][0]["u"]
    assert final["$set"].keys() == {"stop_time", "result", "status"}
    run = mongo_db.runs.find_one({"_id": run_id})
    assert run["info"] == {"history": list(range(5000))}
    assert run["captured_out"] == out and run["result"] == 5
    for doc, _ in sent("update", "runs"):  # the run's fixed parts are sent once, at its start
        assert not {"config", "experiment", "host", "meta"} & set(doc["updates"][0]["u"]["$set"])


def test_captured_output_beyond_the_tail_is_complete(
    observer: MongoObserver, experiment: dict, mongo_db: Any, sent: Callable
) -> None:
    run_id = start(observer, experiment)
    out = ""
    for beat in range(6):
        out += "".join(f"beat {beat} line {i} " + "." * 60 + "\n" for i in range(4000))
        observer.heartbeat_event(info={}, captured_out=out, beat_time=utcnow(), result=None)
    observer.completed_event(stop_time=utcnow(), result=None)
    assert len(out) > 1_500_000

    run = mongo_db.runs.find_one({"_id": run_id})
    note, _, tail = run["captured_out"].partition("\n")
    assert "runs.captured_out" in note
    assert out.endswith(tail) and TAIL_CHARS - 1024 <= len(tail) <= TAIL_CHARS
    assert tail.startswith("beat 5 line")  # cut at a line boundary
    assert load_captured_out(mongo_db.runs, run_id) == out
    # Each beat sent its new output once and the run document only its bounded tail.
    assert all(size < TAIL_CHARS + 10_000 for _, size in sent("update", "runs"))
    stored = sum(size for _, size in sent("insert", "runs.captured_out"))
    assert len(out) <= stored < len(out) + 10_000


def test_output_rewritten_by_a_filter_is_replaced(
    observer: MongoObserver, experiment: dict, mongo_db: Any
) -> None:
    run_id = start(observer, experiment)
    out = "progress 1%\n" + "x" * (TAIL_CHARS + 100)
    observer.heartbeat_event(info={}, captured_out=out, beat_time=utcnow(), result=None)
    out = "progress 100%\n" + "x" * (TAIL_CHARS + 100) + "done\n"
    observer.heartbeat_event(info={}, captured_out=out, beat_time=utcnow(), result=None)
    assert load_captured_out(mongo_db.runs, run_id) == out
    out = "Output capturing turned off."  # a filter that replaces everything
    observer.heartbeat_event(info={}, captured_out=out, beat_time=utcnow(), result=None)
    assert load_captured_out(mongo_db.runs, run_id) == out
    assert mongo_db.runs.find_one({"_id": run_id})["captured_out"] == out


def test_short_output_stays_in_the_run_document(
    observer: MongoObserver, experiment: dict, mongo_db: Any
) -> None:
    run_id = start(observer, experiment)
    observer.heartbeat_event(info={}, captured_out="hi\n", beat_time=utcnow(), result=None)
    assert mongo_db["runs.captured_out"].count_documents({}) == 0
    assert load_captured_out(mongo_db.runs, run_id) == "hi\n"


def test_large_info_moves_to_gridfs(
    observer: MongoObserver, experiment: dict, mongo_db: Any
) -> None:
    run_id = start(observer, experiment)
    observer.log_metrics(points("loss", [0], [1.0]), info={})
    big = {"samples": ["y" * 1000] * (INFO_LIMIT // 1000 + 10)}
    observer.heartbeat_event(info=big, captured_out="", beat_time=utcnow(), result=None)

    info = mongo_db.runs.find_one({"_id": run_id})["info"]
    assert "samples" not in info
    assert info["metrics"][0]["name"] == "loss"  # Omniboard still finds the metrics
    assert info["expkit_info_file"]["bytes"] > INFO_LIMIT
    full = load_info(mongo_db.runs, run_id)
    assert full["samples"] == big["samples"] and full["metrics"] == info["metrics"]

    observer.heartbeat_event(info={"small": 1}, captured_out="", beat_time=utcnow(), result=None)
    info = mongo_db.runs.find_one({"_id": run_id})["info"]
    assert info == {"small": 1, "metrics": full["metrics"]}
    assert load_info(mongo_db.runs, run_id) == info
    assert (
        mongo_db["fs.files"].count_documents({"filename": {"$in": [f"info://runs/{run_id}"]}}) == 0
    )


# --- collections and construction ---------------------------------------------------------


def test_collection_prefix_and_create_from(
    make_observer: Callable, experiment: dict, mongo_db: Any
) -> None:
    obs = make_observer(collection_prefix="proj")
    run_id = start(obs, experiment)
    obs.log_metrics(points("loss", [0], [1.0]), info={})
    obs.completed_event(stop_time=utcnow(), result=None)
    assert mongo_db.proj_runs.find_one({"_id": run_id})["status"] == "COMPLETED"
    assert mongo_db.proj_metrics.count_documents({"run_id": run_id}) == 1

    with pytest.warns(DeprecationWarning):
        old_style = make_observer(collection="legacy")
    assert (old_style.runs.name, old_style.metrics.name) == ("legacy", "metrics")
    with pytest.raises(UsageError, match=r"'fs\.files' is reserved"):
        make_observer(collection="fs.files")

    made = MongoObserver.create_from(
        mongo_db.other, gridfs.GridFS(mongo_db), metrics_collection=mongo_db.other_m
    )
    assert made.priority == 30
    run_id = start(made, experiment)
    made.log_metrics(points("acc", [0], [0.5]), info={})
    made.completed_event(stop_time=utcnow(), result=2)
    assert mongo_db.other.find_one({"_id": run_id})["result"] == 2
    assert mongo_db.other_m.count_documents({"run_id": run_id}) == 1


# --- passwords --------------------------------------------------------------------------


def _stored_text(mongo_db: Any) -> str:
    """Every document of every collection in ``mongo_db``, GridFS chunks decoded, as one text."""
    parts = []
    for name in mongo_db.list_collection_names():
        for doc in mongo_db[name].find():
            if name.endswith(".chunks"):
                doc["data"] = bytes(doc["data"]).decode("latin-1")
            parts.append(json_util.dumps(doc))
    return "\n".join(parts)


def test_password_never_stored_logged_or_shown(
    make_observer: Callable,
    mongo_url: str,
    experiment: dict,
    mongo_db: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mongo_server: MemoryMongo | None,
) -> None:
    password = PASSWORD if mongo_server else mongo_store._password(mongo_url)
    if not password:
        pytest.skip("the real server's URL has no password")
    assert password in mongo_url
    caplog.set_level(logging.DEBUG)
    obs = make_observer()
    assert password not in repr(obs) and "***" in repr(obs)
    command_line = f"expkit run exp_demo.py --store {mongo_url}"
    run_id = obs.started_event(
        ex_info=experiment,
        command="main",
        host_info={**HOST, "argv": command_line.split()},
        start_time=utcnow(),
        config={**CONFIG, "db_url": mongo_url},
        meta_info={**META, "options": {"--store": [mongo_url]}, "comment": command_line},
        _id=None,
    )
    out = f"connecting to {mongo_url}\n" + "z" * TAIL_CHARS + f"\nagain {mongo_url}\n"
    obs.heartbeat_event(
        info={"url": mongo_url}, captured_out=out, beat_time=utcnow(), result=mongo_url
    )
    artifact = tmp_path / "notes.txt"
    artifact.write_text("nothing secret\n")
    obs.artifact_event(name="notes.txt", filename=str(artifact), metadata={"from": mongo_url})
    obs.failed_event(fail_time=utcnow(), fail_trace=[f"ConnectionError: {mongo_url}\n"])

    stored = _stored_text(mongo_db)
    assert mongo_db.runs.find_one({"_id": run_id})["meta"]["options"]["--store"] == [
        redact_url(mongo_url)
    ]
    assert "***" in stored
    assert password not in stored
    assert password not in caplog.text

    wrong = mongo_url.replace(password, "not-the-password")
    with pytest.raises(MongoStoreError) as info:
        start(make_observer(url=wrong, serverSelectionTimeoutMS=3000), experiment)
    assert "not-the-password" not in str(info.value) and "***" in str(info.value)
    shown = "".join(traceback.format_exception(info.value))  # what a traceback would print
    assert "not-the-password" not in shown


def test_invalid_url_is_a_usage_error_without_the_password() -> None:
    with pytest.raises(UsageError, match=r"invalid MongoDB URL mongodb\+srv://u:\*\*\*@") as info:
        mongo_store.expkit_store_for_url(url="mongodb+srv://u:hush-hush@nonexistent.invalid/db")
    assert "hush-hush" not in str(info.value)
    with pytest.raises(UsageError, match="invalid MongoDB URL") as info:
        mongo_store.expkit_store_for_url(url="mongodb://u:hush-hush@host:notaport/db")
    assert "hush-hush" not in str(info.value)


# --- an unreachable or lost server -----------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast_and_clearly(experiment: dict) -> None:
    url = f"mongodb://user:hidden-pw@127.0.0.1:{_closed_port()}/db?serverSelectionTimeoutMS=300"
    obs = mongo_store.expkit_store_for_url(url=url)
    began = time.monotonic()
    with pytest.raises(
        ExpkitError, match=r"cannot reach MongoDB at db\.runs at mongodb://user:\*\*\*@"
    ) as info:
        start(obs, experiment)
    assert time.monotonic() - began < 5
    assert "hidden-pw" not in str(info.value)
    obs.close()


@pytest.mark.slow
def test_unreachable_server_with_default_timeouts(experiment: dict) -> None:
    obs = mongo_store.expkit_store_for_url(url=f"mongodb://127.0.0.1:{_closed_port()}/db")
    began = time.monotonic()
    with pytest.raises(MongoStoreError, match="cannot reach MongoDB"):
        start(obs, experiment)
    assert time.monotonic() - began < 10
    obs.close()


def test_a_call_while_the_server_is_away_raises_one_line_quickly(
    make_observer: Callable,
    experiment: dict,
    memory_mongo: MemoryMongo,
    tmp_path: Path,
) -> None:
    # The store keeps nothing back in memory: it raises, and the core spools the event
    # and replays it when the server is back (tests/test_faults.py).
    obs = make_observer(serverSelectionTimeoutMS=300)
    start(obs, experiment)
    memory_mongo.down = True
    artifact = tmp_path / "a.txt"
    artifact.write_text("kept\n")
    calls = [
        lambda: obs.log_metrics(points("loss", [0, 1], [1.0, 0.5]), info={}),
        lambda: obs.artifact_event(name="a.txt", filename=str(artifact)),
        lambda: obs.heartbeat_event(
            info={"k": 1}, captured_out="x\n", beat_time=utcnow(), result=None
        ),
    ]
    for call in calls:
        began = time.monotonic()
        with pytest.raises(MongoStoreError) as err:
            call()
        assert time.monotonic() - began < 5
        assert "\n" not in str(err.value) and "localhost" in str(err.value)
    memory_mongo.down = False


def test_end_of_run_kept_in_failure_dir_when_the_server_is_gone(
    make_observer: Callable, experiment: dict, memory_mongo: MemoryMongo, tmp_path: Path
) -> None:
    obs = make_observer(serverSelectionTimeoutMS=300, failure_dir=tmp_path / "failed")
    run_id = start(obs, experiment)
    obs.heartbeat_event(info={}, captured_out="last words\n", beat_time=utcnow(), result=None)
    memory_mongo.down = True
    with pytest.raises(MongoStoreError):
        obs.log_metrics(points("loss", [0], [3.0]), info={})
    with pytest.raises(
        MongoStoreError, match=r"could not save the end of run 1 .*; it was kept in "
    ):
        obs.completed_event(stop_time=utcnow(), result=42)
    [dump] = (tmp_path / "failed").iterdir()
    assert dump.name.startswith(f"expkit_mongo_fail_{run_id}_")
    record = json_util.loads(dump.read_text())
    assert record["run"]["status"] == "COMPLETED" and record["run"]["result"] == 42
    assert record["captured_out"] == "last words\n"
    assert record["unsent_metrics"]["loss"]["values"] == [3.0]


# --- plugin hooks -------------------------------------------------------------------------


def test_plugin_hooks_claim_mongodb_urls(mongo_url: str, experiment: dict, mongo_db: Any) -> None:
    hook = create_plugin_manager().hook
    obs = hook.expkit_store_for_url(url=mongo_url)
    try:
        assert isinstance(obs, MongoObserver)
        assert obs.runs.database.name == mongo_db.name
        assert start(obs, experiment) == 1
        assert mongo_db.runs.count_documents({}) == 1
    finally:
        obs.close()
    schemes = [s for found in hook.expkit_store_schemes() for s in found or []]
    assert {"mongodb", "mongodb+srv"} <= set(schemes)
    assert hook.expkit_observer_class(name="MongoObserver") is MongoObserver
    from expkit.observers import MongoObserver as exported

    assert exported is MongoObserver


def test_url_without_database_uses_sacred() -> None:
    obs = mongo_store.expkit_store_for_url(url="mongodb://127.0.0.1:1")
    assert (obs.runs.database.name, obs.runs.name, obs.metrics.name) == (
        "sacred",
        "runs",
        "metrics",
    )
    obs.close()
    assert mongo_store.expkit_store_for_url(url="tinydb://runs.json") is None
    assert mongo_store.expkit_store_for_url(url="runs") is None


def test_plugin_loads_without_pymongo(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['pymongo'] = None; sys.modules['gridfs'] = None\n"
        "import expkit_plugins.mongo_store as m\n"
        "try:\n"
        "    m.expkit_store_for_url(url='mongodb://localhost/db')\n"
        "except m.UsageError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "the MongoDB store needs pymongo: pip install 'expkit[mongo]'" in done.stdout


# --- with the core ---------------------------------------------------------------------------


def test_experiment_runs_into_mongo(
    observer: MongoObserver, mongo_db: Any, capsys: pytest.CaptureFixture
) -> None:
    import expkit

    ex = expkit.Experiment("mongo_demo")
    ex.observers.append(observer)

    @ex.config
    def cfg() -> None:
        lr = 0.1  # noqa: F841

    @ex.main
    def main(lr: float, _run: Any) -> float:
        print("training")
        _run.log_scalar("loss", 0.5)
        _run.log_scalar("loss", 0.25)
        return lr * 2

    with capsys.disabled():  # pytest's own capture would hide the output from expkit's
        run = ex.run()
    doc = mongo_db.runs.find_one({"_id": run._id})
    assert doc["status"] == "COMPLETED" and doc["result"] == 0.2
    assert doc["config"]["lr"] == 0.1 and isinstance(doc["config"]["seed"], int)
    assert doc["experiment"]["name"] == "mongo_demo"
    assert "training" in doc["captured_out"]
    [ref] = doc["info"]["metrics"]
    assert mongo_db.metrics.find_one({"_id": ObjectId(ref["id"])})["values"] == [0.5, 0.25]
