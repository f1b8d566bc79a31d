"""The file store: Sacred's FileStorageObserver layout on real files, without its bugs."""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from expkit.errors import ExpkitError, UsageError
from expkit.observers import columns_to_sacred
from expkit.pluginmanager import create_plugin_manager
from expkit.store import open_store
from expkit_plugins import file_store
from expkit_plugins.file_store import FileStorage, FileStorageObserver, read_run

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0)  # 0 microseconds: must still be written
T1 = datetime.datetime(2024, 5, 1, 12, 0, 1, 250)
T2 = datetime.datetime(2024, 5, 1, 12, 0, 2, 500000)

# run.json key sets per status, as Sacred 0.8.7 writes them (reference §2.1).
QUEUED_KEYS = {"command", "experiment", "host", "meta", "status"}
RUNNING_KEYS = {
    "artifacts",
    "command",
    "experiment",
    "heartbeat",
    "host",
    "meta",
    "resources",
    "start_time",
    "status",
}
BEAT_KEYS = RUNNING_KEYS | {"result"}
SACREDBOARD_TIME = "%Y-%m-%dT%H:%M:%S.%f"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "exp.py").write_text("print('main')\n")
    (root / "pkg" / "util.py").write_text("X = 1\n")
    return root


@pytest.fixture
def ex_info(project: Path) -> dict:
    return {
        "name": "demo",
        "base_dir": str(project),
        "mainfile": "exp.py",
        "sources": [
            ["exp.py", md5(project / "exp.py")],
            ["pkg/util.py", md5(project / "pkg" / "util.py")],
        ],
        "dependencies": ["numpy==1.26.0"],
        "repositories": [],
    }


@pytest.fixture
def basedir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def obs(basedir: Path) -> FileStorageObserver:
    return FileStorageObserver(basedir)


def start(obs: FileStorageObserver, ex_info: dict, _id: Any = None, **meta: Any) -> str:
    return obs.started_event(
        ex_info=ex_info,
        command="main",
        host_info={"hostname": "box", "ENV": {}},
        start_time=T0,
        config={"a": 1, "seed": 42, "nested": {"b": [1, 2]}},
        meta_info={"command": "main", "options": {}, **meta},
        _id=_id,
    )


def batch(name: str, start_step: int, n: int) -> dict:
    return {
        name: {
            "name": name,
            "steps": list(range(start_step, start_step + n)),
            "values": [float(i) / 2 for i in range(start_step, start_step + n)],
            "timestamps": [T1] * n,
        }
    }


# --- starting a run ------------------------------------------------------------------------


def test_started_event_writes_sacreds_layout(obs, ex_info, basedir):
    run_id = start(obs, ex_info)

    assert run_id == "1"
    rundir = basedir / "1"
    assert obs.dir == str(rundir)
    run = load(rundir / "run.json")
    assert set(run) == RUNNING_KEYS
    assert run["status"] == "RUNNING"
    assert run["heartbeat"] is None
    assert run["start_time"] == "2024-05-01T12:00:00.000000"
    assert run["artifacts"] == [] and run["resources"] == []
    assert run["command"] == "main"
    assert run["host"] == {"hostname": "box", "ENV": {}}
    assert run["meta"] == {"command": "main", "options": {}}
    assert run["experiment"]["name"] == "demo"
    assert run["experiment"]["mainfile"] == "exp.py"
    assert run["experiment"]["dependencies"] == ["numpy==1.26.0"]
    assert load(rundir / "config.json") == {"a": 1, "seed": 42, "nested": {"b": [1, 2]}}
    assert (rundir / "cout.txt").read_text() == ""
    assert sorted(p.name for p in rundir.iterdir()) == ["config.json", "cout.txt", "run.json"]


def test_json_files_are_sorted_and_indented(obs, ex_info, basedir):
    start(obs, ex_info)
    text = (basedir / "1" / "config.json").read_text()
    assert text == json.dumps({"a": 1, "nested": {"b": [1, 2]}, "seed": 42}, indent=2)


def test_sources_are_stored_once_per_content(obs, ex_info, basedir, project):
    start(obs, ex_info)
    main_md5, util_md5 = ex_info["sources"][0][1], ex_info["sources"][1][1]
    expected = [
        ["exp.py", f"_sources/exp_{main_md5}.py"],
        ["pkg/util.py", f"_sources/util_{util_md5}.py"],
    ]
    assert load(basedir / "1" / "run.json")["experiment"]["sources"] == expected
    for relpath, stored in expected:
        assert (basedir / stored).read_bytes() == (project / relpath).read_bytes()

    start(obs, ex_info)  # same content: nothing new in _sources
    assert len(list((basedir / "_sources").iterdir())) == 2

    (project / "exp.py").write_text("print('changed')\n")
    start(obs, ex_info)
    new_md5 = md5(project / "exp.py")
    assert load(basedir / "3" / "run.json")["experiment"]["sources"][0] == [
        "exp.py",
        f"_sources/exp_{new_md5}.py",
    ]
    assert len(list((basedir / "_sources").iterdir())) == 3


