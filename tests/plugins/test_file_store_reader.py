"""The file store's read side: FileStoreReader and its index, on stores written by real runs."""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from expkit.errors import UsageError
from expkit.pluginmanager import create_plugin_manager
from expkit.store import open_reader
from expkit_plugins.file_store import (
    INDEX_FILE,
    FileStorageObserver,
    FileStoreReader,
    rebuild_index,
)

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0)


@pytest.fixture
def basedir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def run_experiment(
    basedir: Path, tmp_path: Path, lr: float = 0.1, fail: bool = False, resource: Path | None = None
) -> str:
    """One real run of a small experiment into ``basedir``; its id."""
    from expkit import Experiment

    model = tmp_path / "model.txt"
    model.write_text(f"weights {lr}\n")
    ex = Experiment("reader")
    ex.observers.append(FileStorageObserver(basedir))
    ex.add_config(lr=lr)

    @ex.main
    def main(lr, _run):
        print("training with", lr)
        for step in range(3):
            _run.log_scalar("loss", lr / (step + 1))
        _run.info["best"] = lr
        if resource is not None:
            _run.add_resource(str(resource))
        _run.add_artifact(str(model), name="out/model.txt")
        if fail:
            raise RuntimeError("diverged")
        return lr * 10

    try:
        return ex.run(options={"--capture": "sys"})._id
    except RuntimeError:
        return max((p.name for p in basedir.iterdir() if p.name.isdigit()), key=int)


def index_lines(basedir: Path) -> list[dict]:
    return [json.loads(line) for line in (basedir / INDEX_FILE).read_text().splitlines()]


def listed(basedir: Path) -> dict[str, str]:
    return {r.id: r.status for r in FileStoreReader(basedir).list_runs()}


# --- reading runs -------------------------------------------------------------------------------


def test_get_run_returns_everything_recorded(basedir, tmp_path):
    run_id = run_experiment(basedir, tmp_path)
    record = FileStoreReader(basedir).get_run(run_id)
    assert (record.id, record.status, record.experiment) == ("1", "COMPLETED", "reader")
    assert record.store == str(basedir)
    assert record.config["lr"] == 0.1 and "seed" in record.config
    assert record.result == 1.0
    assert record.info == {"best": 0.1}
    assert record.metrics["loss"]["steps"] == [0, 1, 2]
    assert record.metrics["loss"]["values"] == [0.1, 0.05, 0.1 / 3]
    assert all(isinstance(t, datetime.datetime) for t in record.metrics["loss"]["timestamps"])
    assert "training with 0.1" in record.captured_out
    assert record.artifacts == ("out/model.txt",)
    assert record.experiment_info["name"] == "reader"
    assert record.host["hostname"]
    assert record.start_time <= record.heartbeat and record.start_time <= record.stop_time
    assert record.duration >= datetime.timedelta(0)
    assert record.meta["command"] == "main"


def test_failed_run_keeps_its_traceback(basedir, tmp_path):
    run_id = run_experiment(basedir, tmp_path, fail=True)
    record = FileStoreReader(basedir).get_run(run_id)
    assert record.status == "FAILED"
    assert "RuntimeError: diverged" in "".join(record.fail_trace)


def test_read_source_and_artifact(basedir, tmp_path):
    run_id = run_experiment(basedir, tmp_path)
    reader = FileStoreReader(basedir)
    sources = [name for name, _ in reader.get_run(run_id).experiment_info["sources"]]
    [mine] = [name for name in sources if name.endswith(Path(__file__).name)]
    assert reader.read_source(run_id, mine) == Path(__file__).read_bytes()
    assert reader.read_artifact(run_id, "out/model.txt") == b"weights 0.1\n"
    with pytest.raises(KeyError, match=r"has no source 'other.py'"):
        reader.read_source(run_id, "other.py")
    with pytest.raises(KeyError, match=r"has no artifact 'run.json'"):
        reader.read_artifact(run_id, "run.json")


