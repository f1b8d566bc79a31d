"""Metrics from ``log_scalar`` to the stores: columns with epoch-second times for the stores
that take them, Sacred's datetimes for every other observer, nothing lost or doubled while
other threads log and heartbeats drain, nor when a store fails mid-run."""

from __future__ import annotations

import datetime
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import fresh_python
from hypothesis import example, given
from hypothesis import strategies as st

from expkit import Experiment
from expkit.observers import (
    RunObserver,
    columns_to_sacred,
    utc_datetimes,
    utc_isoformat,
    utc_isoformat_json,
)
from expkit_plugins.file_store import FileStorageObserver, read_run

UTC = datetime.timezone.utc
# Seconds since the epoch that datetime can show (years 1 to 9999), with a day to spare.
FIRST, LAST = -62135596800 + 86400, 253402300799 - 86400


def reference(t: float) -> datetime.datetime:
    """The datetime route: ``datetime.utcfromtimestamp`` without its deprecation warning."""
    return datetime.datetime.fromtimestamp(t, UTC).replace(tzinfo=None)


# Whole seconds plus fractions on the rounding edges: half a microsecond either way, and
# just under the next second (rounds up to 10**6 microseconds and carries).
EDGES = [0.0, 5e-7, 1.5e-6, 2.5e-6, 0.1234565, 0.4999995, 0.9999994999, 0.9999995, 0.99999999]
edge_stamps = st.builds(
    lambda second, frac, sign: float(second) + sign * frac,
    st.integers(FIRST, LAST),
    st.sampled_from(EDGES) | st.floats(0, 1, exclude_max=True),
    st.sampled_from([1, -1]),
).filter(lambda t: FIRST <= t <= LAST)
stamps = edge_stamps | st.floats(FIRST, LAST) | st.floats(1.6e9, 1.9e9)
now = st.floats(1.6e9, 1.9e9)
batches = (
    st.lists(stamps, max_size=40)
    | st.lists(stamps, max_size=40).map(sorted)
    | st.lists(now, min_size=1, max_size=60).map(sorted)
)


@given(batches)
@example([1e9 + 0.9999995, 1e9 + 0.9999995, 1e9 + 1.0])  # carried into the next second
@example([1717171717.0000005, 1717171717.0000015, 1717171717.0000025])  # half to even
@example([-0.0000004, -0.5, -1.9999996, 0.0])  # before 1970: truncated, then borrowed
def test_times_convert_exactly_as_datetime_does(batch: list[float]) -> None:
    expected = [reference(t) for t in batch]
    assert utc_datetimes(batch) == expected
    iso = [t.isoformat(timespec="microseconds") for t in expected]
    assert utc_isoformat(batch) == iso
    assert json.loads(utc_isoformat_json(batch)) == iso


def test_a_big_batch_of_times_from_a_run_converts_exactly() -> None:
    batch = [time.time() for _ in range(100_000)]
    batch += [t + 0.4 for t in batch[:1000]]  # later points, some in another second
    expected = [reference(t) for t in batch]
    assert utc_datetimes(batch) == expected
    assert utc_isoformat(batch) == [t.isoformat(timespec="microseconds") for t in expected]


# --- which observer gets which shape ---------------------------------------------------------


class SacredStyle(RunObserver):
    """An observer written for Sacred: only ``log_metrics``."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        self.batches.append(metrics_by_name)


class DuckTyped:
    """A Sacred observer that does not derive from ``RunObserver`` at all."""

    priority = 0

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def log_metrics(self, metrics_by_name: dict, info: dict) -> None:
        self.batches.append(metrics_by_name)


class Columnar(RunObserver):
    """A store that takes the columns."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def log_metric_columns(self, columns: dict, info: dict) -> None:
        self.batches.append(columns)


def merged(batches: list[dict], name: str) -> dict[str, list]:
    out: dict[str, list] = {"steps": [], "values": [], "timestamps": []}
    for batch in batches:
        for key in out:
            out[key] += batch.get(name, {}).get(key, [])
    return out


def test_sacred_observers_get_datetimes_and_stores_the_columns() -> None:
    ex = Experiment("shapes", interactive=True)
    sacred, duck, columnar = SacredStyle(), DuckTyped(), Columnar()
    ex.observers += [sacred, duck, columnar]

    @ex.main
    def main(_run: Any) -> None:
        for i in range(5):
            _run.log_scalar("loss", 1.0 / (i + 1))
        _run.log_scalar("acc", 0.5, 10)

    ex.run(options={"--capture": "sys", "--beat-interval": 0})
    columns = merged(columnar.batches, "loss")
    assert columns["steps"] == [0, 1, 2, 3, 4]
    assert all(type(t) is float for t in columns["timestamps"])
    for observer in (sacred, duck):
        loss = merged(observer.batches, "loss")
        assert loss["steps"] == [0, 1, 2, 3, 4]
        assert loss["values"] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
        assert loss["timestamps"] == [reference(t) for t in columns["timestamps"]]
        assert merged(observer.batches, "acc")["steps"] == [10]
        assert all(batch["loss"]["name"] == "loss" for batch in observer.batches if batch)