def test_source_deleted_since_discovery_is_recorded_by_path(obs, ex_info, basedir, project):
    (project / "pkg" / "util.py").unlink()
    start(obs, ex_info)
    sources = load(basedir / "1" / "run.json")["experiment"]["sources"]
    assert sources[1] == ["pkg/util.py", str(project / "pkg" / "util.py")]
    assert sources[0][1].startswith("_sources/exp_")


def test_ex_info_given_to_other_observers_is_not_rewritten(obs, ex_info):
    before = json.loads(json.dumps(ex_info))
    start(obs, ex_info)
    assert ex_info == before


def test_copy_sources_false_records_absolute_paths(basedir, ex_info, project):
    obs = FileStorageObserver(basedir, copy_sources=False)
    start(obs, ex_info)
    sources = load(basedir / "1" / "run.json")["experiment"]["sources"]
    assert sources == [
        ["exp.py", str(project / "exp.py")],
        ["pkg/util.py", str(project / "pkg" / "util.py")],
    ]
    assert not (basedir / "_sources").exists()


def test_custom_source_dir_is_recorded_relative_to_basedir(tmp_path, basedir, ex_info):
    obs = FileStorageObserver(basedir, source_dir=tmp_path / "code")
    start(obs, ex_info)
    stored = load(basedir / "1" / "run.json")["experiment"]["sources"][0][1]
    assert stored == f"../code/exp_{ex_info['sources'][0][1]}.py"
    assert (basedir / stored).is_file()


# --- ids ---------------------------------------------------------------------------------


def test_ids_follow_the_largest_numeric_folder(obs, ex_info, basedir):
    (basedir / "7").mkdir(parents=True)
    (basedir / "notes").mkdir()
    (basedir / "12").write_text("a file, not a run")
    assert start(obs, ex_info) == "8"
    assert start(obs, ex_info) == "9"


def test_given_id_becomes_the_folder(obs, ex_info, basedir):
    assert start(obs, ex_info, _id="baseline") == "baseline"
    assert (basedir / "baseline" / "run.json").is_file()
    assert start(obs, ex_info, _id=5) == "5"
    assert start(obs, ex_info) == "6"


@pytest.mark.parametrize("bad", ["../escape", "a/b", "_sources", "_resources", ".", ""])
def test_ids_that_are_no_folder_name_are_rejected(obs, ex_info, bad, tmp_path):
    with pytest.raises(UsageError, match="cannot be a folder name"):
        start(obs, ex_info, _id=bad)
    assert not (tmp_path / "escape").exists()


def _start_in_process(basedir: str, ex_info: dict, barrier: Any, results: Any) -> None:
    barrier.wait()  # all processes ask for an id at the same moment
    obs = FileStorageObserver(basedir)
    run_id = start(obs, ex_info, pid=os.getpid())
    obs.completed_event(stop_time=T2, result=os.getpid())
    results.put((run_id, os.getpid()))


def test_fifty_processes_starting_at_once_get_fifty_ids(basedir, ex_info):
    ctx = multiprocessing.get_context("fork" if sys.platform != "win32" else "spawn")
    barrier, results = ctx.Barrier(50), ctx.Queue()
    procs = [
        ctx.Process(target=_start_in_process, args=(str(basedir), ex_info, barrier, results))
        for _ in range(50)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    ids = [run_id for run_id, _ in got]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 51)]
    for run_id, pid in got:
        run = load(basedir / run_id / "run.json")
        assert run["meta"]["pid"] == pid and run["result"] == pid
        assert run["status"] == "COMPLETED"
    # All of them stored the same sources: one intact copy each.
    stored = sorted((basedir / "_sources").iterdir())
    assert [p.name for p in stored] == sorted(
        f"{Path(rel).stem}_{digest}.py" for rel, digest in ex_info["sources"]
    )
    assert all(md5(p) in p.name for p in stored)
    assert not list(basedir.rglob("*.tmp"))


# --- heartbeats, cout, info ----------------------------------------------------------------