def test_read_resource_by_its_original_path(basedir, tmp_path):
    data = tmp_path / "data.csv"
    data.write_bytes(b"a,b\n1,2\n")
    run_id = run_experiment(basedir, tmp_path, resource=data)
    data.write_bytes(b"changed since")  # the stored copy is what the reader returns
    reader = FileStoreReader(basedir)
    assert reader.get_run(run_id).resources == (
        (str(data), hashlib.md5(b"a,b\n1,2\n").hexdigest()),
    )
    assert reader.list_runs()[0].resources == ()
    assert reader.read_resource(run_id, str(data)) == b"a,b\n1,2\n"
    with pytest.raises(KeyError, match=r"has no resource 'other.csv'"):
        reader.read_resource(run_id, "other.csv")
    with pytest.raises(KeyError):
        reader.read_resource("7", str(data))


@pytest.mark.parametrize("bad", ["7", "../runs", "_sources", "", "a/b"])
def test_unknown_ids_raise_key_error(basedir, tmp_path, bad):
    run_experiment(basedir, tmp_path)
    reader = FileStoreReader(basedir)
    for call in (reader.get_run, reader.delete_run):
        with pytest.raises(KeyError):
            call(bad)
    with pytest.raises(KeyError):
        reader.read_artifact(bad, "out/model.txt")


def test_delete_run_removes_its_folder_only(basedir, tmp_path):
    first = run_experiment(basedir, tmp_path, lr=0.1)
    second = run_experiment(basedir, tmp_path, lr=0.2)
    reader = FileStoreReader(basedir)
    reader.delete_run(first)
    assert not (basedir / first).exists()
    assert listed(basedir) == {second: "COMPLETED"}
    # Sources are shared between runs: they stay.
    assert any((basedir / "_sources").iterdir())
    assert reader.read_source(second, reader.get_run(second).experiment_info["sources"][0][0])


def test_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"no file store at .*: the folder does not exist"):
        FileStoreReader(tmp_path / "nowhere")


def test_reader_claims_the_urls_of_the_store(basedir, tmp_path):
    run_experiment(basedir, tmp_path)
    pm = create_plugin_manager()
    for url in (str(basedir), f"file://{basedir}"):
        reader = open_reader(pm, url)
        assert reader.storage.basedir == str(basedir)
        assert [r.store for r in reader.list_runs()] == [url]
    with pytest.raises(UsageError, match="names no folder"):
        open_reader(pm, "file://")


# --- the index ---------------------------------------------------------------------------------


def test_each_finished_run_appends_one_summary_line(basedir, tmp_path):
    run_experiment(basedir, tmp_path, lr=0.1)
    run_experiment(basedir, tmp_path, lr=0.2, fail=True)
    lines = index_lines(basedir)
    assert [(line["id"], line["status"]) for line in lines] == [("1", "COMPLETED"), ("2", "FAILED")]
    assert lines[0]["config"]["lr"] == 0.1 and lines[0]["result"] == 1.0
    assert lines[0]["experiment"] == "reader" and lines[0]["meta"]["command"] == "main"
    # The options are left out: they would make most of every line.
    assert "options" not in lines[0]["meta"]


def test_listing_uses_the_index_not_the_run_folders(basedir, tmp_path):
    run_experiment(basedir, tmp_path)
    run_json = basedir / "1" / "run.json"
    before = run_json.stat()
    # Same size and time: the index line still vouches for the run, so its folder is not read.
    run_json.write_text("x" * before.st_size)
    os.utime(run_json, ns=(before.st_atime_ns, before.st_mtime_ns))
    [record] = FileStoreReader(basedir).list_runs()
    assert (record.id, record.status, record.result) == ("1", "COMPLETED", 1.0)
    assert record.config["lr"] == 0.1


def test_a_run_damaged_after_it_was_indexed_is_not_listed_as_completed(basedir, tmp_path, caplog):
    run_experiment(basedir, tmp_path, lr=0.1)
    run_experiment(basedir, tmp_path, lr=0.2)
    (basedir / "1" / "run.json").write_text('{"status": "COMPL')  # torn by a crash
    records = FileStoreReader(basedir).list_runs()
    assert [(r.id, r.status) for r in records] == [("2", "COMPLETED")]
    assert "skipping run 1" in caplog.text and "run.json is not valid JSON" in caplog.text


