"""``-n N`` and SIGTERM: the driver stops the sweep as Ctrl-C does, checked with real signals.

The workers run in sessions of their own, so a SIGTERM for the sweep reaches the driver
alone (or the driver's process group, as ``kill -TERM -PGID`` or a job scheduler sends it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import EXPKIT, child_env, stored_runs, write_project

from expkit.nodes import ExitCode

# Each point writes its process id once it runs, then works until interrupted (or released).
EXP = """\
import os
import time
from pathlib import Path

import expkit

@expkit.config
def cfg():
    x = 0

def exp_hold(x, _run):
    Path(f"pid{x}.tmp").write_text(str(os.getpid()))
    os.replace(f"pid{x}.tmp", f"pid{x}")  # whole, or not there
    deadline = time.time() + 30
    step = 0
    while time.time() < deadline and not Path("release").exists():
        print("step", step, flush=True)
        _run.log_scalar("loss", 1.0 / (step + 1))
        step += 1
        time.sleep(0.05)
    return x
"""

TIMEOUT = 20


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, {"exp_hold.py": EXP}, pyproject="beat_interval = 1\n")


def _wait_for_pids(project: Path, points: list[int], proc: subprocess.Popen) -> list[int]:
    """The process ids of the workers running ``points``, once they all run."""
    deadline = time.monotonic() + TIMEOUT
    files = [project / f"pid{x}" for x in points]
    while not all(f.exists() for f in files):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"expkit ended early ({proc.returncode}):\n{out}\n{err}")
        assert time.monotonic() < deadline, "the points never started"
        time.sleep(0.02)
    return [int(f.read_text()) for f in files]


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, ended but not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def _still_running(pids: list[int], wait: float) -> list[int]:
    """Those of ``pids`` still running after ``wait`` seconds at most."""
    deadline = time.monotonic() + wait
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _running(p)]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["driver", "process group"])
def test_sigterm_to_the_driver_interrupts_the_running_points_as_ctrl_c(
    project: Path, target: str
) -> None:
    proc = subprocess.Popen(
        [EXPKIT, "run", "--sweep", "x=1,2,3", "-n", "2"],
        cwd=project,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as `setsid expkit run ... &`
    )
    try:
        workers = _wait_for_pids(project, [1, 2], proc)
        if target == "driver":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
        # The workers are stopped with the driver, not left to run on (and to finish their
        # points as COMPLETED). A process group's forkserver dies by the signal and cannot
        # report a worker's end: the worker ends by itself a moment later.
        left = _still_running(workers, wait=5.0)
        (project / "release").touch()  # whatever still runs ends now
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        (project / "release").touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == ExitCode.INTERRUPTED, out + err
    assert left == []
    status = {r["meta"]["sweep"]["params"]["x"]: r["status"] for r in stored_runs(project / "runs")}
    assert status == {1: "INTERRUPTED", 2: "INTERRUPTED"}
    # The summary is printed, as after Ctrl-C.
    assert "interrupted: 1 experiment not run" in out
    assert "2 interrupted" in out
    assert "Traceback" not in err
