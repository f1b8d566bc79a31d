"""The store contract: what every store keeps of a run and gives back, the same for each.

Every test runs once per store: the file store, TinyDB, MongoDB (the in-memory server
of ``mongo_server.py``, or ``EXPKIT_TEST_MONGO_URL``'s), SQLite and PostgreSQL (the
throwaway cluster of ``sql_server.py``, or ``EXPKIT_TEST_POSTGRES_URL``'s), and S3
(moto's server of ``s3_server.py`` on 127.0.0.1). A test
reaches a store only as the core and the commands do: ``open_store(pm, url)`` gets
the observer events a run sends, ``open_reader(pm, url)`` reads the runs back, and
real ``expkit`` processes run experiments into it and list them. What a store keeps
in its own format is tested in its own file (``tests/plugins/test_<store>*.py``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    RUN_AT_GO,
    assert_not_printed,
    run_at_once,
    run_expkit,
    start_expkit,
    write_project,
)
from sql_server import password_of, tables_text

import expkit
from expkit.delivery import SpooledRun, replay
from expkit.errors import ExpkitError, UsageError
from expkit.observers import RunObserver, columns_to_sacred
from expkit.pluginmanager import get_plugin_manager
from expkit.records import RunRecord
from expkit.store import open_reader, open_store

STORES = ["file", "tinydb", "mongo", "sqlite", "postgresql", "s3"]
# Stores whose URLs carry a password in the tests.
SECURED = ["mongo", "postgresql"]

# Whole milliseconds: MongoDB keeps no finer times.
T0 = datetime.datetime(2024, 5, 1, 12, 0, 0)
T1 = datetime.datetime(2024, 5, 1, 12, 0, 1, 250000)
T2 = datetime.datetime(2024, 5, 1, 12, 0, 2, 500000)
HOST = {
    "hostname": "box-7",
    "os": ["Linux", "Linux-6.1-x86_64"],
    "python_version": "3.11.7",
    "cpu": "AMD EPYC",
    "ENV": {"CUDA_VISIBLE_DEVICES": "0"},
}
CONFIG = {
    "lr": 0.125,
    "layers": [64, 32],
    "name": "résumé ✓",
    "optimizer": {"kind": "adam", "betas": [0.9, 0.999]},
    "shuffle": True,
    "nothing": None,
    "big": 2**53 + 1,
    "seed": 42,
}
META = {"command": "main", "options": {"--capture": "sys"}, "comment": "first try"}


def printed(output: str) -> str:
    """What a run printed: its captured output without the log lines kept beside it."""
    return "".join(line for line in output.splitlines(keepends=True) if not _LOG_LINE.match(line))


_LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) - ")


class Store:
    """One store of the contract: its URL, and what the tests do with it."""

    def __init__(self, kind: str, url: str, tmp_path: Path) -> None:
        self.kind = kind
        self.url = url
        self.tmp_path = tmp_path
        self.pm = get_plugin_manager()
        self._opened: list[Any] = []

    def __repr__(self) -> str:
        return f"<{self.kind} store>"

    def observer(self) -> RunObserver:
        """A new observer of the store, as ``expkit run --store URL`` makes it."""
        return self._keep(open_store(self.pm, self.url))

    def reader(self) -> Any:
        """A new reader of the store, as ``expkit runs`` makes it."""
        return self._keep(open_reader(self.pm, self.url))

    def get(self, run_id: Any) -> RunRecord:
        """Everything a fresh reader gives back about run ``run_id``."""
        return self.reader().get_run(run_id)

    def listed(self) -> list[RunRecord]:
        """What a fresh reader lists."""
        return self.reader().list_runs()

    def close(self) -> None:
        for opened in self._opened:
            if hasattr(opened, "close"):
                opened.close()

    def _keep(self, opened: Any) -> Any:
        self._opened.append(opened)
        return opened


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store of the contract in turn, new and empty."""
    yield from _store(request.param, request, tmp_path)


@pytest.fixture(params=SECURED)
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store whose URL carries a password, new and empty."""
    yield from _store(request.param, request, tmp_path)


def _store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if kind in ("sqlite", "postgresql"):
        pytest.importorskip("sqlalchemy")
    urls: dict[str, Callable[[], str]] = {
        "file": lambda: str(tmp_path / "runs"),
        "tinydb": lambda: f"tinydb://{tmp_path / 'runs_db'}",
        "mongo": lambda: request.getfixturevalue("mongo_url"),
        "sqlite": lambda: f"sqlite:///{tmp_path / 'runs.db'}",
        "postgresql": lambda: request.getfixturevalue("postgres_url"),
        "s3": lambda: request.getfixturevalue("s3_url"),
    }
    store = Store(kind, urls[kind](), tmp_path)
    yield store
    store.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The experiment's base dir, with a main file and a module in a package."""
    return write_project(
        tmp_path / "project",
        {"exp.py": "print('main')\n", "pkg/util.py": "X = 1\n"},
        pyproject=None,
    )