def test_missing_index_is_rebuilt_from_the_folders(basedir, tmp_path):
    run_experiment(basedir, tmp_path, lr=0.1)
    run_experiment(basedir, tmp_path, lr=0.2)
    before = FileStoreReader(basedir).list_runs()
    (basedir / INDEX_FILE).unlink()
    assert FileStoreReader(basedir).list_runs() == before
    assert [line["id"] for line in index_lines(basedir)] == ["1", "2"]
    (basedir / INDEX_FILE).unlink()
    assert rebuild_index(basedir) == 2
    assert FileStoreReader(basedir).list_runs() == before


def test_folder_missing_from_the_index_is_listed_and_indexed(basedir, tmp_path):
    run_experiment(basedir, tmp_path, lr=0.1)
    other = tmp_path / "other"
    run_experiment(other, tmp_path, lr=0.7)
    shutil.copytree(other / "1", basedir / "9")  # a run copied in by hand
    runs = {r.id: r for r in FileStoreReader(basedir).list_runs()}
    assert set(runs) == {"1", "9"} and runs["9"].config["lr"] == 0.7
    assert [line["id"] for line in index_lines(basedir)] == ["1", "9"]


def test_damaged_and_torn_lines_fall_back_to_the_folders(basedir, tmp_path):
    run_experiment(basedir, tmp_path, lr=0.1)
    run_experiment(basedir, tmp_path, lr=0.2)
    lines = (basedir / INDEX_FILE).read_text().splitlines()
    # A process died while writing the second line.
    (basedir / INDEX_FILE).write_text(lines[0] + "\nnot json\n" + lines[1][:40])
    assert listed(basedir) == {"1": "COMPLETED", "2": "COMPLETED"}
    # The listing rewrote the index, so the next run's line is not glued to the torn one.
    assert [line["id"] for line in index_lines(basedir)] == ["1", "2"]
    run_experiment(basedir, tmp_path, lr=0.3)
    assert [line["id"] for line in index_lines(basedir)] == ["1", "2", "3"]


def test_line_glued_to_a_torn_one_is_repaired(basedir, tmp_path):
    run_experiment(basedir, tmp_path, lr=0.1)
    line = (basedir / INDEX_FILE).read_text()
    (basedir / INDEX_FILE).write_text(line[:30])  # torn, and no reader came by
    run_experiment(basedir, tmp_path, lr=0.2)  # its line lands right after the torn one
    assert listed(basedir) == {"1": "COMPLETED", "2": "COMPLETED"}
    assert sorted(line["id"] for line in index_lines(basedir)) == ["1", "2"]


def test_running_runs_are_read_from_their_folders(basedir, tmp_path):
    obs = FileStorageObserver(basedir)
    info = {"name": "live", "base_dir": str(tmp_path), "sources": [], "dependencies": []}
    obs.started_event(info, "main", {}, T0, {"a": 1}, {"command": "main"}, None)
    [record] = FileStoreReader(basedir).list_runs()
    assert (record.status, record.experiment, record.start_time) == ("RUNNING", "live", T0)
    later = T0 + datetime.timedelta(seconds=20)
    obs.heartbeat_event({}, "out", later, 0.5)
    [record] = FileStoreReader(basedir).list_runs()
    assert (record.heartbeat, record.result) == (later, 0.5)
    obs.completed_event(later, 1.5)
    [record] = FileStoreReader(basedir).list_runs()
    assert (record.status, record.result, record.stop_time) == ("COMPLETED", 1.5, later)


def test_superseded_lines_are_compacted(basedir, tmp_path):
    run_experiment(basedir, tmp_path)
    line = (basedir / INDEX_FILE).read_text()
    (basedir / INDEX_FILE).write_text(line * 200)
    assert listed(basedir) == {"1": "COMPLETED"}
    assert len(index_lines(basedir)) == 1


