"""What a run records is what happened, checked with real processes and real signals.

A SIGTERM that lands while a store writes still interrupts the run; a value expkit cannot
store ends the run FAILED with one line instead of leaving it RUNNING; the captured output
holds the run's log lines whatever the terminal shows; metrics reach the store within about
a second, so a ``kill -9`` loses at most the last second of points.
"""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import (
    EXPKIT,
    child_env,
    finish_process,
    only_run,
    run_expkit,
    run_script,
    start_process,
    wait_for_file,
    write_project,
)

from expkit import Experiment, RunObserver, TimeoutInterrupt
from expkit.nodes import ExitCode
from expkit_plugins.file_store import read_metrics_log

TIMEOUT = 60


# --- SIGTERM while a store writes -----------------------------------------------------------

# A store whose artifact_event takes long (a big upload): it says when it began writing.
SLOW_WRITE = """
import os
import signal
import time
from pathlib import Path

from expkit import Experiment, TimeoutInterrupt
from expkit.observers import RunObserver


class SlowStore(RunObserver):
    def artifact_event(self, name, filename, metadata=None, content_type=None):
        Path("writing").touch()
        time.sleep(30)


ex = Experiment("slow_write")
ex.observers.append(SlowStore())


@ex.config
def cfg():
    alarm = False


@ex.main
def main(alarm, _run):
    print("before the artifact")
    Path("model.bin").write_bytes(b"x" * 100_000)
    if alarm:  # the user's own time limit, as Sacred's docs show it

        def on_alarm(signum, frame):
            raise TimeoutInterrupt()

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
    _run.add_artifact("model.bin")
    time.sleep(30)
    return "finished"


if __name__ == "__main__":
    ex.run_commandline()
"""


