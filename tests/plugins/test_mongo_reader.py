"""The MongoDB store's read side: MongoRunReader on runs written by real runs, served by the
in-memory server of tests/mongo_server.py over a real socket or, when
``EXPKIT_TEST_MONGO_URL`` is set, by a real MongoDB."""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pymongo")
pytest.importorskip("mockupdb")

from mongo_server import PASSWORD

from expkit.errors import UsageError
from expkit.pluginmanager import create_plugin_manager
from expkit.utils import redact_url
from expkit_plugins import mongo_store
from expkit_plugins.mongo_store import TAIL_CHARS, MongoRunReader


@pytest.fixture
def reader(mongo_url: str) -> Iterator[MongoRunReader]:
    made = mongo_store.expkit_reader_for_url(url=mongo_url)
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
    observer = mongo_store.expkit_store_for_url(url=url)
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


def test_list_runs_gives_summaries(mongo_url, mongo_server, reader, tmp_path):
    first = run_experiment(mongo_url, tmp_path, 0.1)
    second = run_experiment(mongo_url, tmp_path, 0.2)
    runs = reader.list_runs()
    assert [(r.id, r.status, r.result) for r in runs] == [
        (first, "COMPLETED", 1.0),
        (second, "COMPLETED", 2.0),
    ]
    assert runs[0].experiment == "mongo_reader" and runs[0].config["lr"] == 0.1
    assert isinstance(runs[0].start_time, datetime.datetime)
    assert runs[0].artifacts == ("model.txt",)
    assert runs[0].captured_out is None and runs[0].metrics is None
    # The store is named without its password.
    assert runs[0].store == redact_url(mongo_url)
    if mongo_server is not None:  # its URLs have a password; a real server's may have none
        assert PASSWORD not in runs[0].store and "***" in runs[0].store


def test_get_run_returns_everything_recorded(mongo_url, reader, tmp_path):
    run_id = run_experiment(mongo_url, tmp_path)
    for asked in (run_id, str(run_id)):  # ids typed on a command line are text
        record = reader.get_run(asked)
        assert record.id == run_id
    assert record.info == {"best": 0.1}  # without the store's links to metrics documents
    assert record.metrics["loss"]["values"] == [0.1, 0.05, 0.1 / 3]
    assert all(isinstance(t, datetime.datetime) for t in record.metrics["loss"]["timestamps"])
    assert "training with 0.1" in record.captured_out
    assert record.host["hostname"] and record.experiment_info["name"] == "mongo_reader"
    assert record.stop_time >= record.start_time


def test_output_larger_than_the_run_document_comes_back_whole(mongo_url, reader, tmp_path):
    long = "".join(f"line {i:07d}\n" for i in range(TAIL_CHARS // 10))
    run_id = run_experiment(mongo_url, tmp_path, output=long)
    assert reader.get_run(run_id).captured_out.endswith(long)


def test_read_source_and_artifact(mongo_url, reader, tmp_path):
    run_id = run_experiment(mongo_url, tmp_path)
    names = [s[0] for s in reader.get_run(run_id).experiment_info["sources"]]
    [mine] = [name for name in names if name.endswith(Path(__file__).name)]
    assert reader.read_source(run_id, mine) == Path(__file__).read_bytes()
    assert reader.read_artifact(str(run_id), "model.txt") == b"weights 0.1\n"
    with pytest.raises(KeyError, match="has no source"):
        reader.read_source(run_id, "nope.py")
    with pytest.raises(KeyError, match="has no artifact"):
        reader.read_artifact(run_id, "nope.txt")


def test_read_resource_by_its_original_path(mongo_url, reader, tmp_path):
    data = tmp_path / "data.csv"
    data.write_bytes(b"a,b\n1,2\n")
    run_id = run_experiment(mongo_url, tmp_path, resource=data)
    data.write_bytes(b"changed since")  # the stored copy is what the reader returns
    assert reader.get_run(run_id).resources == (
        (str(data), hashlib.md5(b"a,b\n1,2\n").hexdigest()),
    )
    assert reader.read_resource(run_id, str(data)) == b"a,b\n1,2\n"
    with pytest.raises(KeyError, match=r"has no resource 'other.csv'"):
        reader.read_resource(run_id, "other.csv")
    with pytest.raises(KeyError):
        reader.read_resource(12345, str(data))


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


def test_unknown_ids_raise_key_error(mongo_url, reader, tmp_path):
    run_experiment(mongo_url, tmp_path)
    for bad in (99, "99", "abc", None):
        with pytest.raises(KeyError, match="no run"):
            reader.get_run(bad)


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


def test_reader_claims_the_urls_of_the_store(mongo_url, tmp_path):
    pm = create_plugin_manager()
    reader = pm.hook.expkit_reader_for_url(url=mongo_url)
    try:
        assert isinstance(reader, MongoRunReader)
        assert reader.runs.database.name == mongo_url.rpartition("/")[2].partition("?")[0]
    finally:
        reader.close()
    assert mongo_store.expkit_reader_for_url(url="tinydb://x") is None
    with pytest.raises(UsageError, match="invalid MongoDB URL"):
        mongo_store.expkit_reader_for_url(url="mongodb://user:secret@:bad:port/")


def test_server_gone_is_one_clear_error(mongo_url, memory_mongo):
    quick = mongo_url + ("&" if "?" in mongo_url else "?") + "serverSelectionTimeoutMS=300"
    reader = mongo_store.expkit_reader_for_url(url=quick)
    memory_mongo.down = True
    try:
        with pytest.raises(mongo_store.MongoStoreError, match="listing runs failed") as info:
            reader.list_runs()
        assert "\n" not in str(info.value) and PASSWORD not in str(info.value)
    finally:
        memory_mongo.down = False
        reader.close()
