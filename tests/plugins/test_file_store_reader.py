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

import expkit
from expkit.errors import ExpkitError, UsageError
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


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _sacred_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, indent=2))  # as Sacred's save_json


EXP = b"from sacred import Experiment\n"
INIT = b"from .util import X\n"
SUB_INIT = b""


def _sacred_experiment(project: Path) -> dict:
    """The experiment Sacred's runs below record: a script and two packages, whose
    ``__init__.py`` files share a base name."""
    return {
        "base_dir": str(project),
        "dependencies": ["sacred==0.8.7"],
        "mainfile": "exp.py",
        "name": "sac",
        "repositories": [],
    }


def test_a_resource_sacred_recorded_relative_to_the_working_directory_is_read(
    tmp_path, monkeypatch, capsys
):
    # Sacred 0.8.7, `python exp.py -F sac_file` in /work/proj: the resource's stored path is
    # relative to the working directory, not to the store (reference section 2.1).
    store = tmp_path / "proj" / "sac_file"
    data = b"x,y\n1,2\n"
    stored = f"_resources/data_{_md5(data)}.csv"
    (store / "_resources").mkdir(parents=True)
    (store / stored).write_bytes(data)
    (store / "_sources").mkdir()
    (store / f"_sources/exp_{_md5(EXP)}.py").write_bytes(EXP)
    run = {
        "artifacts": [],
        "command": "main",
        "experiment": {
            **_sacred_experiment(tmp_path / "proj"),
            "sources": [["exp.py", f"_sources/exp_{_md5(EXP)}.py"]],
        },
        "heartbeat": "2026-12-03T20:25:07.460996",
        "host": {"hostname": "vm"},
        "meta": {"command": "main", "options": {"--file_storage": "sac_file"}},
        "resources": [["/work/proj/data.csv", f"sac_file/{stored}"]],
        "result": 3,
        "start_time": "2026-12-03T20:25:07.451234",
        "status": "COMPLETED",
        "stop_time": "2026-12-03T20:25:07.461567",
    }
    _sacred_json(store / "1" / "run.json", run)
    _sacred_json(store / "1" / "config.json", {"n": 3, "seed": 1})
    (store / "1" / "cout.txt").write_text("")
    monkeypatch.chdir(tmp_path)  # not where Sacred ran: "sac_file/..." names nothing here

    assert FileStoreReader(store).read_resource("1", "/work/proj/data.csv") == data
    assert expkit.main(["sync", str(store), str(tmp_path / "back")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"1 copied, 0 already in {tmp_path / 'back'}"
    copy = FileStoreReader(tmp_path / "back")
    assert copy.read_resource("1", "/work/proj/data.csv") == data


def _queued_by_sacred(store: Path, project: Path, run_id: str) -> None:
    """A run as Sacred 0.8.7's FileStorageObserver queues it (`python exp.py -F STORE -q`):
    sources as jsonpickle's ``{"py/tuple": [name, md5]}``, copied into the run's folder by
    base name (the second ``__init__.py`` overwrites the first), no cout.txt."""
    sources = {"exp.py": EXP, "pkg/__init__.py": INIT, "pkg/sub/__init__.py": SUB_INIT}
    run = {
        "command": "main",
        "experiment": {
            **_sacred_experiment(project),
            "sources": [{"py/tuple": [name, _md5(data)]} for name, data in sources.items()],
        },
        "host": {"hostname": "vm"},
        "meta": {
            "command": "main",
            "options": {"--queue": True},
            "queue_time": {
                "__reduce__": [{"py/type": "datetime.datetime"}, ["B+oMAxQZBw6WvA=="]],
                "py/object": "datetime.datetime",
            },
        },
        "status": "QUEUED",
    }
    _sacred_json(store / run_id / "run.json", run)
    _sacred_json(store / run_id / "config.json", {"n": 3, "seed": 7})
    for name, data in sources.items():
        (store / run_id / os.path.basename(name)).write_bytes(data)


def test_a_run_sacred_queued_is_shown_read_and_synced(tmp_path, monkeypatch, capsys):
    store = tmp_path / "sq"
    _queued_by_sacred(store, tmp_path / "proj", "1")
    monkeypatch.chdir(tmp_path)

    assert expkit.main(["runs", "show", "1", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "status:     QUEUED" in out
    assert "sources:\n  exp.py\n  pkg/__init__.py\n  pkg/sub/__init__.py\n" in out
    reader = FileStoreReader(store)
    record = reader.get_run("1")
    assert record.experiment_info["sources"][0] == ["exp.py", _md5(EXP)]
    assert reader.read_source("1", "exp.py") == EXP
    assert reader.read_source("1", "pkg/sub/__init__.py") == SUB_INIT
    # Its copy was overwritten by the other __init__.py: refused, not read as that one.
    with pytest.raises(ExpkitError, match=r"'pkg/__init__.py' is recorded, but .* other content"):
        reader.read_source("1", "pkg/__init__.py")
    # Kept by a run that started with the same code: read from there.
    (store / "_sources").mkdir()
    (store / "_sources" / f"__init___{_md5(INIT)}.py").write_bytes(INIT)
    assert reader.read_source("1", "pkg/__init__.py") == INIT

    assert expkit.main(["sync", str(store), str(tmp_path / "back")]) == 0
    capsys.readouterr()
    copy = FileStoreReader(tmp_path / "back")
    assert copy.get_run("1").status == "QUEUED"
    assert copy.read_source("1", "pkg/__init__.py") == INIT


def test_a_comment_on_a_run_sacred_queued_keeps_its_sources_as_sacred_wrote_them(tmp_path):
    store = tmp_path / "sq"
    _queued_by_sacred(store, tmp_path / "proj", "1")
    before = json.loads((store / "1" / "run.json").read_text())["experiment"]["sources"]
    FileStoreReader(store).edit_run("1", comment="rerun on the GPU box")
    after = json.loads((store / "1" / "run.json").read_text())
    assert after["experiment"]["sources"] == before
    assert after["meta"]["comment"] == "rerun on the GPU box"
    assert FileStoreReader(store).read_source("1", "exp.py") == EXP


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


def test_files_a_run_json_names_outside_the_store_are_not_read(basedir, tmp_path):
    # A run.json edited, or copied in from elsewhere, must not make a reader (expkit ui)
    # serve any file the process may read.
    outside = tmp_path / "secret.txt"
    outside.write_text("not the store's\n")
    run_id = run_experiment(basedir, tmp_path)
    run_file = basedir / run_id / "run.json"
    run = json.loads(run_file.read_text())
    run["artifacts"] = [os.path.relpath(outside, basedir / run_id), str(outside)]
    run["experiment"]["sources"] = [["evil.py", str(outside)], ["up.py", "../secret.txt"]]
    run_file.write_text(json.dumps(run))
    reader = FileStoreReader(basedir)
    reads = [
        *(lambda n=name: reader.read_artifact(run_id, n) for name in run["artifacts"]),
        lambda: reader.read_source(run_id, "evil.py"),
        lambda: reader.read_source(run_id, "up.py"),
    ]
    for read in reads:
        with pytest.raises(ExpkitError):  # outside, or not in the store where it would be
            read()