@pytest.fixture
def ex_info(project: Path) -> dict:
    """Sacred's experiment info of the project, as the core sends it."""
    return {
        "name": "demo",
        "base_dir": str(project),
        "mainfile": "exp.py",
        "sources": [
            ["exp.py", _md5(project / "exp.py")],
            ["pkg/util.py", _md5(project / "pkg" / "util.py")],
        ],
        "dependencies": ["expkit==0.1.0", "numpy==1.26.4"],
        "repositories": [{"url": "git@example.org:lab/demo", "commit": "abc123", "dirty": True}],
    }


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def start(
    obs: RunObserver,
    ex_info: dict,
    _id: Any = None,
    config: dict | None = None,
    start_time: datetime.datetime = T0,
) -> Any:
    """Send ``started_event`` as the core does; the id the store gave the run."""
    return obs.started_event(
        ex_info=ex_info,
        command="main",
        host_info=HOST,
        start_time=start_time,
        config=CONFIG if config is None else config,
        meta_info=META,
        _id=_id,
    )


def send_metrics(obs: RunObserver, columns: dict[str, dict]) -> None:
    """New points, as the core delivers them: columns where the store takes them."""
    if type(obs).log_metric_columns is not RunObserver.log_metric_columns:
        obs.log_metric_columns(columns, {})
    else:
        obs.log_metrics(columns_to_sacred(columns), {})


def column(steps: list[int], values: list[float], first: datetime.datetime = T1) -> dict:
    """Points with times 10 ms apart from ``first``, as epoch seconds (the core's columns)."""
    epoch = datetime.datetime(1970, 1, 1)
    times = [(first - epoch).total_seconds() + 0.01 * i for i in range(len(steps))]
    return {"steps": steps, "values": values, "timestamps": times}


def times_of(col: dict) -> list[datetime.datetime]:
    epoch = datetime.datetime(1970, 1, 1)
    return [epoch + datetime.timedelta(seconds=round(t, 3)) for t in col["timestamps"]]


# --- a run, recorded and read back ---------------------------------------------------------


def test_a_run_is_read_back_as_it_was_recorded(store: Store, ex_info: dict, project: Path):
    obs = store.observer()
    run_id = start(obs, ex_info)
    obs.heartbeat_event(info={"epoch": 1}, captured_out="epoch 1\n", beat_time=T1, result=None)
    obs.completed_event(stop_time=T2, result={"accuracy": 0.96, "label": "ok"})

    record = store.get(run_id)
    assert (record.status, record.command) == ("COMPLETED", "main")
    assert record.config == CONFIG
    assert record.result == {"accuracy": 0.96, "label": "ok"}
    assert (record.start_time, record.heartbeat, record.stop_time) == (T0, T1, T2)
    assert record.duration == T2 - T0
    assert record.host == HOST
    assert record.meta["comment"] == "first try" and record.meta["command"] == "main"
    assert (record.info, record.captured_out) == ({"epoch": 1}, "epoch 1\n")
    assert record.fail_trace is None
    experiment = record.experiment_info
    assert record.experiment == experiment["name"] == "demo"
    assert (experiment["base_dir"], experiment["mainfile"]) == (str(project), "exp.py")
    assert experiment["dependencies"] == ["expkit==0.1.0", "numpy==1.26.4"]
    assert experiment["repositories"] == ex_info["repositories"]
    assert [source[0] for source in experiment["sources"]] == ["exp.py", "pkg/util.py"]
    reader = store.reader()
    assert reader.read_source(run_id, "exp.py") == b"print('main')\n"
    assert reader.read_source(run_id, "pkg/util.py") == b"X = 1\n"
    assert record.store  # the store that holds it, as messages name it

    [summary] = store.listed()
    assert (summary.id, summary.experiment, summary.status) == (record.id, "demo", "COMPLETED")
    assert (summary.config, summary.result) == (CONFIG, record.result)
    assert (summary.start_time, summary.stop_time) == (T0, T2)
    assert summary.captured_out is None and summary.metrics is None  # left to get_run