def test_heartbeat_updates_run_json(obs, ex_info, basedir):
    start(obs, ex_info)
    obs.heartbeat_event(info={}, captured_out="hi\n", beat_time=T1, result=0.5)
    run = load(basedir / "1" / "run.json")
    assert set(run) == BEAT_KEYS
    assert run["heartbeat"] == "2024-05-01T12:00:01.000250"
    assert run["result"] == 0.5


def test_info_json_absent_while_info_is_empty(obs, ex_info, basedir):
    start(obs, ex_info)
    obs.heartbeat_event(info={}, captured_out="", beat_time=T1, result=None)
    assert not (basedir / "1" / "info.json").exists()
    obs.completed_event(stop_time=T2, result=None)
    assert not (basedir / "1" / "info.json").exists()


def test_info_json_rewritten_only_when_it_changed(obs, ex_info, basedir):
    start(obs, ex_info)
    info_path = basedir / "1" / "info.json"
    obs.heartbeat_event(info={"epoch": 1}, captured_out="", beat_time=T1, result=None)
    assert load(info_path) == {"epoch": 1}
    inode = info_path.stat().st_ino
    obs.heartbeat_event(info={"epoch": 1}, captured_out="", beat_time=T1, result=None)
    assert info_path.stat().st_ino == inode  # untouched
    obs.heartbeat_event(info={"epoch": 2}, captured_out="", beat_time=T1, result=None)
    assert load(info_path) == {"epoch": 2}
    obs.heartbeat_event(info={}, captured_out="", beat_time=T1, result=None)
    assert load(info_path) == {}  # emptied info is not left stale


def test_cout_is_appended_not_rewritten(obs, ex_info, basedir):
    start(obs, ex_info)
    cout = basedir / "1" / "cout.txt"
    inode = cout.stat().st_ino
    obs.heartbeat_event(info={}, captured_out="epoch 1\n", beat_time=T1, result=None)
    obs.heartbeat_event(info={}, captured_out="epoch 1\nepoch 2 é\n", beat_time=T1, result=None)
    obs.heartbeat_event(info={}, captured_out="epoch 1\nepoch 2 é\n", beat_time=T1, result=None)
    assert cout.read_text(encoding="utf-8") == "epoch 1\nepoch 2 é\n"
    assert cout.stat().st_ino == inode


def test_cout_rewritten_once_when_a_filter_changed_earlier_text(obs, ex_info, basedir):
    start(obs, ex_info)
    cout = basedir / "1" / "cout.txt"
    obs.heartbeat_event(info={}, captured_out="10%\r20%\r", beat_time=T1, result=None)
    obs.heartbeat_event(info={}, captured_out="20%\rdone\n", beat_time=T1, result=None)
    assert cout.read_bytes() == b"20%\rdone\n"
    inode = cout.stat().st_ino
    obs.heartbeat_event(info={}, captured_out="20%\rdone\nmore\n", beat_time=T1, result=None)
    assert cout.read_bytes() == b"20%\rdone\nmore\n"
    assert cout.stat().st_ino == inode


def test_long_cout_is_compared_by_its_tail(obs, ex_info, basedir):
    start(obs, ex_info)
    cout = basedir / "1" / "cout.txt"
    text = "".join(f"line {i}\n" for i in range(2000))
    obs.heartbeat_event(info={}, captured_out=text, beat_time=T1, result=None)
    changed_tail = text[:-5] + "XXXX\n"
    obs.heartbeat_event(info={}, captured_out=changed_tail + "next\n", beat_time=T1, result=None)
    assert cout.read_text() == changed_tail + "next\n"


# --- the end of a run ----------------------------------------------------------------------


@pytest.mark.parametrize("beat", [False, True])
@pytest.mark.parametrize(
    ("end", "status", "extra"),
    [
        ("completed", "COMPLETED", {"result", "stop_time"}),
        ("failed", "FAILED", {"stop_time", "fail_trace"}),
        ("interrupted", "INTERRUPTED", {"stop_time"}),
        ("timeout", "TIMEOUT", {"stop_time"}),
    ],
)
def test_run_json_keys_per_final_status(obs, ex_info, basedir, beat, end, status, extra):
    start(obs, ex_info)
    if beat:
        obs.heartbeat_event(info={}, captured_out="", beat_time=T1, result=None)
    if end == "completed":
        obs.completed_event(stop_time=T2, result={"acc": 0.5})
    elif end == "failed":
        obs.failed_event(fail_time=T2, fail_trace=["Traceback\n", "ValueError: x\n"])
    else:
        obs.interrupted_event(interrupt_time=T2, status=status)

    run = load(basedir / "1" / "run.json")
    assert set(run) == (BEAT_KEYS if beat else RUNNING_KEYS) | extra
    assert run["status"] == status
    assert run["stop_time"] == "2024-05-01T12:00:02.500000"
    if end == "completed":
        assert run["result"] == {"acc": 0.5}
    if end == "failed":
        assert run["fail_trace"] == ["Traceback\n", "ValueError: x\n"]


