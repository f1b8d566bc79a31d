"""``--dask``: a real scheduler and worker started as processes on loopback, and LocalCluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import (
    child_env,
    error_lines,
    point_pid,
    run_expkit,
    stored_runs,
    stored_runs_so_far,
    write_project,
)

from expkit.errors import UsageError
from expkit.nodes import ExitCode, SweepPoint

pytest.importorskip("distributed")

DASK = str(Path(sys.executable).with_name("dask"))


EXP = """\
import os
import signal
from pathlib import Path

import expkit

@expkit.config
def cfg():
    x = 0

def exp_point(x, _run):
    print(f"point {x} in {os.getpid()}")
    if x == 1 and not Path("lost-once").exists():
        Path("lost-once").write_text("")
        os.kill(os.getpid(), signal.SIGKILL)  # the Dask worker process dies
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # every time
    _run.log_scalar("x2", x * x)
    return x
"""


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    # The cluster runs unmeasured: coverage traces a worker's event loop and threads so
    # slowly under CI that a Ctrl-C's round trips, grace and worker restart outlast the
    # tests' timeouts (the driver, in the test's own processes, is still measured).
    env = {k: v for k, v in child_env().items() if not k.startswith("COVERAGE_")}
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own group: teardown ends it and its children
        )  # fmt: skip


def _end(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def scheduler_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Dask scheduler and one worker (one process, one thread) on 127.0.0.1, for this file."""
    folder = tmp_path_factory.mktemp("dask")
    file = folder / "scheduler.json"
    scheduler = _start(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(file),
         "--no-dashboard"],
        folder, folder / "scheduler.log",
    )  # fmt: skip
    worker = None
    try:
        deadline = time.time() + 30
        while not file.exists() and time.time() < deadline:
            time.sleep(0.1)
        worker = _start(
            [DASK, "worker", "--scheduler-file", str(file), "--nworkers", "1", "--nthreads", "1",
             "--no-dashboard", "--local-directory", str(folder)],
            folder, folder / "worker.log",
        )  # fmt: skip
        from distributed import Client

        with Client(scheduler_file=str(file), timeout="30s") as client:
            client.wait_for_workers(1, timeout=30)
        yield file
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                _end(proc)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project", {"exp_point.py": EXP})


@pytest.mark.slow
def test_points_run_on_a_real_scheduler_and_worker(project: Path, scheduler_file: Path) -> None:
    proc = run_expkit(
        "run", "--sweep", "x=0,3,4", "--dask", str(scheduler_file), cwd=project, timeout=120
    )
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    runs = stored_runs(project / "runs")
    assert sorted(r["result"] for r in runs) == [0, 3, 4]
    assert all(r["status"] == "COMPLETED" for r in runs)
    assert {r["meta"]["dask"]["worker"].split(":")[1] for r in runs} == {"//127.0.0.1"}
    assert all(f"point {r['result']} in " in r["cout"] for r in runs)
    # The worker ran them: not this test's process, nor the driver's.
    assert {point_pid(r) for r in runs} != {str(os.getpid())}
    assert "3 completed" in proc.stdout


@pytest.mark.slow
def test_a_lost_workers_point_is_tried_once_more_and_never_stored_twice(
    project: Path, scheduler_file: Path
) -> None:
    proc = run_expkit(
        "run", "--sweep", "x=0,1,2,3", "--dask", str(scheduler_file), cwd=project, timeout=180
    )
    assert proc.returncode == ExitCode.RUNS_FAILED, proc.stdout + proc.stderr
    runs = stored_runs(project / "runs")
    by_x: dict[int, list[str]] = {}
    for run in runs:
        by_x.setdefault(run["meta"]["sweep"]["params"]["x"], []).append(run["status"])
    assert sorted(by_x[0]) == ["COMPLETED"] and sorted(by_x[3]) == ["COMPLETED"]
    # Lost once: the first try is FAILED, the second COMPLETED.
    assert sorted(by_x[1]) == ["COMPLETED", "FAILED"]
    # Lost every time: two tries, both FAILED, and no third.
    assert by_x[2] == ["FAILED", "FAILED"]
    (line,) = [line for line in proc.stdout.splitlines() if "[x=2]" in line]
    assert "FAILED" in line and "its Dask worker was lost 2 times; not tried again" in line
    for run in runs:
        if run["status"] == "FAILED":
            assert run["fail_trace"] == ["its Dask worker was lost\n"]
    # The summary counts every run stored, the lost tries too.
    (summary,) = [line for line in proc.stdout.splitlines() if line.startswith("stored ")]
    assert summary.startswith(f"stored {len(runs)} run(s) in "), summary
    assert sorted(summary.partition(": id ")[2].split(", ")) == sorted(r["_dir"] for r in runs)


