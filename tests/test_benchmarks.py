"""The benchmark suite keeps running: its quick mode end to end (speed is not judged here)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
WORKLOADS = {"P1-noop", "P1-import", "P2", "P3-time", "P3-memory", "P4", "P5-file", "P6-extra"}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sacred") is None, reason="needs sacred==0.8.7")
def test_quick_run_measures_every_workload(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["mode"] == "quick"
    assert report["failures"] == []
    rows = {row["id"]: row for row in report["rows"]}
    assert rows.keys() >= WORKLOADS
    for ident in WORKLOADS:
        assert isinstance(rows[ident]["expkit"], float), rows[ident]
        assert isinstance(rows[ident]["sacred"], float), rows[ident]
    assert rows["P6-complete"]["expkit"].startswith("yes")
    table = (tmp_path / "results.md").read_text()
    assert "| P1 `python exp_noop.py` |" in table
    assert "- machine: " in table


def test_without_sacred_it_says_so_and_exits_2() -> None:
    # -S leaves site-packages off the path, so sacred cannot be found.
    done = subprocess.run(
        [sys.executable, "-S", str(RUN), "--quick"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout.strip().splitlines() == [
        "benchmarks: sacred is not importable; install it with `pip install sacred==0.8.7`"
    ]


BENCH_SQL = RUN.with_name("bench_sql.py")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("sqlalchemy") is None, reason="needs expkit[sql]")
def test_sql_quick_run_measures_expkit_and_names_missing_peers(tmp_path: Path) -> None:
    # Out of coverage's reach: the benchmark's children import a copy of the sources that it
    # deletes at the end, which `coverage report` would then fail to find.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    done = subprocess.run(
        [sys.executable, str(BENCH_SQL), "--quick", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results_sql.json").read_text())
    assert (report["mode"], report["failures"]) == ("quick", [])
    rows = {row["id"]: row for row in report["rows"]}
    assert rows.keys() == {"S1", "S2", "M1", "M1-rate", "L1", "L2", "L2-all", "L2-filter"}
    for ident in ("S1", "S2", "M1", "L1", "L2", "L2-all", "L2-filter"):
        assert isinstance(rows[ident]["expkit"], float), rows[ident]
    peers = {"S1": "sacred", "S2": "sacred", "M1": "mlflow", "L1": "mlflow"}
    for ident, peer in peers.items():
        installed = importlib.util.find_spec(peer) is not None
        assert isinstance(rows[ident]["sacred"], float if installed else str), rows[ident]
    assert (
        "| L2 `expkit runs list` over 1,000 runs in SQLite (the table of the newest 200) |"
        in (tmp_path / "results_sql.md").read_text()
    )
