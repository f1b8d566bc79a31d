"""``-n N``: long-lived local worker processes, a dead worker replaced, Ctrl-C and resuming."""

from __future__ import annotations

import datetime
import itertools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import (
    EXPKIT,
    child_env,
    error_lines,
    point_pid,
    run_expkit,
    stored_runs,
    stored_runs_so_far,
    write_project,
)

from expkit.nodes import ExitCode

EXP = """\
import os
import signal
import time
from pathlib import Path

import expkit

# Each worker imports this file once: it says so here.
with open("imports.log", "a") as log:
    log.write(f"{os.getpid()}\\n")

@expkit.config
def cfg():
    x = 0
    nap = 0.5

def exp_point(x, nap, _run):
    print(f"point {x} in {os.getpid()}")
    if x == 3 and not Path("killed-once").exists():
        Path("killed-once").write_text("")
        time.sleep(0.3)  # what it printed is out of its process: only that can be stored
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.time() + 30
    while Path(f"hold{x}").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(nap)
    _run.log_scalar("x2", x * x)
    return x
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, {"exp_point.py": EXP})


def _times(run: dict) -> tuple[datetime.datetime, datetime.datetime]:
    return (
        datetime.datetime.fromisoformat(run["start_time"]),
        datetime.datetime.fromisoformat(run["stop_time"]),
    )


@pytest.mark.slow
def test_two_workers_run_points_at_once_each_importing_the_experiment_once(
    project: Path,
) -> None:
    proc = run_expkit("run", "--sweep", "x=0,1,2,4,5,6", "-n", "2", cwd=project)
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    runs = stored_runs(project / "runs")
    assert sorted(r["result"] for r in runs) == [0, 1, 2, 4, 5, 6]
    # Two long-lived workers: two imports in all, not one per point.
    imports = (project / "imports.log").read_text().split()
    assert len(imports) == 3  # the driver's collection, and one per worker
    workers = {point_pid(r) for r in runs}
    assert len(workers) == 2 and workers <= set(imports[1:])
    # The points overlap in time: two ran at once, which is the speed-up of -n 2.
    spans = sorted(_times(r) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    # Each run's output is captured and stored as usual.
    assert all(f"point {r['result']} in " in r["cout"] for r in runs)


@pytest.mark.slow
def test_two_workers_beat_one_process_on_points_that_wait(project: Path) -> None:
    # Eight points of half a second each: serially at least 4 s of naps, on two workers 2 s.
    args = ["run", "-u", "-q", "--sweep", "x=0,1,2,4,5,6,7,8"]
    start = time.perf_counter()
    serial = run_expkit(*args, cwd=project)
    serial_seconds = time.perf_counter() - start
    start = time.perf_counter()
    parallel = run_expkit(*args, "-n", "2", cwd=project)
    parallel_seconds = time.perf_counter() - start
    assert serial.returncode == parallel.returncode == ExitCode.OK
    assert "8 completed" in parallel.stdout
    assert serial_seconds >= 4.0
    assert parallel_seconds < serial_seconds


@pytest.mark.slow
def test_a_worker_killed_by_a_signal_fails_its_point_and_is_replaced(project: Path) -> None:
    proc = run_expkit("run", "--sweep", "x=range(8)", "-o", "nap=0.3", "-n", "2", cwd=project)
    assert proc.returncode == ExitCode.RUNS_FAILED, proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "[x=3]" in line and "FAILED" in line]
    assert "died (killed by SIGKILL) running it" in line
    runs = stored_runs(project / "runs")
    status = {r["meta"]["sweep"]["params"]["x"]: r["status"] for r in runs}
    assert status == {x: "FAILED" if x == 3 else "COMPLETED" for x in range(8)}
    (failed,) = [r for r in runs if r["status"] == "FAILED"]
    assert "killed by SIGKILL" in "".join(failed["fail_trace"])
    # Stored with what it printed before it died, not what the points before it printed.
    assert re.findall(r"^point (\S+) in \d+$", failed["cout"], re.M) == ["3"], failed["cout"]
    # The dead worker was replaced: a third worker imported the file and ran points.
    assert len((project / "imports.log").read_text().split()) == 1 + 3
    assert len({point_pid(r) for r in runs if r["status"] == "COMPLETED"}) == 3
    assert "1 failed, 7 completed" in proc.stdout
    # The summary counts the failed point's run too: the store has it, marked FAILED.
    (summary,) = [line for line in proc.stdout.splitlines() if line.startswith("stored ")]
    ids = summary.partition(": id ")[2].split(", ")
    assert summary.startswith("stored 8 run(s) in ") and failed["_dir"] in ids


@pytest.mark.slow
def test_ctrl_c_interrupts_the_running_points_and_skip_completed_finishes(
    project: Path,
) -> None:
    for x in (2, 4):  # these two hang until their file goes away
        (project / f"hold{x}").write_text("")
    args = ["run", "--sweep", "x=0,1,2,4,5,6", "-o", "nap=0.05", "-n", "2"]
    proc = subprocess.Popen(
        [EXPKIT, *args], cwd=project, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 30
    while time.time() < deadline:
        running = [r for r in _runs(project) if r["status"] == "RUNNING"]
        if len(running) == 2 and len(_runs(project)) == 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, out + err
    status = {r["meta"]["sweep"]["params"]["x"]: r["status"] for r in _runs(project)}
    assert status == {0: "COMPLETED", 1: "COMPLETED", 2: "INTERRUPTED", 4: "INTERRUPTED"}
    assert "interrupted: 2 experiments not run" in out
    for x in (2, 4):
        (project / f"hold{x}").unlink()
    again = run_expkit(*args, "--skip-completed", cwd=project)
    assert again.returncode == ExitCode.OK, again.stdout + again.stderr
    assert "4 completed, 2 skipped" in again.stdout
    completed = [r for r in _runs(project) if r["status"] == "COMPLETED"]
    assert sorted(r["meta"]["sweep"]["index"] for r in completed) == list(range(6))
    assert len({r["meta"]["sweep"]["id"] for r in _runs(project)}) == 1


def _runs(project: Path) -> list[dict]:
    return stored_runs_so_far(project / "runs")


def test_n_takes_a_number_or_auto(project: Path) -> None:
    proc = run_expkit("run", "-n", "two", cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR
    assert error_lines(proc.stderr) == [
        "ERROR: -n takes a number of workers (1 or more) or 'auto', not 'two'"
    ]


def test_n_auto_runs_plain_experiments_too(project: Path) -> None:
    proc = run_expkit("run", "-o", "nap=0", "-o", "x=7", "-n", "auto", "-q", cwd=project)
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    (run,) = stored_runs(project / "runs")
    assert run["result"] == 7 and run["status"] == "COMPLETED"
    assert "meta" in run and "sweep" not in run["meta"]
    assert os.getpid() != int(point_pid(run))


ENV_EXP = """\
import os

import expkit

@expkit.config
def cfg():
    x = 0

def exp_env(x):
    return [x, os.environ.get("EXPKIT_TEST_GREETING"), os.path.basename(os.getcwd())]
"""


def test_workers_of_each_session_get_its_folder_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In one process (a notebook, a test), workers of a later session must not run with
    # what an earlier one had: its working folder, its environment.
    import expkit

    for name, greeting in (("first", "hello"), ("second", "bonjour")):
        project = write_project(tmp_path / name, {"exp_env.py": ENV_EXP})
        monkeypatch.chdir(project)
        monkeypatch.setenv("EXPKIT_TEST_GREETING", greeting)
        assert expkit.main(["run", "exp_env.py", "--sweep", "x=1,2", "-n", "2", "-q"]) == 0
        results = sorted(r["result"] for r in stored_runs(project / "runs"))
        assert results == [[1, greeting, name], [2, greeting, name]]
