"""The TinyDB store's read side: TinyDbRunReader on stores written by real runs."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from expkit.errors import UsageError
from expkit.pluginmanager import create_plugin_manager
from expkit.store import StoreError, open_reader
from expkit_plugins.tinydb_store import TinyDbObserver, TinyDbRunReader
from expkit_plugins.tinydb_store.storage import TinyDbStorage, _hashfs_relpath


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "db"


def run_experiment(
    root: Path, tmp_path: Path, lr: float = 0.1, fail: bool = False, resource: Path | None = None
) -> str:
    """One real run of a small experiment into the TinyDB store at ``root``; its id."""
    from expkit import Experiment

    model = tmp_path / f"model_{lr}.txt"
    model.write_text(f"weights {lr}\n")
    ex = Experiment("tiny")
    observer = TinyDbObserver(root)
    ex.observers.append(observer)
    ex.add_config(lr=lr)

    @ex.main
    def main(lr, _run):
        print("training with", lr)
        for step in range(3):
            _run.log_scalar("loss", lr / (step + 1))
        _run.info["best"] = lr
        if resource is not None:
            _run.add_resource(str(resource))
        _run.add_artifact(str(model), name="model.txt")
        if fail:
            raise RuntimeError("diverged")
        return lr * 10

    try:
        return ex.run(options={"--capture": "sys"})._id
    except RuntimeError:
        return observer.run_entry["_id"]


def test_delete_run_drops_its_document_and_metrics(root, tmp_path):
    first = run_experiment(root, tmp_path, 0.1)
    second = run_experiment(root, tmp_path, 0.2)
    reader = TinyDbRunReader(root)
    reader.delete_run(first)
    assert [r.id for r in reader.list_runs()] == [second]
    data = json.loads((root / "metadata.json").read_text())
    assert {m["run_id"] for m in data["metrics"].values()} == {second}
    assert reader.get_run(second).metrics["loss"]["values"][0] == 0.2
    with pytest.raises(KeyError):
        reader.get_run(first)
    with pytest.raises(KeyError):
        reader.delete_run(first)
    # An observer still running into the store keeps working after the deletion.
    third = run_experiment(root, tmp_path, 0.3)
    assert [r.id for r in reader.list_runs()] == [second, third]


def test_records_do_not_share_state_with_later_reads(root, tmp_path):
    run_id = run_experiment(root, tmp_path)
    reader = TinyDbRunReader(root)
    reader.list_runs()[0].config["lr"] = 99
    assert reader.get_run(run_id).config["lr"] == 0.1


def test_empty_and_missing_stores(root, tmp_path):
    root.mkdir()
    assert TinyDbRunReader(root).list_runs() == []
    with pytest.raises(KeyError):
        TinyDbRunReader(root).get_run("x")
    with pytest.raises(UsageError, match="no TinyDB store at"):
        TinyDbRunReader(tmp_path / "nowhere")


def test_sacred_era_documents_are_read(root):
    """Sacred's TinyDbObserver tagged times and kept file handles instead of hashfs paths."""
    content = b"print('old')\n"
    md5 = "5a3bb7e8f50cf6a8e0e9dec3d02c23b1"
    (root / _hashfs_relpath(md5)).parent.mkdir(parents=True)
    (root / _hashfs_relpath(md5)).write_bytes(content)
    doc = {
        "_id": 3,
        "experiment": {"name": "old", "sources": [["old.py", md5, "<BufferedReader name='x'>"]]},
        "command": "main",
        "start_time": "{TinyDate}:2020-01-02T03:04:05.000000",
        "stop_time": "{TinyDate}:2020-01-02T03:04:09.000000",
        "status": "COMPLETED",
        "config": {"C": 1},
        "result": 5,
        "artifacts": [],
    }
    (root / "metadata.json").write_text(json.dumps({"runs": {"1": doc}}))
    reader = TinyDbRunReader(root)
    [record] = reader.list_runs()
    assert record.id == 3 and record.duration == datetime.timedelta(seconds=4)
    assert reader.get_run("3").result == 5  # an id typed on a command line
    assert reader.read_source(3, "old.py") == content
    # Editing changes the run's meta only: the rest stays as Sacred wrote it.
    edited = reader.edit_run("3", comment="from 2020", tags=["old"])
    assert (edited.meta, edited.duration) == (
        {"comment": "from 2020", "tags": ["old"]},
        datetime.timedelta(seconds=4),
    )
    [stored] = json.loads((root / "metadata.json").read_text())["runs"].values()
    assert stored == {**doc, "meta": {"comment": "from 2020", "tags": ["old"]}}


