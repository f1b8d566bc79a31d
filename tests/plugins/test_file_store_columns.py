"""The file store's metric columns: a million points read without decoding a million
numbers, and never a point read otherwise than the metrics log holds it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from expkit import Experiment
from expkit.observers import FileStorageObserver
from expkit_plugins.file_store import FileStorage, read_metrics_log
from expkit_plugins.file_store import columns as file_columns
from expkit_plugins.file_store.storage import FileStoreReader

T0 = 1714564800.0


def _columns(name: str, steps: list, values: list, t: float = T0) -> dict:
    return {
        name: {"steps": steps, "values": values, "timestamps": [t + s for s in range(len(steps))]}
    }


@pytest.fixture
def storage(tmp_path: Path) -> FileStorage:
    storage = FileStorage(tmp_path / "runs")
    storage.create({"_id": None, "config": {}, "status": "RUNNING", "experiment": {}})
    return storage


def _rundir(storage: FileStorage) -> Path:
    return Path(storage.basedir) / "1"


def _covered(rundir: Path) -> list[tuple[int, int]]:
    """The byte ranges of the log that the columns file holds records of."""
    data = (rundir / "metrics.columns").read_bytes()
    size = (rundir / "metrics.jsonl").stat().st_size
    return [(h["start"], h["end"]) for h, _ in file_columns.records(data, size)]


def _as_logged(rundir: Path) -> dict:
    return read_metrics_log(rundir / "metrics.jsonl")


def test_points_read_from_the_columns_are_the_points_of_the_log(storage):
    batches = [
        _columns("loss", [0, 1, 2], [0.5, float("nan"), -float("inf")]),
        {**_columns("acc", [0, 1], [1, 2]), **_columns('größe "x"', [7], [0.25])},
        _columns("loss", [3, 4], [1, 0.5]),  # ints among floats: no record, read from the log
        _columns("loss", [5], [10**20]),  # more than 64 bits: no record
        _columns("loss", [6, 7], [-0.0, 1e308]),
    ]
    for columns in batches:
        storage.append_metrics("1", columns)
    rundir = _rundir(storage)

    lines = (rundir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    ends = [sum(map(len, lines[: i + 1])) for i in range(len(lines))]
    assert _covered(rundir) == [(0, ends[0]), (ends[0], ends[1]), (ends[3], ends[4])]
    read = storage.load_metrics("1")
    assert json.dumps(read, sort_keys=True) == json.dumps(_as_logged(rundir), sort_keys=True)
    assert [type(v) for v in read["loss"]["values"]] == [float] * 3 + [
        int,
        float,
        int,
        float,
        float,
    ]
    assert read["acc"]["values"] == [1, 2]
    assert read["loss"]["timestamps"][:2] == [
        "2024-05-01T12:00:00.000000",
        "2024-05-01T12:00:01.000000",
    ]


def test_a_reader_without_the_columns_file_gets_the_same_run(tmp_path):
    ex = Experiment("long")
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))

    @ex.main
    def main(_run: Any) -> None:
        for i in range(20_000):
            _run.log_scalar("loss", 1 / (i + 1))
            if i % 1000 == 0:
                _run.log_scalar("epoch", i // 1000)

    ex.run(options={"--capture": "no"})
    reader = FileStoreReader(tmp_path / "runs")
    fast = reader.get_run("1")
    assert _covered(tmp_path / "runs" / "1")  # the fast path was there to take
    (tmp_path / "runs" / "1" / "metrics.columns").unlink()
    assert reader.get_run("1").metrics == fast.metrics
    assert len(fast.metrics["loss"]["values"]) == 20_000
    assert fast.metrics["epoch"]["values"] == list(range(20))


def test_a_log_changed_after_the_fact_is_read_as_it_is_now(storage):
    storage.append_metrics("1", _columns("loss", [0, 1], [0.5, 0.25]))
    storage.append_metrics("1", _columns("loss", [2, 3], [0.125, 0.0625]))
    log = _rundir(storage) / "metrics.jsonl"
    log.write_bytes(log.read_bytes().replace(b"0.125", b"0.875"))  # same length, new value
    assert storage.load_metrics("1")["loss"]["values"] == [0.5, 0.25, 0.875, 0.0625]
    log.write_bytes(b'{"loss":{"steps":[9],"tim\n' + log.read_bytes())  # a damaged line before
    assert storage.load_metrics("1")["loss"]["values"] == [0.5, 0.25, 0.875, 0.0625]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:-7], id="torn"),
        pytest.param(lambda data: data + b"\x00garbage", id="garbage-after"),
        pytest.param(lambda data: b"not ours" + data[8:], id="no-magic"),
        pytest.param(lambda data: data.replace(b'"q"', b'"u"'), id="bad-kind"),
        pytest.param(lambda data: data.replace(b'"crc": ', b'"crc": "x'), id="bad-header"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_a_damaged_columns_file_costs_no_point(storage, damage):
    for step in range(3):
        storage.append_metrics("1", _columns("loss", [step], [step / 4]))
    path = _rundir(storage) / "metrics.columns"
    path.write_bytes(damage(path.read_bytes()))
    assert storage.load_metrics("1") == _as_logged(_rundir(storage))
    assert storage.load_metrics("1")["loss"]["values"] == [0.0, 0.25, 0.5]


KILLED_WHILE_LOGGING = """
import os, sys
from expkit_plugins.file_store import FileStorage
storage = FileStorage(sys.argv[1])
storage.create({"_id": None, "config": {}, "status": "RUNNING", "experiment": {}})
for beat in range(3):
    storage.append_metrics("1", {"loss": {"steps": [beat], "values": [beat / 2],
                                          "timestamps": [1714564800.0 + beat]}})
with open(os.path.join(sys.argv[1], "1", "metrics.columns"), "ab") as f:
    f.write(b"\\x10\\x00\\x00")  # the kill lands inside the next record
os.kill(os.getpid(), 9)
"""


def test_a_run_resumed_after_a_kill_goes_on_with_usable_columns(tmp_path):
    runs = tmp_path / "runs"
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_LOGGING, str(runs)], check=False)
    assert killed.returncode == -9
    storage = FileStorage(runs)
    storage.reopen("1")
    for step in (3, 4):
        storage.append_metrics("1", _columns("loss", [step], [step / 2]))
    size = os.path.getsize(runs / "1" / "metrics.jsonl")
    covered = _covered(runs / "1")
    assert covered[0][0] == 0 and covered[-1][1] == size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))  # every batch, in order
    assert storage.load_metrics("1")["loss"]["values"] == [0.0, 0.5, 1.0, 1.5, 2.0]