def test_an_observer_without_its_own_columns_method_gets_sacreds_shape_from_it() -> None:
    sacred = SacredStyle()
    columns = {"loss": {"steps": [3], "values": [0.5], "timestamps": [1.5], "name": "loss"}}
    sacred.log_metric_columns(columns, info={})
    when = datetime.datetime(1970, 1, 1, 0, 0, 1, 500000)
    assert sacred.batches == [
        {"loss": {"steps": [3], "values": [0.5], "timestamps": [when], "name": "loss"}}
    ]
    assert sacred.batches == [columns_to_sacred(columns)]


# --- nothing lost, nothing doubled ---------------------------------------------------------------


def test_points_logged_from_threads_while_heartbeats_drain_arrive_once(tmp_path: Path) -> None:
    ex = Experiment("threads", interactive=True)
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))
    per_thread, threads = 20_000, 3

    def work(number: int, run: Any) -> None:
        for i in range(per_thread):
            step = number * per_thread + i
            run.log_scalar("shared", step * 2, step)  # value pairs with its step
            run.log_scalar(f"own{number}", float(i))
            if i % 500 == 0:
                time.sleep(0.001)  # let heartbeats come in between

    @ex.main
    def main(_run: Any) -> None:
        workers = [threading.Thread(target=work, args=(n, _run)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can: races show up
    try:
        ex.run(options={"--capture": "sys", "--beat-interval": 0.002})
    finally:
        sys.setswitchinterval(switch)
    metrics = read_run(tmp_path / "runs", "1")["metrics"]
    shared = metrics["shared"]
    assert sorted(shared["steps"]) == list(range(threads * per_thread))
    assert shared["values"] == [2 * step for step in shared["steps"]]
    for number in range(threads):
        own = metrics[f"own{number}"]
        assert own["steps"] == list(range(per_thread))
        assert own["values"] == [float(i) for i in range(per_thread)]
    batches = (tmp_path / "runs" / "1" / "metrics.jsonl").read_text().splitlines()
    assert len(batches) > 2  # heartbeats drained while the threads were logging
    sacred_file = json.loads((tmp_path / "runs" / "1" / "metrics.json").read_text())
    assert sacred_file == metrics


def test_a_store_that_fails_mid_run_and_comes_back_keeps_every_point(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs, away = tmp_path / "runs", tmp_path / "away"
    ex = Experiment("outage", interactive=True)
    ex.observers.append(FileStorageObserver(runs))

    def wait_until(done: Any) -> None:
        deadline = time.monotonic() + 30
        while not done():
            assert time.monotonic() < deadline
            time.sleep(0.005)

    def spooled_metrics() -> bool:
        return any("log_metric_columns" in p.read_text() for p in tmp_path.rglob("events.jsonl"))

    @ex.main
    def main(_run: Any) -> None:
        for i in range(1000):
            _run.log_scalar("loss", i / 10)
        wait_until(lambda: (runs / "1" / "metrics.jsonl").exists())
        (runs / "1").rename(away)  # the store's folder is gone: its writes fail
        for i in range(1000, 2000):
            _run.log_scalar("loss", i / 10)
        wait_until(spooled_metrics)
        away.rename(runs / "1")
        for i in range(2000, 3000):
            _run.log_scalar("loss", i / 10)

    ex.run(options={"--capture": "sys", "--beat-interval": 0.01})
    assert f"store {runs} failed" in caplog.text
    record = read_run(runs, "1")
    assert record["status"] == "COMPLETED"
    assert record["metrics"]["loss"]["steps"] == list(range(3000))
    assert record["metrics"]["loss"]["values"] == [i / 10 for i in range(3000)]
    assert json.loads((runs / "1" / "metrics.json").read_text()) == record["metrics"]
    assert not list((tmp_path / "spool").rglob("events.jsonl"))  # all delivered


# --- start-up ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", ["tinydb_store", "mongo_store"])
def test_loading_a_store_plugin_imports_no_database_library(plugin: str) -> None:
    code = (
        f"import sys, expkit_plugins.{plugin}\n"
        "print([m for m in ('tinydb', 'pymongo', 'gridfs', 'bson', 'mimetypes') "
        "if m in sys.modules])"
    )
    assert fresh_python("-c", code).strip() == "[]"