def test_every_end_of_a_run_is_kept_with_its_status(store: Store, ex_info: dict, tmp_path: Path):
    obs = store.observer()  # one observer records one run after the other
    ended = start(obs, ex_info, config={"run": "completed"})
    assert [r.status for r in store.listed()] == ["RUNNING"]
    (tmp_path / "model.bin").write_bytes(b"\x00\x01")
    obs.artifact_event(name="model.bin", filename=str(tmp_path / "model.bin"))
    send_metrics(obs, {"loss": column([0], [1.0])})
    obs.heartbeat_event(info={"k": 1}, captured_out="first\n", beat_time=T1, result=None)
    obs.completed_event(stop_time=T1, result=None)
    failed = start(obs, ex_info, config={"run": "failed"})
    trace = ["Traceback (most recent call last):\n", "ValueError: diverged\n"]
    obs.failed_event(fail_time=T2, fail_trace=trace)
    interrupted = start(obs, ex_info, config={"run": "interrupted"})
    obs.interrupted_event(interrupt_time=T2, status="INTERRUPTED")
    timed_out = start(obs, ex_info, config={"run": "timeout"})
    obs.interrupted_event(interrupt_time=T2, status="TIMEOUT")
    running = start(obs, ex_info, config={"run": "running"})

    ids = [ended, failed, interrupted, timed_out, running]
    assert len(set(map(str, ids))) == 5
    listed = store.listed()
    assert [(str(r.id), r.config["run"], r.status) for r in listed] == [
        (str(ended), "completed", "COMPLETED"),
        (str(failed), "failed", "FAILED"),
        (str(interrupted), "interrupted", "INTERRUPTED"),
        (str(timed_out), "timeout", "TIMEOUT"),
        (str(running), "running", "RUNNING"),
    ]
    record = store.get(failed)
    assert (record.fail_trace, record.stop_time) == (trace, T2)
    assert store.get(ended).result is None and store.get(running).stop_time is None
    # Nothing of the first run carries over to the next ones of the same observer.
    assert (record.artifacts, record.info, record.metrics, record.captured_out) == ((), {}, {}, "")
    assert store.get(ended).artifacts == ("model.bin",)


def test_a_traceback_given_as_one_text_is_kept_as_its_lines(store: Store, ex_info: dict):
    obs = store.observer()
    failed = start(obs, ex_info)
    lines = ["Traceback (most recent call last):\n", "KeyError: 'x'\n"]
    obs.failed_event(fail_time=T2, fail_trace="".join(lines))  # as Sacred's observers took it
    assert store.get(failed).fail_trace == lines


def test_a_queued_run_is_kept_with_what_it_needs_to_run(store: Store, ex_info: dict):
    obs = store.observer()
    queued = obs.queued_event(
        ex_info=ex_info,
        command="main",
        host_info=HOST,
        queue_time=T0,
        config=CONFIG,
        meta_info=META,
        _id=None,
    )
    [summary] = store.listed()
    assert (str(summary.id), summary.status, summary.config) == (str(queued), "QUEUED", CONFIG)
    assert summary.stop_time is None
    record = store.get(queued)
    assert (record.host, record.meta["comment"]) == (HOST, "first try")
    # What it needs to run later: its sources.
    assert store.reader().read_source(queued, "exp.py") == b"print('main')\n"


def test_heartbeats_keep_the_latest_output_info_and_result(store: Store, ex_info: dict):
    obs = store.observer()
    run_id = start(obs, ex_info)
    log = "".join(f"line {i:05d} of the training log ✓\n" for i in range(400))  # 12 kB
    beats = [
        ("epoch 1\n", {"epoch": 1}, None),
        ("epoch 1\nepoch 2\n", {"epoch": 2, "best": [0.5, 1]}, 0.5),
        ("epoch 1\nepoch 2\n" + log + "10%", {"epoch": 3, "best": [0.25, 3]}, 0.25),
        # Sacred's filter drew the progress bar over itself: stored text rewritten.
        ("epoch 1\nepoch 2\n" + log + "100%\ndone\n", {"epoch": 3}, 0.25),
        ("epoch 1\nepoch 2\n" + log + "100%\ndone\nsaved\n", {"epoch": 3}, 0.25),
        ("capturing turned off\n", {"epoch": 3}, 0.25),  # a filter that replaced it all
        ("capturing turned off\nback on\n", {"epoch": 3}, 0.25),
    ]
    for number, (out, info, result) in enumerate(beats):
        beat = T0 + datetime.timedelta(seconds=number + 1)
        obs.heartbeat_event(info=info, captured_out=out, beat_time=beat, result=result)
        record = store.get(run_id)
        assert (record.captured_out, record.info, record.result) == (out, info, result)
        assert record.heartbeat == beat
    obs.completed_event(stop_time=T2, result=0.25)
    assert store.get(run_id).captured_out == beats[-1][0]


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_keep_their_order_steps_values_and_times(store: Store, ex_info: dict):
    obs = store.observer()
    run_id = start(obs, ex_info)
    batches = [
        {"loss": column([0, 1], [2.5, 1.25]), "acc": column([0], [0.5])},
        {"loss": column([5, 3], [-1, 0.0], first=T2)},  # steps as logged, not sorted
        {"acc": column([10, 20], [1, 0.875], first=T2)},
    ]
    for batch in batches:
        send_metrics(obs, batch)
    obs.heartbeat_event(info={}, captured_out="", beat_time=T2, result=None)
    obs.completed_event(stop_time=T2, result=None)

    metrics = store.get(run_id).metrics
    assert sorted(metrics) == ["acc", "loss"]
    loss, acc = metrics["loss"], metrics["acc"]
    assert (loss["steps"], loss["values"]) == ([0, 1, 5, 3], [2.5, 1.25, -1, 0.0])
    assert (acc["steps"], acc["values"]) == ([0, 10, 20], [0.5, 1, 0.875])
    expected = times_of(batches[0]["loss"]) + times_of(batches[1]["loss"])
    assert loss["timestamps"] == expected
    assert acc["timestamps"] == times_of(batches[0]["acc"]) + times_of(batches[2]["acc"])


