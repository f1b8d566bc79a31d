"""Every observer a Sacred user imports exists, with Sacred 0.8.7's constructors and attributes.

``FileStorageObserver.create``, ``MongoObserver.create``, ``TinyDbObserver.create`` and
``create_from``, ``QueuedMongoObserver``, ``QueueObserver``, the TinyDB ``runs``/``fs``
views Sacred's readers use, and what ``GoogleCloudStorageObserver`` says on import.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tinydb import Query, TinyDB

from expkit import Experiment
from expkit.errors import UsageError
from expkit.observers import (
    FileStorageObserver,
    MongoObserver,
    QueuedMongoObserver,
    QueueObserver,
    TinyDbObserver,
    TinyDbReader,
)

if TYPE_CHECKING:
    from mongo_server import MemoryMongo


def experiment(observer: Any, name: str = "observed") -> Experiment:
    ex = Experiment(name, interactive=True)
    ex.observers.append(observer)
    ex.add_config(C=1.0)

    @ex.main
    def main(C, _run):
        _run.log_scalar("loss", 0.5)
        return C * 2

    return ex


# --- the deprecated create() of Sacred 0.8.7 ----------------------------------------


def test_file_storage_observer_create_is_a_deprecated_alias(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"FileStorageObserver\.create\(\.\.\.\) is dep"):
        obs = FileStorageObserver.create(tmp_path / "my_runs", priority=5)
    assert obs == FileStorageObserver(tmp_path / "my_runs")
    assert obs.priority == 5
    assert not (tmp_path / "my_runs").exists()  # nothing is written before a run
    run = experiment(obs).run()
    assert obs.dir == str(tmp_path / "my_runs" / run._id)
    assert obs.run_entry["status"] == "COMPLETED"
    assert json.loads((tmp_path / "my_runs" / "1" / "run.json").read_text())["result"] == 2.0


def test_tinydb_observer_create_is_a_deprecated_alias(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"TinyDbObserver\.create"):
        obs = TinyDbObserver.create(path=str(tmp_path / "foo"))
    assert (tmp_path / "foo").is_dir()
    experiment(obs).run()
    assert [doc["result"] for doc in obs.runs.all()] == [2.0]


def test_mongo_observer_create_is_a_deprecated_alias(mongo_url: str, mongo_db: Any) -> None:
    with pytest.warns(DeprecationWarning, match=r"MongoObserver\.create"):
        obs = MongoObserver.create(url=mongo_url, db_name=mongo_db.name)
    try:
        run = experiment(obs).run()
    finally:
        obs.close()
    assert mongo_db.runs.find_one({"_id": run._id})["result"] == 2.0


# --- TinyDB: create_from, runs and fs -------------------------------------------------


def test_tinydb_create_from_an_existing_database(tmp_path: Path) -> None:
    store = tmp_path / "runs_db"
    store.mkdir()
    db = TinyDB(store / "metadata.json")

    class HashFS:  # what create_from reads of a hashfs.HashFS
        root = str(store / "hashfs")

    obs = TinyDbObserver.create_from(db, HashFS())
    assert obs == TinyDbObserver(store) and obs != TinyDbObserver(tmp_path / "other")
    experiment(obs).run()
    db.close()
    fresh = TinyDB(store / "metadata.json", access_mode="r")
    assert [doc["status"] for doc in fresh.table("runs").all()] == ["COMPLETED"]
    fresh.close()


def test_tinydb_create_from_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    from tinydb.storages import MemoryStorage

    with pytest.raises(UsageError, match="needs a TinyDB kept in a JSON file"):
        TinyDbObserver.create_from(TinyDB(storage=MemoryStorage), None)

    class ElsewhereFS:
        root = str(tmp_path / "elsewhere")

    db = TinyDB(tmp_path / "metadata.json")
    with pytest.raises(UsageError, match=r"files are kept in .*hashfs, not in .*elsewhere"):
        TinyDbObserver.create_from(db, ElsewhereFS())
    db.close()


def test_tinydb_runs_and_fs_read_what_was_stored(tmp_path: Path) -> None:
    obs = TinyDbObserver(tmp_path / "db")
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    ex = experiment(obs)

    @ex.command
    def load(_run):
        with _run.open_resource(data) as f:
            return f.read()

    ex.run()
    ex.run("load")
    assert len(obs.runs) == 2
    first = obs.runs.get(doc_id=1)
    assert (first["status"], first["result"], first["experiment"]["name"]) == (
        "COMPLETED",
        2.0,
        "observed",
    )
    [loaded] = obs.runs.search(Query().command == "load")
    name, md5, _ = loaded["resources"][0]
    assert name == str(data)
    assert obs.fs.exists(data) and obs.fs.exists(md5)
    address = obs.fs.get(md5)
    assert (address.id, address.relpath) == (md5, f"{md5[:2]}/{md5[2:4]}/{md5[4:6]}/{md5[6:]}")
    with obs.fs.open(md5) as f:
        assert f.read() == b"x,y\n1,2\n"
    assert not obs.fs.exists("0" * 32)
    reader = TinyDbReader(tmp_path / "db")
    assert [doc["command"] for doc in reader.runs.all()] == ["main", "load"]
    assert reader.search(Query().command == "load") == [loaded]
    assert reader.fs.get(data) == address


def test_tinydb_runs_is_read_only(tmp_path: Path) -> None:
    obs = TinyDbObserver(tmp_path / "db")
    experiment(obs).run()
    with pytest.raises(Exception, match="read-only through db/runs"):
        obs.runs.insert({"status": "FAKE"})
    assert [doc["status"] for doc in obs.runs.all()] == ["COMPLETED"]


def test_tinydb_fs_put_stores_once(tmp_path: Path) -> None:
    obs = TinyDbObserver(tmp_path / "db")
    source = tmp_path / "model.bin"
    source.write_bytes(b"\x00weights")
    first = obs.fs.put(source)
    again = obs.fs.put(source)
    assert (first.is_duplicate, again.is_duplicate) == (False, True)
    assert Path(first.abspath).read_bytes() == b"\x00weights"
    assert Path(obs.fs.root) == tmp_path / "db" / "hashfs"


# --- FileStorageObserver: Sacred's methods for subclasses ------------------------------


def test_file_storage_save_file_and_save_json(tmp_path: Path) -> None:
    class WithReport(FileStorageObserver):
        def completed_event(self, stop_time: Any, result: Any) -> None:
            super().completed_event(stop_time, result)
            self.save_json({"result": result}, "report.json")
            self.save_file(str(notes), "notes/today.txt")

    notes = tmp_path / "notes.txt"
    notes.write_text("went fine\n")
    obs = WithReport(tmp_path / "runs")
    run = experiment(obs).run()
    folder = tmp_path / "runs" / run._id
    assert json.loads((folder / "report.json").read_text()) == {"result": 2.0}
    assert (folder / "notes" / "today.txt").read_text() == "went fine\n"
    with pytest.raises(FileExistsError, match=r"'cout\.txt' is written by the file store"):
        obs.save_file(str(notes), "cout.txt")
    assert (folder / "cout.txt").read_text() != "went fine\n"


# --- QueuedMongoObserver and QueueObserver ----------------------------------------------


def test_queued_mongo_observer_is_a_mongo_observer_that_survives_an_outage(
    memory_mongo: MemoryMongo, mongo_url: str, mongo_db: Any
) -> None:
    obs = QueuedMongoObserver(
        interval=5.0, url=mongo_url, db_name=mongo_db.name, serverSelectionTimeoutMS=300
    )
    assert isinstance(obs, MongoObserver)
    assert (obs.interval, obs.retry_interval, obs.priority) == (5.0, 10.0, 30)
    ex = Experiment("outage", interactive=True)
    ex.observers.append(obs)

    @ex.main
    def main(_run):
        _run.log_scalar("loss", 1.0)
        time.sleep(0.1)
        memory_mongo.down = True
        _run.log_scalar("loss", 0.5)
        time.sleep(0.3)  # heartbeats find the server away
        memory_mongo.down = False
        _run.log_scalar("loss", 0.25)
        time.sleep(0.1)
        return "done"

    try:
        run = ex.run(options={"--beat-interval": 0.05, "--capture": "sys"})
    finally:
        memory_mongo.down = False
        obs.close()
    assert run.status == "COMPLETED"
    doc = mongo_db.runs.find_one({"_id": run._id})
    assert (doc["status"], doc["result"]) == ("COMPLETED", "done")
    [loss] = mongo_db.metrics.find({"run_id": run._id})
    assert loss["values"] == [1.0, 0.5, 0.25]


def test_queued_mongo_observer_create_is_deprecated_too(mongo_url: str, mongo_db: Any) -> None:
    with pytest.warns(DeprecationWarning, match=r"QueuedMongoObserver\.create"):
        obs = QueuedMongoObserver.create(url=mongo_url, db_name=mongo_db.name)
    try:
        run = experiment(obs).run()
    finally:
        obs.close()
    assert mongo_db.runs.find_one({"_id": run._id})["status"] == "COMPLETED"


def test_queue_observer_gives_the_observer_itself(tmp_path: Path) -> None:
    inner = FileStorageObserver(tmp_path / "runs")
    assert QueueObserver(inner, interval=1.0, retry_interval=2.0) is inner


# --- GoogleCloudStorageObserver ---------------------------------------------------------


def test_google_cloud_storage_observer_says_what_to_use_instead() -> None:
    with pytest.raises(ImportError, match=r"expkit has no GoogleCloudStorageObserver\. Use S3"):
        from expkit.observers import GoogleCloudStorageObserver  # noqa: F401
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchObserver'"):
        from expkit import observers

        observers.NoSuchObserver  # noqa: B018