def test_every_time_parses_the_way_sacredboard_parses_it(obs, ex_info, basedir):
    start(obs, ex_info)
    obs.heartbeat_event(info={}, captured_out="", beat_time=T0, result=None)
    obs.completed_event(stop_time=T0, result=None)
    run = load(basedir / "1" / "run.json")
    for key in ("start_time", "heartbeat", "stop_time"):
        assert datetime.datetime.strptime(run[key], SACREDBOARD_TIME) == T0


def test_queued_run(obs, ex_info, basedir, project):
    run_id = obs.queued_event(
        ex_info=ex_info,
        command="main",
        host_info={"hostname": "box"},
        queue_time=T0,
        config={"a": 1},
        meta_info={"command": "main"},
        _id=None,
    )
    rundir = basedir / run_id
    run = load(rundir / "run.json")
    assert set(run) == QUEUED_KEYS
    assert run["status"] == "QUEUED"
    assert run["meta"]["queue_time"] == "2024-05-01T12:00:00.000000"
    assert load(rundir / "config.json") == {"a": 1}
    assert not (rundir / "cout.txt").exists()
    # A queued run keeps a copy of its code in its own folder, as in Sacred.
    assert (rundir / "exp.py").read_bytes() == (project / "exp.py").read_bytes()
    assert (rundir / "pkg" / "util.py").read_bytes() == (project / "pkg" / "util.py").read_bytes()


# --- atomic replacement --------------------------------------------------------------------


def test_readers_never_see_a_partly_written_file(obs, ex_info, basedir):
    start(obs, ex_info)
    info_path = basedir / "1" / "info.json"
    obs.heartbeat_event(info={"i": -1}, captured_out="", beat_time=T1, result=None)
    stop = threading.Event()
    torn: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            text = info_path.read_text()
            reads += 1
            try:
                json.loads(text)
            except ValueError:
                torn.append(text[:50])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            info = {"i": i, "payload": "x" * (20_000 + 37 * i)}
            obs.heartbeat_event(info=info, captured_out="", beat_time=T1, result=None)
    finally:
        stop.set()
        thread.join()
    assert reads > 0 and torn == []
    assert load(info_path)["i"] == 299
    assert not [p.name for p in (basedir / "1").iterdir() if p.name.startswith(".")]


# --- metrics -------------------------------------------------------------------------------


def test_metrics_json_has_sacreds_parallel_lists(obs, ex_info, basedir):
    start(obs, ex_info)
    obs.log_metrics({}, info={})
    assert load(basedir / "1" / "metrics.json") == {}  # first beat writes it, even empty
    obs.log_metrics({**batch("loss", 0, 2), **batch("acc", 10, 1)}, info={})
    obs.log_metrics(batch("loss", 2, 1), info={})
    obs.completed_event(stop_time=T2, result=None)

    metrics = load(basedir / "1" / "metrics.json")
    stamp = "2024-05-01T12:00:01.000250"
    assert metrics == {
        "loss": {"steps": [0, 1, 2], "timestamps": [stamp] * 3, "values": [0.0, 0.5, 1.0]},
        "acc": {"steps": [10], "timestamps": [stamp], "values": [5.0]},
    }
    assert read_run(basedir, "1")["metrics"] == metrics


def test_metrics_json_is_rewritten_only_when_the_points_doubled(obs, ex_info, basedir):
    start(obs, ex_info)
    path = basedir / "1" / "metrics.json"
    rewrites, inode = [], None
    for step in range(64):
        obs.log_metrics(batch("loss", step, 1), info={})
        if path.stat().st_ino != inode:
            inode = path.stat().st_ino
            rewrites.append(step + 1)
    assert rewrites == [1, 2, 4, 8, 16, 32, 64]

    obs.log_metrics(batch("loss", 64, 10), info={})
    assert len(load(path)["loss"]["steps"]) == 64  # stale until the points double again...
    assert read_run(basedir, "1")["metrics"]["loss"]["steps"] == list(
        range(74)
    )  # ...the log is not
    obs.completed_event(stop_time=T2, result=None)
    assert load(path)["loss"]["steps"] == list(range(74))


def test_metric_values_are_plain_json(obs, ex_info, basedir):
    import numpy as np

    start(obs, ex_info)
    values = [np.float64(0.25), np.int64(3), float("nan")]
    obs.log_metrics(
        {"m": {"name": "m", "steps": [0, 1, 2], "values": values, "timestamps": [T1] * 3}}, {}
    )
    stored = load(basedir / "1" / "metrics.json")["m"]["values"]
    assert stored[:2] == [0.25, 3] and stored[2] != stored[2]