def test_values_sacreds_serializers_tagged_are_read_as_plain_values(root):
    # Sacred 0.8.7's TinyDbObserver writes numpy arrays, datetimes and pandas objects so.
    doc = {
        "_id": 1,
        "experiment": {"name": "old", "sources": []},
        "status": "COMPLETED",
        "config": {"arr": "{TinyArray}:[0, 1, 2]", "when": "{TinyDate}:2020-01-02T03:04:05"},
        "result": {"curve": "{TinyArray}:[[1.5]]", "table": '{TinyDataFrame}:{"a":{"0":1}}'},
        "info": {"s": '{TinySeries}:{"0":2}', "text": "{TinyArray}:not json"},
        "artifacts": [],
    }
    root.mkdir()
    (root / "metadata.json").write_text(json.dumps({"runs": {"1": doc}}))
    record = TinyDbRunReader(root).get_run(1)
    assert record.config == {"arr": [0, 1, 2], "when": "2020-01-02T03:04:05"}
    assert record.result == {"curve": [[1.5]], "table": {"a": {"0": 1}}}
    assert record.info == {"s": {"0": 2}, "text": "{TinyArray}:not json"}


def test_a_file_a_document_names_outside_the_store_is_not_read(root, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not the store's\n")
    doc = {
        "_id": 1,
        "experiment": {"name": "planted", "sources": [["evil.py", "0" * 32, "hashfs/../../x"]]},
        "status": "COMPLETED",
        "artifacts": [["x.txt", "1", "0" * 32, "hashfs/../../secret.txt"]],
    }
    (root / "hashfs").mkdir(parents=True)  # as in any store that holds files
    (root / "metadata.json").write_text(json.dumps({"runs": {"1": doc}}))
    reader = TinyDbRunReader(root)
    for read in (
        lambda: reader.read_source(1, "evil.py"),
        lambda: reader.read_artifact(1, "x.txt"),
    ):
        with pytest.raises((StoreError, KeyError)):
            read()


def test_damaged_documents_are_skipped_or_read_as_far_as_they_go(root, tmp_path, caplog):
    good = run_experiment(root, tmp_path)
    data = json.loads((root / "metadata.json").read_text())
    data["runs"]["8"] = "not a run"
    data["runs"]["9"] = {
        "_id": "odd",
        "experiment": 5,
        "status": 7,
        "start_time": "yesterday",
        "config": [1],
        "artifacts": "x",
        "resources": {"a": 1},
    }
    data["metrics"]["9"] = {"run_id": "odd", "name": "loss", "steps": 5}
    (root / "metadata.json").write_text(json.dumps(data))
    reader = TinyDbRunReader(root)
    runs = reader.list_runs()
    assert [r.id for r in runs] == [good, "odd"]
    assert (runs[1].experiment, runs[1].status, runs[1].start_time) == ("", "UNKNOWN", None)
    assert "skipping a damaged run" in caplog.text
    odd = reader.get_run("odd")
    assert (odd.config, odd.artifacts, odd.resources, odd.metrics) == ({}, (), (), {})
    assert "metrics unreadable" in caplog.text
    assert reader.get_run(good).metrics["loss"]["steps"] == [0, 1, 2]


def test_a_run_is_edited_and_deleted_while_another_records(root, tmp_path):
    first = run_experiment(root, tmp_path, 0.1)
    recording = TinyDbObserver(root)
    second = recording.started_event(
        ex_info={"name": "tiny", "base_dir": str(tmp_path), "sources": []},
        command="main",
        host_info={},
        start_time=datetime.datetime(2024, 1, 2),
        config={"lr": 0.5},
        meta_info={"command": "main"},
        _id=None,
    )
    reader = TinyDbRunReader(root)
    assert reader.capabilities == {"delete", "edit"}
    reader.edit_run(first, tags=["kept"])
    recording.completed_event(stop_time=datetime.datetime(2024, 1, 3), result=5)
    runs = {r.id: r for r in reader.list_runs()}
    assert runs[first].meta["tags"] == ["kept"] and runs[first].result == 1.0
    assert (runs[second].status, runs[second].result, runs[second].meta) == (
        "COMPLETED",
        5,
        {"command": "main"},
    )
    reader.delete_run(second)
    assert [r.id for r in reader.list_runs()] == [first]


def test_reader_claims_the_urls_of_the_store(root, tmp_path):
    run_experiment(root, tmp_path)
    pm = create_plugin_manager()
    for url, db_file in (
        (f"tinydb://{root}", "metadata.json"),
        (f"tinydb://{root}/x.json", "x.json"),
    ):
        reader = open_reader(pm, url)
        assert isinstance(reader.storage, TinyDbStorage)
        assert reader.storage.db_path == root / db_file
        assert reader.url == url
    assert len(open_reader(pm, f"tinydb://{root}").list_runs()) == 1
    with pytest.raises(UsageError, match="has no path"):
        open_reader(pm, "tinydb://")
    with pytest.raises(UsageError, match=r"no TinyDB store at .*nowhere"):
        open_reader(pm, f"tinydb://{root / 'nowhere'}").list_runs()