HOLD = """\
import time
from pathlib import Path

def exp_hold(x=0):
    deadline = time.time() + 60
    while Path("hold").exists() and time.time() < deadline:
        time.sleep(0.05)
    return x
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_interrupts_the_point_running_on_a_worker(
    tmp_path: Path, scheduler_file: Path, signum: int
) -> None:
    project = write_project(tmp_path / "held", {"exp_hold.py": HOLD})
    (project / "hold").write_text("")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("expkit")), "run", "--sweep", "x=1,2,3",
         "--dask", str(scheduler_file)],
        cwd=project, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        if any(r["status"] == "RUNNING" for r in stored_runs_so_far(project / "runs")):
            break
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, out + err
    (run,) = stored_runs(project / "runs")  # one worker thread: one point had started
    assert run["status"] == "INTERRUPTED"
    assert "interrupted: 2 experiments not run" in out
    assert "1 interrupted" in out and "Traceback" not in err


BLOCK = """\
import os
import time
from pathlib import Path

def exp_block(x=0):
    Path(f"pid{x}.tmp").write_text(str(os.getpid()))
    os.replace(f"pid{x}.tmp", f"pid{x}")
    time.sleep(600)  # one blocking call: a KeyboardInterrupt waits behind it
    return x
"""


def _wait_for_worker(scheduler_file: Path) -> None:
    """Until the cluster has its worker again (its nanny starts a new one when it dies)."""
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
        client.wait_for_workers(1, timeout=60)


@pytest.mark.slow
def test_ctrl_c_stops_a_point_in_a_blocking_call_by_killing_its_worker(
    tmp_path: Path, scheduler_file: Path
) -> None:
    project = write_project(tmp_path / "block", {"exp_block.py": BLOCK})
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("expkit")), "run", "--sweep", "x=1,2",
         "--dask", str(scheduler_file)],
        cwd=project, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while not (project / "pid1").exists() and time.time() < deadline:
            time.sleep(0.1)
        pid = int((project / "pid1").read_text())
        time.sleep(1.0)  # the run's start reaches the driver
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    try:
        assert proc.returncode == ExitCode.INTERRUPTED, out + err
        assert "INTERNAL ERROR" not in out + err and "Traceback" not in err
        assert time.monotonic() - started < 30
        (run,) = stored_runs(project / "runs")  # one worker thread: one point had started
        assert run["status"] == "INTERRUPTED"
        assert "interrupted: 1 experiment not run" in out and "1 interrupted" in out
        # Its worker was stopped harder: the point does not sleep on.
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        _wait_for_worker(scheduler_file)


FAIL_OR_EXIT = """\
import os

def exp_fail(mode="fail"):
    print(f"{mode} in {os.getpid()}", flush=True)
    if mode == "osexit":
        os._exit(1)  # the worker process dies, and the results it held with it
    raise ValueError(mode)
"""


@pytest.mark.slow
def test_a_finished_point_is_not_run_again_when_a_later_point_loses_the_worker(
    tmp_path: Path, scheduler_file: Path
) -> None:
    project = write_project(tmp_path / "fails", {"exp_fail.py": FAIL_OR_EXIT})
    proc = run_expkit(
        "run", "--sweep", "mode=fail,osexit", "--dask", str(scheduler_file), cwd=project,
        timeout=180,
    )  # fmt: skip
    _wait_for_worker(scheduler_file)
    assert proc.returncode == ExitCode.RUNS_FAILED, proc.stdout + proc.stderr
    by_mode: dict[str, list[str]] = {}
    for run in stored_runs(project / "runs"):
        by_mode.setdefault(run["config"]["mode"], []).append(run["status"])
    assert by_mode == {"fail": ["FAILED"], "osexit": ["FAILED", "FAILED"]}
    assert "2 failed" in proc.stdout


# --- what a long-lived worker keeps between sessions -----------------------------------------

USES_UTILS = """\
import utils