def test_metrics_json_rebuilt_from_many_batches_holds_every_point_as_logged(obs, ex_info, basedir):
    # Metrics arrive about once a second: at the end metrics.json is rebuilt from the log.
    start(obs, ex_info)
    names = ["loss", 'odd "name" ]', "größe", "a,b"]
    expected: dict = {n: {"steps": [], "timestamps": [], "values": []} for n in names}
    stamp = "2024-05-01T12:00:01.000250"
    for number in range(12):
        metrics = {}
        for name in names[number % 3 : number % 3 + 2]:
            values = [number / 3, float("nan"), -float("inf"), 10**20][: 1 + number % 4]
            if name == "a,b" and number == 8:
                values = ["text ] with a bracket", '"quoted"'][: len(values)]  # a Sacred store
            steps = [number * 10 + i for i in range(len(values))]
            metrics[name] = {"name": name, "steps": steps, "values": values}
            metrics[name]["timestamps"] = [T1] * len(values)
            expected[name]["steps"] += steps
            expected[name]["values"] += values
            expected[name]["timestamps"] += [stamp] * len(values)
        obs.log_metrics(metrics, info={})
    obs.completed_event(stop_time=T2, result=None)

    text = (basedir / "1" / "metrics.json").read_text()
    assert text == file_store._compact(file_store.read_metrics_log(basedir / "1" / "metrics.jsonl"))
    assert json.dumps(json.loads(text), sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_columns_with_epoch_times_are_written_as_sacreds_datetimes_would_be(ex_info, tmp_path):
    stamps = [1714564801.000250, 1714564801.9999996, 1714564802.5, 1714564803.0000005]
    columns = {
        "loss": {
            "steps": [0, 1, 2, 3],
            "values": [1.0, 0.5, float("nan"), 2],
            "timestamps": stamps,
        },
        "größe": {"steps": [7], "values": ["text"], "timestamps": [stamps[0]]},
        "empty": {"steps": [], "values": [], "timestamps": []},
    }
    columns = {name: {**c, "name": name} for name, c in columns.items()}
    by_columns, by_datetimes = (FileStorageObserver(tmp_path / n) for n in ("a", "b"))
    for observer in (by_columns, by_datetimes):
        start(observer, ex_info)
    by_columns.log_metric_columns(columns, info={})
    by_datetimes.log_metrics(columns_to_sacred(columns), info={})
    for name in ("metrics.json", "metrics.jsonl"):
        written = (tmp_path / "a" / "1" / name).read_bytes()
        assert written == (tmp_path / "b" / "1" / name).read_bytes()
        text = written.decode("ascii").rstrip("\n")
        assert text == file_store._compact(json.loads(text))  # compact, keys sorted, ASCII
    loss = load(tmp_path / "a" / "1" / "metrics.json")["loss"]
    assert loss["timestamps"] == [
        "2024-05-01T12:00:01.000250",
        "2024-05-01T12:00:02.000000",  # rounded up into the next second
        "2024-05-01T12:00:02.500000",
        "2024-05-01T12:00:03.000000",  # half a microsecond: to even
    ]


KILLED_RUN = """
import datetime, os, sys
from expkit_plugins.file_store import FileStorageObserver
obs = FileStorageObserver(sys.argv[1])
t = datetime.datetime(2024, 5, 1)
obs.started_event(ex_info={"name": "k", "base_dir": ".", "sources": []}, command="main",
                  host_info={}, start_time=t, config={}, meta_info={}, _id=None)
out = ""
for beat in range(5):
    out += "beat %d\\n" % beat
    obs.log_metrics({"loss": {"name": "loss", "steps": list(range(beat * 3, beat * 3 + 3)),
                              "values": [1.0, 2.0, 3.0], "timestamps": [t] * 3}}, {})
    obs.heartbeat_event(info={}, captured_out=out, beat_time=t, result=None)
os._exit(9)  # killed: no completed event
"""


def test_a_killed_process_loses_no_metric(basedir):
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, str(basedir)], check=False)
    assert done.returncode == 9
    log = basedir / "1" / "metrics.jsonl"
    with log.open("a") as f:
        f.write('{"loss": {"steps": [99')  # a batch torn by the kill
    record = read_run(basedir, "1")
    assert record["status"] == "RUNNING"
    assert record["metrics"]["loss"]["steps"] == list(range(15))
    # A heartbeat followed the last batch: metrics.json has it too.
    assert load(basedir / "1" / "metrics.json")["loss"]["steps"] == list(range(15))
    assert (basedir / "1" / "cout.txt").read_text() == "".join(f"beat {i}\n" for i in range(5))


