"""The MongoDB store's read side: MongoRunReader on runs written by real runs, served by the
in-memory server of tests/mongo_server.py over a real socket or, when
``EXPKIT_TEST_MONGO_URL`` is set, by a real MongoDB."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pymongo")
pytest.importorskip("mockupdb")

from mongo_server import PASSWORD

from expkit.errors import UsageError
from expkit.pluginmanager import create_plugin_manager
from expkit.store import StoreError, StoreReader, open_reader, open_store
from expkit_plugins.mongo_store import TAIL_CHARS, MongoRunReader
from expkit_plugins.mongo_store.storage import MongoStorage


@pytest.fixture(scope="module")
def pm() -> Any:
    return create_plugin_manager()


@pytest.fixture
def reader(pm: Any, mongo_url: str) -> Iterator[StoreReader]:
    made = open_reader(pm, mongo_url)
    yield made
    made.close()


def run_experiment(
    url: str, tmp_path: Path, lr: float = 0.1, output: str = "", resource: Path | None = None
) -> Any:
    """One real run of a small experiment into the database of ``url``; its id."""
    from expkit import Experiment

    model = tmp_path / f"model_{lr}.txt"
    model.write_text(f"weights {lr}\n")
    ex = Experiment("mongo_reader")
    observer = open_store(create_plugin_manager(), url)
    ex.observers.append(observer)
    ex.add_config(lr=lr)

    @ex.main
    def main(lr, _run):
        print("training with", lr)
        print(output, end="")
        for step in range(3):
            _run.log_scalar("loss", lr / (step + 1))
        _run.info["best"] = lr
        if resource is not None:
            _run.add_resource(str(resource))
        _run.add_artifact(str(model), name="model.txt")
        return lr * 10

    try:
        return ex.run(options={"--capture": "sys"})._id
    finally:
        observer.close()


def test_output_larger_than_the_run_document_comes_back_whole(mongo_url, reader, tmp_path):
    long = "".join(f"line {i:07d}\n" for i in range(TAIL_CHARS // 10))
    run_id = run_experiment(mongo_url, tmp_path, output=long)
    assert reader.get_run(run_id).captured_out.endswith(long)


def test_delete_run_removes_everything_of_the_run(mongo_url, reader, mongo_db, tmp_path):
    long = "x" * (TAIL_CHARS + 10)
    first = run_experiment(mongo_url, tmp_path, 0.1, output=long)
    second = run_experiment(mongo_url, tmp_path, 0.2)
    assert mongo_db["runs.captured_out"].count_documents({"run_id": first}) > 0
    reader.delete_run(str(first))
    assert [r.id for r in reader.list_runs()] == [second]
    assert mongo_db.metrics.count_documents({"run_id": first}) == 0
    assert mongo_db.metrics.count_documents({"run_id": second}) == 1
    assert mongo_db["runs.captured_out"].count_documents({"run_id": first}) == 0
    files = [f["filename"] for f in mongo_db["fs.files"].find()]
    assert not any(name.endswith(f"/{first}/model.txt") for name in files)
    assert any(name.endswith(f"/{second}/model.txt") for name in files)
    # Sources are shared by path and content: the remaining run still has its own.
    source = reader.get_run(second).experiment_info["sources"][0][0]
    assert reader.read_source(second, source)
    with pytest.raises(KeyError):
        reader.get_run(first)
    with pytest.raises(KeyError):
        reader.delete_run(first)


def test_sacred_documents_without_expkit_fields_are_read(mongo_db, reader):
    mongo_db.runs.insert_one(
        {
            "_id": 1,
            "experiment": {"name": "old", "sources": []},
            "status": "RUNNING",
            "start_time": datetime.datetime(2020, 1, 2, 3, 4, 5),
            "heartbeat": datetime.datetime(2020, 1, 2, 3, 4, 15),
            "config": {"C": 1},
            "captured_out": "hello\n",
            "info": {"metrics": [{"name": "acc", "id": "abc"}]},
        }
    )
    [summary] = reader.list_runs()
    assert summary.duration == datetime.timedelta(seconds=10)
    record = reader.get_run(1)
    assert (record.captured_out, record.info, record.metrics) == ("hello\n", {}, {})


def test_damaged_documents_are_read_as_far_as_they_go(mongo_db, reader, caplog):
    mongo_db.runs.insert_one(
        {
            "_id": 1,
            "experiment": {"name": "odd", "sources": "not a list"},
            "status": 7,
            "start_time": "yesterday",
            "config": [1],
            "artifacts": ["x", {"no": "name"}],
            "resources": [[], ["/data.csv"]],
            "captured_out": 5,
            "info": "text",
        }
    )
    mongo_db.metrics.insert_one({"run_id": 1, "name": "loss", "steps": 5})
    [summary] = reader.list_runs()
    assert (summary.experiment, summary.status, summary.start_time) == ("odd", "UNKNOWN", None)
    record = reader.get_run("1")
    assert (record.config, record.artifacts, record.captured_out, record.info) == ({}, (), "", {})
    assert record.resources == (("/data.csv", ""),)
    assert record.metrics == {} and "metrics unreadable" in caplog.text
    with pytest.raises(StoreError, match=r"'/data.csv' is recorded in .* but not stored"):
        reader.read_resource(1, "/data.csv")


def test_reader_claims_the_urls_of_the_store(pm, mongo_url, tmp_path):
    run_id = run_experiment(mongo_url, tmp_path)
    db_name = mongo_url.rpartition("/")[2].partition("?")[0]
    reader = open_reader(pm, mongo_url)
    try:
        assert isinstance(reader.storage, MongoStorage)
        assert reader.storage.runs.database.name == db_name
        assert reader.capabilities == {"delete", "edit"}
    finally:
        reader.close()
    with pytest.raises(UsageError, match="invalid MongoDB URL") as info:
        open_reader(pm, "mongodb://user:secret@:bad:port/")
    assert "secret" not in str(info.value)
    # Sacred-style: the database by name, the URL without one.
    by_name = MongoRunReader(mongo_url.replace(f"/{db_name}", "/"), db_name)
    try:
        assert [r.id for r in by_name.list_runs()] == [run_id]
        assert by_name.runs.name == "runs"
    finally:
        by_name.close()


def test_comment_and_tags_are_edited_in_place(pm, mongo_url, mongo_db, reader, tmp_path):
    run_id = run_experiment(mongo_url, tmp_path)
    mongo_db.runs.update_one({"_id": run_id}, {"$set": {"omniboard": {"notes": "kept"}}})
    edited = reader.edit_run(str(run_id), comment="best so far", tags=["keep", "paper"])
    assert (edited.meta["comment"], edited.meta["tags"]) == ("best so far", ["keep", "paper"])
    doc = mongo_db.runs.find_one({"_id": run_id})
    assert doc["meta"]["comment"] == "best so far" and doc["meta"]["tags"] == ["keep", "paper"]
    assert doc["meta"]["command"] == "main"  # the rest of meta stays
    assert doc["omniboard"] == {"notes": "kept"}  # so does what other tools wrote
    assert doc["status"] == "COMPLETED"


def test_server_gone_is_one_clear_error(pm, mongo_url, memory_mongo):
    quick = mongo_url + ("&" if "?" in mongo_url else "?") + "serverSelectionTimeoutMS=300"
    reader = open_reader(pm, quick)
    memory_mongo.down = True
    try:
        with pytest.raises(StoreError, match="listing runs failed") as info:
            reader.list_runs()
        assert "\n" not in str(info.value) and PASSWORD not in str(info.value)
    finally:
        memory_mongo.down = False
        reader.close()