def test_many_metric_points_all_come_back(store: Store, ex_info: dict):
    obs = store.observer()
    run_id = start(obs, ex_info)
    points = 20_000
    for first in range(0, points, 2_000):
        steps = list(range(first, first + 2_000))
        send_metrics(obs, {"loss": column(steps, [s / 1000 for s in steps])})
        obs.heartbeat_event(info={}, captured_out="", beat_time=T1, result=None)
    obs.completed_event(stop_time=T2, result=None)
    loss = store.get(run_id).metrics["loss"]
    assert loss["steps"] == list(range(points))
    assert loss["values"] == [s / 1000 for s in range(points)]
    assert len(loss["timestamps"]) == points


# --- files -----------------------------------------------------------------------------------


def test_artifacts_come_back_byte_for_byte_the_latest_of_a_name(
    store: Store, ex_info: dict, tmp_path: Path
):
    obs = store.observer()
    run_id = start(obs, ex_info)
    model = tmp_path / "model.bin"
    first, second = bytes(range(256)) * 4096, os.urandom(300_000)  # 1 MiB, then random
    model.write_bytes(first)
    obs.artifact_event(name="model.bin", filename=str(model))
    model.write_bytes(second)
    obs.artifact_event(name="model.bin", filename=str(model), metadata={"epoch": 2})
    plot = tmp_path / "loss.svg"
    plot.write_text("<svg/>\n")
    obs.artifact_event(name="plots/loss.svg", filename=str(plot), content_type="image/svg+xml")
    model.write_bytes(b"changed after the run")
    obs.completed_event(stop_time=T2, result=None)

    record = store.get(run_id)
    reader = store.reader()
    assert reader.read_artifact(run_id, "model.bin") == second
    assert reader.read_artifact(run_id, "plots/loss.svg") == b"<svg/>\n"
    with pytest.raises(KeyError):
        reader.read_artifact(run_id, "missing.bin")
    assert sorted(record.artifacts) == ["model.bin", "plots/loss.svg"]


def test_resources_are_kept_once_per_path_and_content(store: Store, ex_info: dict, tmp_path: Path):
    data = tmp_path / "data.csv"
    data.write_bytes(b"x,y\n1,2\n")
    obs = store.observer()
    run_id = start(obs, ex_info)
    obs.resource_event(str(data))
    obs.resource_event(str(data))  # the same file read twice
    copy = tmp_path / "spool-copy.csv"
    copy.write_bytes(b"a\n")
    obs.copied_resource_event(str(copy), original="/data/shared/labels.csv")
    obs.completed_event(stop_time=T2, result=None)
    data.write_bytes(b"changed since")

    record = store.get(run_id)
    assert sorted(record.resources) == sorted(
        [
            (str(data), hashlib.md5(b"x,y\n1,2\n").hexdigest()),
            ("/data/shared/labels.csv", hashlib.md5(b"a\n").hexdigest()),
        ]
    )
    reader = store.reader()
    assert reader.read_resource(run_id, str(data)) == b"x,y\n1,2\n"
    assert reader.read_resource(run_id, "/data/shared/labels.csv") == b"a\n"


# --- resuming a run --------------------------------------------------------------------------