def _sigterm_mid_write(tmp_path: Path, args: list[str], delay: float) -> tuple[int, str, str]:
    (tmp_path / "writing").unlink(missing_ok=True)
    proc = start_process(args, tmp_path)
    try:
        wait_for_file(tmp_path / "writing", proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
    finally:
        out, err = finish_process(proc, TIMEOUT)
    return proc.returncode, out, err


@pytest.mark.slow
def test_sigterm_while_a_store_writes_interrupts_the_run(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_slow_write.py": SLOW_WRITE})
    # The signal lands at different points of the write; every time the run is interrupted.
    for number, delay in enumerate([0.0, 0.01, 0.05, 0.2], start=1):
        store = f"store{number}"
        code, out, err = _sigterm_mid_write(tmp_path, [EXPKIT, "run", "--store", store], delay)
        assert code == ExitCode.INTERRUPTED, (delay, out, err)
        assert re.search(r"exp_slow_write\.py::slow_write  INTERRUPTED  id=1 ", out), out
        run = only_run(tmp_path / store)
        assert run["status"] == "INTERRUPTED", (delay, out, err)
        assert "before the artifact" in run["cout"]
        assert "store SlowStore failed" not in err  # an interrupt is no store failure


def test_sigterm_while_a_store_writes_interrupts_python_exp_py(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_slow_write.py": SLOW_WRITE})
    args = [sys.executable, "exp_slow_write.py", "-F", "store"]
    code, out, err = _sigterm_mid_write(tmp_path, args, 0.02)
    # As a Sacred script does, the process ends by the signal (143 in a shell) ...
    assert code == -signal.SIGTERM, (out, err)
    # ... but first the run is recorded as interrupted.
    assert only_run(tmp_path / "store")["status"] == "INTERRUPTED", err
    assert "Aborted after" in err
    assert "store SlowStore failed" not in err


def test_a_users_timeout_interrupt_while_a_store_writes_ends_the_run_timeout(
    tmp_path: Path,
) -> None:
    write_project(tmp_path, {"exp_slow_write.py": SLOW_WRITE})
    started = time.monotonic()
    done = run_expkit("run", "--store", "store", "-o", "alarm=True", cwd=tmp_path)
    assert time.monotonic() - started < 20, "the interrupt did not stop the run"
    assert done.returncode == ExitCode.RUNS_FAILED, done.stdout + done.stderr
    assert only_run(tmp_path / "store")["status"] == "TIMEOUT"
    assert "store SlowStore failed" not in done.stderr


# --- what expkit cannot store ends the run FAILED ----------------------------------------------

UNSTORABLE = """
import time

from expkit import Experiment

ex = Experiment("unstorable")


@ex.config
def cfg():
    kind = "result_big_int"


@ex.main
def main(kind, _run):
    print("computed something")
    _run.info["fine"] = 1
    _run.log_scalar("loss", 0.5)
    if kind == "result_big_int":
        return 10**5000
    if kind == "result_cycle":
        result = [1]
        result.append(result)
        return result
    if kind == "info_big_int":
        _run.info["huge"] = 10**5000
    if kind == "info_cycle":
        loop = {}
        loop["self"] = loop
        _run.info["loop"] = loop
    if kind == "info_not_a_dict":
        _run.info = 5
    if kind.startswith("info"):
        time.sleep(0.5)  # heartbeats (every 0.1 s) while the entry is there
    if kind == "metric_text":
        _run.log_scalar("loss", "low")
    if kind == "metric_big_int":
        _run.log_scalar("loss", 10**5000)
    if kind == "artifact_metadata":
        with open("model.txt", "w") as f:
            f.write("weights")
        _run.add_artifact("model.txt", metadata={"size": 10**5000})
    return 1


if __name__ == "__main__":
    ex.run_commandline()
"""

UNSTORABLE_CASES = {
    "result_big_int": "the result cannot be stored: Exceeds the limit (4300 digits)",
    "result_cycle": "the result cannot be stored: it contains itself",
    "info_big_int": "run.info['huge'] cannot be stored: Exceeds the limit (4300 digits)",
    "info_cycle": "run.info['loop'] cannot be stored: it contains itself",
    "info_not_a_dict": "run.info cannot be stored: it must be a dict, not int",
    "metric_text": "log_scalar('loss', ...): the value must be a number, not str",
    "metric_big_int": "log_scalar('loss', ...): the value must be a number, not an int of 5001",
    "artifact_metadata": "add_artifact: the metadata of 'model.txt' cannot be stored: Exceeds",
}


@pytest.mark.parametrize("kind", list(UNSTORABLE_CASES))
def test_a_value_expkit_cannot_store_ends_the_run_failed(tmp_path: Path, kind: str) -> None:
    write_project(tmp_path, {"exp_unstorable.py": UNSTORABLE}, pyproject="beat_interval = 0.1\n")
    done = run_expkit("run", "--store", "store", "-o", f"kind={kind!r}", cwd=tmp_path)
    message = UNSTORABLE_CASES[kind]
    assert done.returncode == ExitCode.RUNS_FAILED, done.stdout + done.stderr
    assert "INTERNAL ERROR" not in done.stderr and "Logging error" not in done.stderr
    # The report line says what is wrong in one line.
    line = next(li for li in done.stdout.splitlines() if li.startswith("exp_unstorable.py::"))
    assert " FAILED " in line and message in line, done.stdout
    run = only_run(tmp_path / "store")
    assert run["status"] == "FAILED"
    assert message in run["fail_trace"][-1]
    # What was recorded before is kept; the heartbeats went on, and said what is wrong once.
    assert "computed something" in run["cout"]
    if kind.startswith("info"):
        assert done.stderr.count(message) == 1, done.stderr
    if kind in ("info_big_int", "info_cycle"):
        assert run["info"][re.search(r"\['(\w+)'\]", message)[1]].startswith("<not stored: ")
    if kind != "info_not_a_dict":
        assert run["info"]["fine"] == 1
    metrics = read_metrics_log(tmp_path / "store" / run["_dir"] / "metrics.jsonl")
    assert metrics["loss"]["values"][0] == 0.5


def test_a_result_expkit_cannot_store_fails_python_exp_py_with_one_line(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_unstorable.py": UNSTORABLE})
    done = run_script("exp_unstorable.py", "-F", "store", cwd=tmp_path)
    assert done.returncode == 1
    errors = [li for li in done.stderr.splitlines() if li.startswith("ERROR:")]
    assert errors == [
        "ERROR: the result cannot be stored: Exceeds the limit (4300 digits) for integer "
        "string conversion; use sys.set_int_max_str_digits() to increase the limit"
    ], done.stderr
    assert "Traceback" not in done.stderr
    assert only_run(tmp_path / "store")["status"] == "FAILED"


# --- captured output does not depend on the terminal's verbosity --------------------------------

LOGS = """
import logging

from expkit import Experiment

ex = Experiment("logs")


@ex.main
def main(_log):
    print("printed")
    _log.info("info from the run")
    _log.debug("debug from the run")
    logging.getLogger("library").info("info from a library")
    _log.warning("a warning")
    return 3


if __name__ == "__main__":
    ex.run_commandline()
"""

LOGGED = [
    "INFO - logs - Running command 'main'",
    'INFO - logs - Started run with ID "1"',
    "printed",
    "INFO - main - info from the run",
    "INFO - library - info from a library",
    "WARNING - main - a warning",
    "INFO - logs - Result: 3",
    "INFO - logs - Completed after 0:00:00",
]


def _run_on_one_console(args: list[str], cwd: Path) -> str:
    """Run ``args`` with stdout and stderr on one pipe, unbuffered, as on a terminal; with two
    pipes the order of their lines in an fd capture is only as good as the reads."""
    done = subprocess.run(
        args,
        cwd=cwd,
        env=child_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout
    return done.stdout


@pytest.mark.parametrize("capture", ["fd", "sys"])
def test_captured_output_holds_the_log_lines_whatever_the_verbosity(
    tmp_path: Path, capture: str
) -> None:
    write_project(tmp_path, {"exp_logs.py": LOGS})
    run = [EXPKIT, "run", "--capture", capture, "--store"]
    quiet = _run_on_one_console([*run, "quiet"], tmp_path)
    verbose = _run_on_one_console([*run, "verbose", "-v"], tmp_path)
    script = [sys.executable, "exp_logs.py", "-F", "script", "-C", capture]
    _run_on_one_console(script, tmp_path)
    for store in ("quiet", "verbose", "script"):
        assert only_run(tmp_path / store)["cout"].splitlines() == LOGGED, store
    # The terminal still shows what its verbosity asks for.
    assert "info from the run" not in quiet
    assert "WARNING - main - a warning" in quiet
    assert "INFO - main - info from the run" in verbose


# --- metrics reach the store within about a second --------------------------------------------

STEADY = """
import time
from pathlib import Path

from expkit import Experiment

ex = Experiment("steady")


@ex.main
def main(_run):
    for step in range(100_000):
        _run.log_scalar("loss", 1.0 / (step + 1))
        if step == 0:
            Path("logging").touch()
        time.sleep(0.01)
"""


def test_metrics_reach_the_store_within_about_a_second_of_being_logged(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_steady.py": STEADY})
    proc = start_process([EXPKIT, "run", "--store", "store"], tmp_path)
    try:
        wait_for_file(tmp_path / "logging", proc)
        time.sleep(2.5)  # well before the first heartbeat (10 s)
        killed = time.time()
        proc.send_signal(signal.SIGKILL)
    finally:
        finish_process(proc, TIMEOUT)
    run = only_run(tmp_path / "store")
    assert run["status"] == "RUNNING"
    metrics = read_metrics_log(tmp_path / "store" / run["_dir"] / "metrics.jsonl")
    steps = metrics["loss"]["steps"]
    assert steps == list(range(len(steps)))  # every point up to the last one stored
    last = datetime.datetime.fromisoformat(metrics["loss"]["timestamps"][-1])
    age = killed - last.replace(tzinfo=datetime.timezone.utc).timestamp()
    # Flushed about once a second; the rest is the time a busy machine takes to write.
    assert age < 1.6, f"the last stored point was logged {age:.2f} s before the kill"


def test_an_interrupt_landing_in_a_stores_last_event_loses_nothing() -> None:
    # A user's time limit that fires as the run ends, while a store writes its end: the run
    # has ended, so the event is kept and given to the store again.
    class CutOnce(RunObserver):
        def __init__(self) -> None:
            self.ends: list[object] = []

        def started_event(self, **kwargs: object) -> int:
            return 1

        def completed_event(self, stop_time: object, result: object) -> None:
            if not self.ends:
                self.ends.append("cut")
                raise TimeoutInterrupt()
            self.ends.append(result)

    store = CutOnce()
    ex = Experiment("cut_once")
    ex.observers.append(store)
    ex.main(lambda: 7)
    run = ex.run(options={"--capture": "no"})
    assert run.status == "COMPLETED"
    assert store.ends == ["cut", 7]


def test_ctrl_c_before_the_heartbeat_thread_starts_still_records_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where a real Ctrl-C landed once in a hundred sweeps (CI): the heartbeat's thread made,
    # not yet started. The end of the run must still reach the store.
    import threading

    from expkit_plugins.file_store import FileStorageObserver, read_run

    start = threading.Thread.start

    def interrupted_start(thread: threading.Thread) -> None:
        if thread.name.startswith("expkit-heartbeat"):
            raise KeyboardInterrupt
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    ex = Experiment("early", interactive=True)
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))

    @ex.main
    def main() -> int:
        return 1

    with pytest.raises(KeyboardInterrupt):
        ex.run()
    assert read_run(tmp_path / "runs", "1")["status"] == "INTERRUPTED"