def test_deleted_run_folder_is_not_listed(basedir, tmp_path):
    run_experiment(basedir, tmp_path, lr=0.1)
    run_experiment(basedir, tmp_path, lr=0.2)
    shutil.rmtree(basedir / "1")  # by hand, not through the reader
    assert listed(basedir) == {"2": "COMPLETED"}


def test_read_only_store_is_still_listed(basedir, tmp_path):
    run_experiment(basedir, tmp_path)
    (basedir / INDEX_FILE).unlink()
    os.chmod(basedir, 0o555)
    try:
        if os.access(basedir, os.W_OK):
            pytest.skip("running as a user who may write anywhere")
        assert listed(basedir) == {"1": "COMPLETED"}
    finally:
        os.chmod(basedir, 0o755)


# --- Sacred-era stores and many runs -------------------------------------------------------------


def write_sacred_run(basedir: Path, run_id: int, status: str = "COMPLETED") -> None:
    """A run folder as Sacred 0.8.7's FileStorageObserver leaves it (no index)."""
    folder = basedir / str(run_id)
    folder.mkdir(parents=True)
    run = {
        "artifacts": [],
        "command": "main",
        "experiment": {"name": "old", "base_dir": "/p", "sources": [], "dependencies": []},
        "heartbeat": "2020-01-02T03:04:06.000123",
        "host": {"hostname": "box"},
        "meta": {"command": "main", "options": {"--id": None}},
        "resources": [],
        "result": run_id * 2,
        "start_time": "2020-01-02T03:04:05.000000",
        "status": status,
        "stop_time": "2020-01-02T03:04:07.500000",
    }
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "config.json").write_text(json.dumps({"C": run_id % 5, "seed": run_id}))
    (folder / "cout.txt").write_text("")


def test_sacred_era_store_without_index_is_listed(basedir):
    for run_id in (1, 2, 10):
        write_sacred_run(basedir, run_id)
    (basedir / "_sources").mkdir()
    runs = FileStoreReader(basedir).list_runs()
    assert [r.id for r in runs] == ["1", "2", "10"]
    assert runs[2].result == 20 and runs[2].config == {"C": 0, "seed": 10}
    assert runs[0].start_time == datetime.datetime(2020, 1, 2, 3, 4, 5)
    assert runs[0].duration == datetime.timedelta(seconds=2.5)
    assert (basedir / INDEX_FILE).exists()


def _append_runs(basedir: str, count: int) -> None:
    obs = FileStorageObserver(basedir)
    info = {"name": "race", "base_dir": basedir, "sources": [], "dependencies": []}
    for i in range(count):
        obs.started_event(info, "main", {}, T0, {"i": i, "pad": "x" * 3000}, {}, None)
        obs.completed_event(T0, i)


@pytest.mark.slow
def test_processes_finishing_at_once_never_tear_the_index(basedir):
    basedir.mkdir()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_runs, args=(str(basedir), 25)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    lines = index_lines(basedir)  # every line parses: none was interleaved with another
    assert len(lines) == 150 and len({line["id"] for line in lines}) == 150
    assert len(listed(basedir)) == 150


@pytest.mark.slow
def test_ten_thousand_runs_are_all_listed(basedir):
    for run_id in range(1, 10_001):
        write_sacred_run(basedir, run_id, "FAILED" if run_id % 1000 == 0 else "COMPLETED")
    start = time.perf_counter()
    first = FileStoreReader(basedir).list_runs()  # builds the index
    rebuilt = time.perf_counter() - start
    start = time.perf_counter()
    again = FileStoreReader(basedir).list_runs()  # reads it
    indexed = time.perf_counter() - start
    print(f"10,000 runs: {rebuilt:.2f} s building the index, {indexed:.2f} s with it")
    assert len(first) == 10_000 and again == first
    assert [r.id for r in again[:3]] == ["1", "2", "3"] and again[-1].id == "10000"
    assert sum(r.status == "FAILED" for r in again) == 10
    assert len(index_lines(basedir)) == 10_000