def test_a_run_is_resumed_from_the_spool_with_every_event_once(
    store: Store, ex_info: dict, tmp_path: Path
):
    obs = store.observer()
    run_id = start(obs, ex_info)
    send_metrics(obs, {"loss": column([0, 1], [1.0, 0.5])})
    obs.heartbeat_event(info={"epoch": 1}, captured_out="one\n", beat_time=T1, result=None)
    # The store failed here; what the run sent later waits in the spool.
    spooled = SpooledRun.create(tmp_path / "spool", {"started": True, "store_id": run_id})
    spooled.append(
        "log_metric_columns", {"columns": {"loss": column([2, 3], [0.25, 0.125])}, "info": {}}
    )
    spooled.append(
        "heartbeat_event",
        {"info": {"epoch": 2}, "captured_out": "one\ntwo\n", "beat_time": T2, "result": 0.125},
    )
    spooled.append("completed_event", {"stop_time": T2, "result": 0.125})

    assert str(replay(spooled, store.observer())) == str(run_id)
    [record] = store.listed()
    record = store.get(record.id)
    assert (str(record.id), record.status, record.result) == (str(run_id), "COMPLETED", 0.125)
    assert (record.captured_out, record.info) == ("one\ntwo\n", {"epoch": 2})
    assert (record.start_time, record.config) == (T0, CONFIG)
    assert record.metrics["loss"]["steps"] == [0, 1, 2, 3]
    assert record.metrics["loss"]["values"] == [1.0, 0.5, 0.25, 0.125]
    assert not spooled.folder.exists()


def test_a_run_the_store_never_saw_is_delivered_from_the_spool(
    store: Store, ex_info: dict, tmp_path: Path
):
    other = store.observer()
    start(other, ex_info, config={"who": "other"})  # the store went on with other runs
    other.completed_event(stop_time=T1, result=None)
    spooled = SpooledRun.create(tmp_path / "spool", {"started": False, "store_id": None})
    spooled.append(
        "started_event",
        {
            "ex_info": ex_info,
            "command": "main",
            "host_info": HOST,
            "start_time": T0,
            "config": {"who": "spooled"},
            "meta_info": META,
            "_id": None,
        },
    )
    spooled.append(
        "log_metrics",
        {"metrics_by_name": columns_to_sacred({"acc": column([0, 1], [0.5, 0.75])}), "info": {}},
    )
    spooled.append("completed_event", {"stop_time": T2, "result": 0.75})

    run_id = replay(spooled, store.observer())
    record = store.get(run_id)
    assert (record.config, record.status, record.result) == ({"who": "spooled"}, "COMPLETED", 0.75)
    assert record.metrics["acc"]["values"] == [0.5, 0.75]
    assert [r.config["who"] for r in store.listed()] == ["other", "spooled"]


# --- ids -------------------------------------------------------------------------------------


def test_a_given_id_is_kept_and_a_taken_one_refused(store: Store, ex_info: dict):
    obs = store.observer()
    assert str(start(obs, ex_info, _id=77, config={"who": "first"})) == "77"
    obs.completed_event(stop_time=T1, result=1)
    with pytest.raises(UsageError) as refused:
        start(store.observer(), ex_info, _id=77, config={"who": "second"})
    assert "77" in str(refused.value) and "\n" not in str(refused.value)
    record = store.get("77")  # as `expkit runs show 77` asks for it
    assert (record.config, record.status, record.result) == ({"who": "first"}, "COMPLETED", 1)
    later = start(store.observer(), ex_info, config={"who": "next"})
    assert str(later) != "77"
    assert len(store.listed()) == 2


@pytest.mark.slow
def test_runs_started_at_once_by_many_processes_get_distinct_ids(store: Store, tmp_path: Path):
    go, workers = tmp_path / "go", 8
    commands = [
        [sys.executable, "-c", RUN_AT_GO, store.url, str(go), str(n)] for n in range(workers)
    ]
    done = run_at_once(commands, tmp_path, go)
    assert [d.returncode for d in done] == [0] * workers, [d.stderr for d in done]
    ids = [d.stdout.strip() for d in done]
    assert len(set(ids)) == workers
    listed = store.listed()
    assert sorted(str(r.id) for r in listed) == sorted(ids)
    for record in listed:
        n = record.config["worker"]
        assert (str(record.id), record.status, record.result) == (ids[n], "COMPLETED", n)
        assert printed(store.get(record.id).captured_out) == f"worker {n}\n"