KILLED_BETWEEN_BEATS = """
import datetime, os, signal, sys, time
from expkit_plugins.file_store import FileStorageObserver
obs = FileStorageObserver(sys.argv[1])
t = datetime.datetime(2024, 5, 1)
obs.started_event(ex_info={"name": "k", "base_dir": ".", "sources": []}, command="main",
                  host_info={}, start_time=t, config={}, meta_info={}, _id=None)
for step in range(43):  # a point a second, a heartbeat every ten, a hundred times as fast
    obs.log_metrics({"loss": {"name": "loss", "steps": [step], "values": [step / 2],
                              "timestamps": [t]}}, {})
    time.sleep(0.01)
    if step % 10 == 9:
        obs.heartbeat_event(info={}, captured_out="", beat_time=t, result=None)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_metrics_json_is_one_heartbeat_behind_at_most(basedir):
    # Sacred's readers (Sacredboard, incense, scripts) read only metrics.json.
    done = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_BEATS, str(basedir)], check=False)
    assert done.returncode == -signal.SIGKILL
    metrics = load(basedir / "1" / "metrics.json")["loss"]
    assert metrics["steps"] == list(range(40))  # as of the last beat, not of 32 points
    assert metrics["values"] == [step / 2 for step in range(40)]
    assert read_run(basedir, "1")["metrics"]["loss"]["steps"] == list(range(43))


def test_a_resumed_run_rewrites_a_metrics_json_left_behind(obs, ex_info, basedir):
    start(obs, ex_info)
    for step in range(40):
        obs.log_metrics(batch("loss", step, 1), info={})  # killed before the next beat
    assert len(load(basedir / "1" / "metrics.json")["loss"]["steps"]) == 32
    replayed = FileStorageObserver(basedir)
    replayed.resume("1")
    replayed.heartbeat_event(info={}, captured_out="", beat_time=T1, result=None)
    assert load(basedir / "1" / "metrics.json")["loss"]["steps"] == list(range(40))


def test_a_resumed_run_drops_a_batch_torn_by_the_failure_and_gets_it_again(obs, ex_info, basedir):
    start(obs, ex_info)
    obs.log_metrics(batch("loss", 0, 2), info={})
    with (basedir / "1" / "metrics.jsonl").open("a") as f:
        f.write('{"loss":{"steps":[2')  # the disk filled up in the middle of the next batch
    replayed = FileStorageObserver(basedir)
    replayed.resume("1")
    replayed.log_metrics(batch("loss", 2, 2), info={})  # the spooled batch, replayed
    replayed.completed_event(stop_time=T2, result=None)
    assert read_run(basedir, "1")["metrics"]["loss"]["steps"] == [0, 1, 2, 3]
    assert load(basedir / "1" / "metrics.json")["loss"]["steps"] == [0, 1, 2, 3]


def _io_counters() -> tuple[int, int]:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize(
    "points", [100_000, pytest.param(1_000_000, marks=pytest.mark.slow)], ids=["100k", "1M"]
)
def test_metrics_cost_grows_linearly(basedir, ex_info, points):
    obs = FileStorageObserver(basedir)
    start(obs, ex_info)
    per_beat = points // 100
    read_before, written_before = _io_counters()
    for beat in range(100):  # beats as fast as points come: the worst case
        obs.log_metrics(batch("loss", beat * per_beat, per_beat), info={})
        obs.heartbeat_event(info={}, captured_out="", beat_time=T1, result=None)
    obs.completed_event(stop_time=T2, result=None)
    read_after, written_after = _io_counters()

    rundir = basedir / "1"
    final = (rundir / "metrics.json").stat().st_size + (rundir / "metrics.jsonl").stat().st_size
    # Rewriting metrics.json at every beat, as Sacred does, moves ~50x the final size.
    assert written_after - written_before < 3 * final
    assert read_after - read_before < 3 * final
    assert len(load(rundir / "metrics.json")["loss"]["steps"]) == points


# --- artifacts and resources ---------------------------------------------------------------


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00weights\xff")
    return path


def test_artifact_is_copied_and_listed(obs, ex_info, basedir, artifact):
    start(obs, ex_info)
    obs.artifact_event(name="model.bin", filename=str(artifact))
    obs.artifact_event(name="plots/epoch 1/curve.bin", filename=str(artifact), metadata={"a": 1})
    obs.artifact_event(name="model.bin", filename=str(artifact))  # replaced, listed once
    rundir = basedir / "1"
    assert (rundir / "model.bin").read_bytes() == artifact.read_bytes()
    assert (rundir / "plots" / "epoch 1" / "curve.bin").read_bytes() == artifact.read_bytes()
    assert load(rundir / "run.json")["artifacts"] == ["model.bin", "plots/epoch 1/curve.bin"]


def test_artifact_not_copied_when_copy_artifacts_is_false(basedir, ex_info, artifact):
    obs = FileStorageObserver(basedir, copy_artifacts=False)
    start(obs, ex_info)
    obs.artifact_event(name="model.bin", filename=str(artifact))
    target = basedir / "1" / "model.bin"
    assert target.is_symlink() and target.read_bytes() == artifact.read_bytes()


@pytest.mark.parametrize(
    "name",
    ["../outside.bin", "sub/../../outside.bin", "/tmp/outside.bin", "a/../../../outside.bin"],
)
def test_artifact_names_cannot_leave_the_run_folder(obs, ex_info, basedir, artifact, name):
    start(obs, ex_info)
    with pytest.raises(UsageError, match="outside the run folder") as info:
        obs.artifact_event(name=name, filename=str(artifact))
    assert "\n" not in str(info.value)
    assert not (basedir / "outside.bin").exists()
    assert load(basedir / "1" / "run.json")["artifacts"] == []


def test_artifact_through_a_symlinked_folder_is_rejected(obs, ex_info, basedir, artifact, tmp_path):
    start(obs, ex_info)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (basedir / "1" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UsageError, match="symlink"):
        obs.artifact_event(name="link/sub/x.bin", filename=str(artifact))
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "name",
    [
        "run.json",
        "./config.json",
        "cout.txt",
        "metrics.json",
        "metrics.jsonl",
        "metrics.columns",
        "info.json",
        "RUN.JSON",
    ],
)
def test_artifact_cannot_replace_the_store_files(obs, ex_info, basedir, artifact, name):
    start(obs, ex_info)
    with pytest.raises(UsageError, match="reserved for the file store"):
        obs.artifact_event(name=name, filename=str(artifact))
    assert load(basedir / "1" / "config.json")["a"] == 1
    assert set(load(basedir / "1" / "run.json")) == RUNNING_KEYS


def test_artifact_that_is_no_file_is_a_clear_error(obs, ex_info, tmp_path):
    start(obs, ex_info)
    with pytest.raises(UsageError, match="does not exist"):
        obs.artifact_event(name="x", filename=str(tmp_path / "missing.txt"))
    with pytest.raises(UsageError, match="is not a file"):
        obs.artifact_event(name="x", filename=str(tmp_path))


def test_resources_are_stored_once_relative_to_basedir(tmp_path, ex_info, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "train.csv"
    data.parent.mkdir()
    data.write_text("x,y\n1,2\n")
    obs = FileStorageObserver("out/runs")  # relative: Sacred made stored paths CWD-relative
    start(obs, ex_info)
    obs.resource_event(str(data))
    obs.resource_event(str(data))
    copy = tmp_path / "other.csv"
    copy.write_text("x,y\n1,2\n")
    obs.resource_event(str(copy))

    digest = md5(data)
    run = load(tmp_path / "out" / "runs" / "1" / "run.json")
    assert run["resources"] == [
        [str(data), f"_resources/train_{digest}.csv"],
        [str(copy), f"_resources/other_{digest}.csv"],
    ]
    resources = tmp_path / "out" / "runs" / "_resources"
    assert (resources / f"train_{digest}.csv").read_text() == "x,y\n1,2\n"
    assert len(list(resources.iterdir())) == 2


def test_resource_inside_basedir_kept_in_place_without_copy_artifacts(basedir, ex_info):
    obs = FileStorageObserver(basedir, copy_artifacts=False)
    start(obs, ex_info)
    inside = basedir / "shared" / "vocab.txt"
    inside.parent.mkdir()
    inside.write_text("a b c")
    obs.resource_event(str(inside))
    assert load(basedir / "1" / "run.json")["resources"] == [[str(inside), "shared/vocab.txt"]]
    assert not (basedir / "_resources").exists()


# --- reading ---------------------------------------------------------------------------


def test_read_run_gathers_the_record(obs, ex_info, basedir):
    start(obs, ex_info)
    obs.log_metrics(batch("loss", 0, 2), info={})
    obs.heartbeat_event(info={"note": "hi"}, captured_out="", beat_time=T1, result=None)
    obs.completed_event(stop_time=T2, result=3)
    record = read_run(basedir, 1)
    assert record["_id"] == "1" and record["status"] == "COMPLETED" and record["result"] == 3
    assert record["config"]["seed"] == 42
    assert record["info"] == {"note": "hi"}
    assert record["metrics"]["loss"]["steps"] == [0, 1]


def test_read_run_of_sacred_run_without_log(basedir):
    rundir = basedir / "3"
    rundir.mkdir(parents=True)
    (rundir / "run.json").write_text('{"status": "COMPLETED"}')
    (rundir / "config.json").write_text('{"a": 1}')
    (rundir / "metrics.json").write_text(
        '{"m": {"steps": [0], "timestamps": ["t"], "values": [1]}}'
    )
    record = read_run(basedir, "3")
    assert record["metrics"]["m"]["values"] == [1] and record["info"] == {}


def test_read_run_errors(basedir):
    with pytest.raises(UsageError, match=r"no run '4' in"):
        read_run(basedir, 4)
    (basedir / "4").mkdir(parents=True)
    (basedir / "4" / "run.json").write_text("{not json")
    with pytest.raises(ExpkitError, match=r"run\.json is not valid JSON"):
        read_run(basedir, 4)


# --- plugin hooks --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pm():
    return create_plugin_manager()


@pytest.mark.parametrize("form", ["file://{}", "{}"])
def test_store_for_url_claims_paths(pm, tmp_path, form):
    store = open_store(pm, form.format(tmp_path / "runs"))
    assert isinstance(store.storage, FileStorage)
    assert store.storage.basedir == str(tmp_path / "runs")


def test_store_for_url_leaves_other_schemes(pm):
    [backend] = file_store.expkit_store_backends()
    assert backend.claims("/some/folder") and backend.claims("file:///some/folder")
    assert not backend.claims("mongodb://localhost/db")
    assert not backend.claims("tinydb://runs.json")
    with pytest.raises(UsageError, match="names no folder"):
        open_store(pm, "file://")


def test_observer_class_from_expkit_observers(pm):
    from expkit.observers import FileStorageObserver as Imported

    assert Imported is FileStorageObserver
    assert pm.hook.expkit_observer_class(name="FileStorageObserver") is FileStorageObserver
    assert file_store.expkit_observer_class(name="MongoObserver") is None


def test_observers_on_one_folder_are_equal(tmp_path):
    assert FileStorageObserver(tmp_path / "a") == FileStorageObserver(str(tmp_path / "a"))
    assert FileStorageObserver(tmp_path / "a") != FileStorageObserver(tmp_path / "b")
    assert len({FileStorageObserver(tmp_path / "a"), FileStorageObserver(tmp_path / "a")}) == 1


# --- end to end, through the core ----------------------------------------------------------


def make_experiment(basedir: Path, main: Any) -> Any:
    from expkit import Experiment

    ex = Experiment("e2e")
    ex.observers.append(FileStorageObserver(basedir))
    ex.add_config(lr=0.1)
    ex.main(main)
    return ex


def test_end_to_end_completed_run(basedir, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("input\n")
    model = tmp_path / "model.txt"
    model.write_text("weights\n")

    def main(lr, _run):
        print("training with", lr)
        for step in range(5):
            _run.log_scalar("loss", 1.0 / (step + 1))
        _run.info["best"] = 0.2
        with _run.open_resource(str(data)) as f:
            f.read()
        _run.add_artifact(str(model), name="out/model.txt")
        return lr * 10

    run = make_experiment(basedir, main).run(options={"--capture": "sys"})
    assert run._id == "1"
    record = read_run(basedir, run._id)
    assert set(record) - {"_id", "config", "info", "metrics"} == BEAT_KEYS | {"stop_time"}
    assert record["status"] == "COMPLETED" and record["result"] == 1.0
    assert record["config"]["lr"] == 0.1 and "seed" in record["config"]
    assert record["info"] == {"best": 0.2}
    assert record["metrics"]["loss"]["values"] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert load(basedir / "1" / "metrics.json") == record["metrics"]
    assert record["artifacts"] == ["out/model.txt"]
    assert (basedir / "1" / "out" / "model.txt").read_text() == "weights\n"
    assert record["resources"] == [[str(data), f"_resources/data_{md5(data)}.txt"]]
    assert "training with 0.1" in (basedir / "1" / "cout.txt").read_text()
    [stored] = [
        s for rel, s in record["experiment"]["sources"] if rel.endswith(Path(__file__).name)
    ]
    assert (basedir / stored).read_bytes() == Path(__file__).read_bytes()
    for key in ("start_time", "heartbeat", "stop_time"):
        datetime.datetime.strptime(record[key], SACREDBOARD_TIME)