def exp_k():
    return utils.K
"""


@pytest.mark.slow
def test_each_session_runs_its_own_local_modules_on_a_long_lived_worker(
    tmp_path: Path, scheduler_file: Path
) -> None:
    # One worker process runs every session: what an earlier one imported is not reused.
    a = write_project(tmp_path / "a", {"exp_k.py": USES_UTILS, "utils.py": "K = 1\n"})
    b = write_project(tmp_path / "b", {"exp_k.py": USES_UTILS, "utils.py": "K = 2\n"})

    def run_in(project: Path) -> dict:
        proc = run_expkit("run", "--dask", str(scheduler_file), cwd=project, timeout=120)
        assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
        return stored_runs(project / "runs")[-1]

    assert run_in(a)["result"] == 1
    assert run_in(b)["result"] == 2  # another project's utils.py
    (a / "utils.py").write_text("K = 3\n")  # edited between two sweeps
    run = run_in(a)
    assert run["result"] == 3
    # And the run records the utils.py that ran.
    check = run_expkit("rerun", run["_dir"], "--check", "--store", "runs", cwd=a, timeout=120)
    assert check.returncode == ExitCode.OK, check.stdout + check.stderr


@pytest.mark.slow
def test_relative_store_urls_are_the_projects_not_the_workers_folder(
    project: Path, scheduler_file: Path
) -> None:
    stores = ["sqlite:///rel.db", "file://stf", "tinydb://tdb"]
    args = [a for url in stores for a in ("--store", url)]
    proc = run_expkit(
        "run", "--sweep", "x=3,4", "--dask", str(scheduler_file), *args, cwd=project, timeout=120
    )
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert sorted(r["result"] for r in stored_runs(project / "stf")) == [3, 4]
    for url in stores:
        listed = run_expkit("runs", "list", "--store", url, "--json", cwd=project)
        assert listed.returncode == ExitCode.OK, listed.stdout + listed.stderr
        assert sorted(r["result"] for r in json.loads(listed.stdout)) == [3, 4], url
    worker_folder = scheduler_file.parent
    assert not {"rel.db", "stf", "tdb"} & {p.name for p in worker_folder.iterdir()}


@pytest.mark.slow
def test_tune_on_dask_stores_runs_beside_its_study_in_a_relative_store(
    project: Path, scheduler_file: Path
) -> None:
    proc = run_expkit(
        "tune", "exp_point.py::exp_point", "--sweep", "x=3,4", "--trials", "2",
        "--dask", str(scheduler_file), "--store", "sqlite:///rel2.db", cwd=project, timeout=180,
    )  # fmt: skip
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    listed = run_expkit("runs", "list", "--store", "sqlite:///rel2.db", "--json", cwd=project)
    assert listed.returncode == ExitCode.OK, listed.stdout + listed.stderr
    assert len(json.loads(listed.stdout)) == 2
    assert not (scheduler_file.parent / "rel2.db").exists()


@pytest.mark.slow
def test_a_local_cluster(project: Path) -> None:
    proc = run_expkit(
        "run", "--sweep", "x=4,5", "--dask", "local", "-n", "2", "-q", cwd=project, timeout=120
    )
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert sorted(r["result"] for r in stored_runs(project / "runs")) == [4, 5]


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line(project: Path) -> None:
    proc = run_expkit("run", "--dask", "tcp://127.0.0.1:1", cwd=project, timeout=60)
    assert proc.returncode == ExitCode.USAGE_ERROR
    (line,) = error_lines(proc.stderr)
    assert line.startswith("ERROR: cannot reach the Dask scheduler at tcp://127.0.0.1:1: ")


def test_n_with_a_scheduler_address_is_a_usage_error(project: Path) -> None:
    proc = run_expkit("run", "--dask", "tcp://127.0.0.1:1", "-n", "2", cwd=project)
    assert error_lines(proc.stderr) == [
        "ERROR: -n with --dask ADDRESS: the cluster has its workers; drop -n"
    ]


_GIVE = "give the scheduler's address (tcp://HOST:PORT), its scheduler file (.json) or 'local'"


@pytest.mark.parametrize(
    ("command", "address", "what"),
    [
        (("run",), "bogus://x", "unknown address scheme 'bogus'"),
        (("run",), "tcp://:notaport", "the port 'notaport' is not a number from 1 to 65535"),
        (("run",), "tcp://127.0.0.1:70000", "the port '70000' is not a number from 1 to 65535"),
        (("run",), "tcp://127.0.0.1", "no port"),
        (("run",), "nowhere.json", "no such scheduler file"),
        (
            ("tune", "exp_point.py::exp_point", "--trials", "1"),
            "bogus://x",
            "unknown address scheme 'bogus'",
        ),
    ],
)
def test_a_malformed_address_is_one_line_before_anything_runs(
    project: Path, command: tuple, address: str, what: str
) -> None:
    proc = run_expkit(*command, "--sweep", "x=3,4", "--dask", address, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert error_lines(proc.stderr) == [f"ERROR: --dask {address!r}: {what}; {_GIVE}"]
    assert not (project / "runs").exists()  # no run stored, no study made


# --- workers that do not share the folder ----------------------------------------------------


def _spec_of(project: Path, store: Path):
    from expkit.remote import SessionSpec, ShippedFile
    from expkit.utils import file_md5

    files = tuple(
        ShippedFile(p.name, file_md5(str(p)), p.read_bytes())
        for p in sorted(project.iterdir())
        if p.is_file()
    )
    return SessionSpec(("-o", "x=3"), str(project), str(project), (str(store),), files)


def test_a_worker_without_the_folder_runs_the_shipped_files(tmp_path: Path) -> None:
    from expkit.remote import PointSpec
    from expkit_plugins.dask_workers import materialize
    from expkit_plugins.workers import WorkerSession

    project = write_project(tmp_path / "driver", {"exp_point.py": EXP})
    store = tmp_path / "shared-store"
    store.mkdir()
    spec = _spec_of(project, store)
    shutil.rmtree(project)  # what a worker on another machine sees: no such folder
    root = materialize(spec)
    assert root != project and (root / "exp_point.py").read_text() == EXP
    point = PointSpec("exp_point.py", "exp_point", "exp_point.py::exp_point[x=3]",
                      {"x": 3}, SweepPoint("abc", 0, 1, {"x": 3}))  # fmt: skip
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the experiment writes files relative to where it runs
    try:
        report = WorkerSession(spec, root).run(point)
    finally:
        os.chdir(cwd)
    assert report.status == "COMPLETED" and report.result == 3, report
    (run,) = stored_runs(store)
    assert run["meta"]["sweep"]["id"] == "abc"
    assert run["experiment"]["sources"][0][0] == "exp_point.py"


def test_a_file_store_a_worker_cannot_reach_is_refused(tmp_path: Path) -> None:
    from expkit_plugins.dask_workers import _check_stores_reachable

    with pytest.raises(UsageError, match=r"is not on this worker .* a shared folder"):
        _check_stores_reachable((str(tmp_path / "nowhere" / "runs"),), "tcp://10.0.0.7:4000")
    _check_stores_reachable((str(tmp_path), "mongodb://db.example/x"), "tcp://10.0.0.7:4000")


@pytest.mark.parametrize(
    ("url", "absolute"),
    [
        ("runs", "{base}/runs"),
        ("file://stf", "file://{base}/stf"),
        ("tinydb://tdb/db.json", "tinydb://{base}/tdb/db.json"),
        ("sqlite:///rel%20x.db?timeout=5", "sqlite:///{quoted}/rel%20x.db?timeout=5"),
        ("sqlite:////abs/runs.db", "sqlite:////abs/runs.db"),
        ("file:///abs/runs", "file:///abs/runs"),
        ("mongodb://db:27017/runs", "mongodb://db:27017/runs"),
    ],
)
def test_store_urls_sent_to_workers_are_absolute(tmp_path: Path, url: str, absolute: str) -> None:
    import urllib.parse

    from expkit_plugins.workers import _absolute

    base = (tmp_path / "a b").resolve()
    quoted = urllib.parse.quote(str(base))
    assert _absolute(url, base) == absolute.format(base=base, quoted=quoted)