def test_many_runs_are_listed_in_id_order(store: Store, ex_info: dict):
    obs = store.observer()
    ids = []
    for n in range(120):
        ids.append(start(obs, ex_info, config={"n": n, "C": n % 7}))
        obs.completed_event(stop_time=T1, result=n / 2)
    listed = store.listed()
    assert [str(r.id) for r in listed] == [str(i) for i in ids]
    assert [(r.config["n"], r.result, r.status) for r in listed] == [
        (n, n / 2, "COMPLETED") for n in range(120)
    ]


def test_a_listing_leaves_the_options_out_of_meta_and_a_whole_run_has_them(
    store: Store, ex_info: dict
):
    # Options and config docs are most of a run's meta and no listing shows them: every
    # store leaves them out of its summaries alike, so `runs list --json` does not depend
    # on the store; the run read whole keeps them.
    obs = store.observer()
    meta = {**META, "config_docs": [["C", "the regularisation"]]}
    run_id = obs.started_event(
        ex_info=ex_info, command="main", host_info=HOST, start_time=T0, config=CONFIG,
        meta_info=meta, _id=None,
    )  # fmt: skip
    obs.completed_event(stop_time=T1, result=1)
    [listed] = store.listed()
    assert listed.meta == {"command": "main", "comment": "first try"}
    whole = store.get(run_id).meta
    assert (whole["options"], whole["config_docs"]) == (
        META["options"],
        [["C", "the regularisation"]],
    )


def test_unknown_runs_are_key_errors(store: Store, ex_info: dict):
    start(store.observer(), ex_info)
    reader = store.reader()
    for missing in ("999", 999, "no-such-run"):
        with pytest.raises(KeyError):
            reader.get_run(missing)
    with pytest.raises(KeyError):
        reader.read_source(999, "exp.py")
    with pytest.raises(KeyError):
        reader.read_resource(999, "/data/x.csv")


def test_unknown_files_of_a_run_are_key_errors(store: Store, ex_info: dict, tmp_path: Path):
    data = tmp_path / "data.csv"
    data.write_text("x\n")
    obs = store.observer()
    run_id = start(obs, ex_info)
    obs.resource_event(str(data))
    obs.artifact_event(name="model.bin", filename=str(data))
    obs.completed_event(stop_time=T1, result=None)
    reader = store.reader()
    for read, name in (
        (reader.read_source, "other.py"),
        (reader.read_artifact, "other.bin"),
        (reader.read_resource, str(tmp_path / "other.csv")),
    ):
        with pytest.raises(KeyError):
            read(run_id, name)


# --- damaged runs, deleting and editing --------------------------------------------------------


def _damage(store: Store, run_id: Any) -> None:
    """Spoil the stored run ``run_id`` in the store's own medium, as a crash or a hand edit may."""
    if store.kind == "file":
        (Path(store.url) / str(run_id) / "run.json").write_text('{"status": "COMPL')
    elif store.kind == "s3":
        from s3_server import client_for, object_key

        bucket, key = object_key(store.url, f"{run_id}/run.json")
        client_for(store.url).put_object(Bucket=bucket, Key=key, Body=b'{"status": "COMPL')
    elif store.kind == "tinydb":
        path = store.tmp_path / "runs_db" / "metadata.json"
        data = json.loads(path.read_text())
        for key, doc in data["runs"].items():
            if str(doc["_id"]) == str(run_id):
                data["runs"][key] = {
                    "_id": doc["_id"],
                    "experiment": "?",
                    "config": [1],
                    "start_time": "yesterday",
                    "status": 5,
                }
        path.write_text(json.dumps(data))
    elif store.kind == "mongo":
        import pymongo

        with pymongo.MongoClient(store.url, serverSelectionTimeoutMS=5000) as client:
            client.get_default_database().runs.replace_one(
                {"_id": run_id},
                {"experiment": "?", "config": [1], "start_time": "yesterday", "status": 5},
            )
    else:
        import sqlalchemy as sa

        engine = sa.create_engine(store.url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            if store.kind == "sqlite":  # SQLite keeps whatever text it is given
                conn.execute(
                    sa.text(
                        "UPDATE runs SET config = '{\"lr\": 0.', start_time = 'yesterday',"
                        " meta = '{\"comm', status = NULL WHERE id = :id"
                    ),
                    {"id": run_id},
                )
            else:
                conn.execute(
                    sa.text(
                        "UPDATE runs SET config = '[1]', meta = '\"x\"', experiment = NULL,"
                        " status = NULL WHERE id = :id"
                    ),
                    {"id": run_id},
                )
        engine.dispose()


def test_a_damaged_run_is_skipped_not_fatal(
    store: Store, ex_info: dict, capsys: pytest.CaptureFixture
):
    obs = store.observer()
    ids = []
    for n in range(3):
        ids.append(start(obs, ex_info, config={"n": n}))
        obs.completed_event(stop_time=T1, result=n)
    _damage(store, ids[1])

    assert expkit.main(["runs", "list", "--store", store.url]) == 0
    out = capsys.readouterr().out
    listed = {str(r.id): r for r in store.listed()}
    for n in (0, 2):
        record = listed[str(ids[n])]
        assert (record.config, record.status, record.result) == ({"n": n}, "COMPLETED", n)
        assert store.get(ids[n]).config == {"n": n}
    damaged = listed.get(str(ids[1]))
    assert damaged is None or damaged.status != "COMPLETED" or damaged.config != {"n": 1}
    try:
        store.get(ids[1])
    except (ExpkitError, KeyError) as exc:
        assert "\n" not in str(exc)  # one line naming the run, never a traceback
    assert re.match(rf"{len(listed)} runs (of \S+ )?in ", out.splitlines()[-1])


def test_delete_removes_the_run_and_keeps_what_others_share(
    store: Store, ex_info: dict, tmp_path: Path
):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00shared\xff" * 1000)
    obs = store.observer()
    gone = start(obs, ex_info, config={"n": 1})
    send_metrics(obs, {"loss": column([0], [1.0])})
    obs.artifact_event(name="weights.bin", filename=str(weights))
    obs.resource_event(str(weights))
    obs.completed_event(stop_time=T1, result=1)
    kept = start(obs, ex_info, config={"n": 2})  # the same sources, artifact and resource
    send_metrics(obs, {"loss": column([0], [2.0])})
    obs.artifact_event(name="weights.bin", filename=str(weights))
    obs.resource_event(str(weights))
    obs.completed_event(stop_time=T2, result=2)

    reader = store.reader()
    if "delete" not in getattr(reader, "capabilities", {"delete"}):
        with pytest.raises(UsageError):
            reader.delete_run(gone)
        return
    reader.delete_run(gone)
    assert [str(r.id) for r in store.listed()] == [str(kept)]
    with pytest.raises(KeyError):
        store.get(gone)
    with pytest.raises(KeyError):
        store.reader().delete_run(gone)
    reader = store.reader()
    assert reader.read_artifact(kept, "weights.bin") == weights.read_bytes()
    assert reader.read_resource(kept, str(weights)) == weights.read_bytes()
    assert reader.read_source(kept, "exp.py") == b"print('main')\n"
    assert store.get(kept).metrics["loss"]["values"] == [2.0]


def test_comment_and_tags_are_edited_where_the_store_can(store: Store, ex_info: dict):
    obs = store.observer()
    run_id = start(obs, ex_info)
    obs.completed_event(stop_time=T1, result=1)
    reader = store.reader()
    if "edit" not in reader.capabilities:
        with pytest.raises(UsageError, match="cannot edit"):
            reader.edit_run(run_id, comment="x")
        return
    edited = reader.edit_run(run_id, comment="the good one", tags=["paper", "baseline"])
    assert (edited.meta["comment"], edited.meta["tags"]) == ("the good one", ["paper", "baseline"])
    reader.edit_run(run_id, tags=[])  # no tags left: the comment stays
    record = store.get(run_id)
    assert record.meta["comment"] == "the good one" and "tags" not in record.meta
    listed = {str(r.id): r for r in reader.list_runs()}[str(run_id)]
    assert listed.meta["comment"] == "the good one"  # listings see the edit too
    assert (record.config, record.result, record.status) == (CONFIG, 1, "COMPLETED")
    assert record.meta["command"] == "main"


# --- real processes --------------------------------------------------------------------------

_EXPERIMENT = """\
import time

import expkit

ex = expkit.Experiment("contract")


@ex.config
def cfg():
    lr = 0.5
    steps = 5
    fail = False
    wait = 0.0


@ex.main
def main(lr, steps, fail, wait, _run):
    print("training with", lr)
    for step in range(steps):
        _run.log_scalar("loss", lr / (step + 1), step)
    _run.info["best"] = lr
    _run.add_resource("data.csv")
    with open("model.txt", "w") as f:
        f.write(f"weights {lr}\\n")
    _run.add_artifact("model.txt")
    if wait:
        print("waiting", flush=True)
        time.sleep(wait)
    if fail:
        raise ValueError("diverged")
    return lr * 2
"""


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """A project whose experiment logs, reads a resource, keeps an artifact and may fail."""
    return write_project(tmp_path / "proj", {"exp_contract.py": _EXPERIMENT, "data.csv": "x\n1\n"})


@pytest.mark.slow
def test_expkit_run_records_into_the_store_and_runs_reads_it_back(store: Store, experiment: Path):
    done = run_expkit(
        "run", "exp_contract.py", "-o", "lr=0.25", "--store", store.url, cwd=experiment
    )
    assert done.returncode == 0, done.stdout + done.stderr
    failed = run_expkit(
        "run", "exp_contract.py", "-o", "fail=True", "--store", store.url, cwd=experiment
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr

    ok, bad = store.listed()
    record = store.get(ok.id)
    assert (record.status, record.result, record.experiment) == ("COMPLETED", 0.5, "contract")
    assert record.config["lr"] == 0.25 and isinstance(record.config["seed"], int)
    assert printed(record.captured_out) == "training with 0.25\n"
    assert record.info["best"] == 0.25
    assert record.metrics["loss"]["steps"] == [0, 1, 2, 3, 4]
    assert record.metrics["loss"]["values"] == [0.25 / (s + 1) for s in range(5)]
    assert record.start_time <= record.metrics["loss"]["timestamps"][0] <= record.stop_time
    assert record.host["hostname"] and record.host["python_version"]
    assert any(d.startswith("expkit==") for d in record.experiment_info["dependencies"])
    reader = store.reader()
    source = (experiment / "exp_contract.py").read_bytes()
    assert reader.read_source(ok.id, "exp_contract.py") == source
    assert reader.read_artifact(ok.id, "model.txt") == b"weights 0.25\n"
    assert reader.read_resource(ok.id, str(experiment / "data.csv")) == b"x\n1\n"
    bad = store.get(bad.id)
    assert bad.status == "FAILED" and bad.fail_trace[-1].strip() == "ValueError: diverged"

    listing = run_expkit("runs", "list", "lr<0.3", "--json", "--store", store.url, cwd=experiment)
    assert listing.returncode == 0, listing.stderr
    assert [(str(r["id"]), r["status"]) for r in json.loads(listing.stdout)] == [
        (str(ok.id), "COMPLETED")
    ]


@pytest.mark.slow
def test_an_interrupted_process_is_recorded_as_interrupted(store: Store, experiment: Path):
    proc = start_expkit(
        "run",
        "exp_contract.py",
        "-o",
        "wait=60.0",
        "--store",
        store.url,
        cwd=experiment,
        until="waiting",
    )
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 2
    [record] = store.listed()
    record = store.get(record.id)
    assert record.status == "INTERRUPTED" and record.stop_time is not None
    # What the run printed, then the run's own log line about the interrupt.
    assert printed(record.captured_out).startswith("training with 0.5\nwaiting\n")
    assert len(record.metrics["loss"]["values"]) == 5


# --- passwords -------------------------------------------------------------------------------


def _stored_text(store: Store) -> str:
    """Everything the store holds, as text (binary contents decoded as latin-1)."""
    if store.kind == "mongo":
        import pymongo
        from bson import json_util

        parts = []
        with pymongo.MongoClient(store.url, serverSelectionTimeoutMS=5000) as client:
            db = client.get_default_database()
            for name in db.list_collection_names():
                parts += [json_util.dumps(doc) for doc in db[name].find()]
        return "\n".join(parts)
    return tables_text(store.url)


@pytest.mark.slow
def test_the_password_of_the_url_is_never_stored_or_printed(secured: Store, experiment: Path):
    password = password_of(secured.url)
    if not password:
        pytest.skip("the server given in the environment takes no password")
    args = ["--store", secured.url]
    done = run_expkit(
        "run", "exp_contract.py", "--comment", f"into {secured.url}", *args, cwd=experiment
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [summary] = secured.listed()
    shown = ""
    for command in (["runs", "list"], ["runs", "show", str(summary.id)], ["runs", "export"]):
        listed = run_expkit(*command, *args, cwd=experiment)
        assert listed.returncode == 0, listed.stderr
        shown += listed.stdout + listed.stderr
    assert "***" in shown
    assert password not in shown
    stored = _stored_text(secured)
    assert "training with 0.5" in stored  # the dump holds the runs
    assert password not in stored

    reader = secured.reader()
    assert password not in repr(reader) and password not in repr(secured.observer())
    assert password not in secured.get(summary.id).store

    wrong = secured.url.replace(password, "not-the-password")
    with pytest.raises(ExpkitError) as failed:
        obs = open_store(get_plugin_manager(), wrong)
        start(obs, {"name": "x", "base_dir": str(experiment), "sources": []})
    assert "not-the-password" not in str(failed.value)
    assert "\n" not in str(failed.value).strip()

    assert_not_printed(password, done.stdout, done.stderr)
