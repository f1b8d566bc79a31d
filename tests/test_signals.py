"""A Ctrl-C or SIGTERM while a run's start or end is recorded waits until it is recorded.

Checked with real processes and real signals: the stores hear how the run ended, and
``expkit run`` exits 2, instead of the run being left RUNNING in a store.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from cli_helpers import (
    EXPKIT,
    finish_process,
    only_run,
    run_script,
    start_process,
    wait_for_file,
    write_project,
)

from expkit.nodes import ExitCode

TIMEOUT = 30

# SlowEnd, told first, records a run's end slowly (a remote database, a big upload): it says
# when it begins, and takes until the test has sent its signal.
SLOW_END = """
import time
from pathlib import Path

from expkit import Experiment
from expkit.observers import RunObserver


class SlowEnd(RunObserver):
    priority = 10  # before the --store given: a signal cut short, that one never hears

    def completed_event(self, stop_time, result):
        self._slowly()

    def interrupted_event(self, interrupt_time, status):
        self._slowly()

    def _slowly(self):
        Path("ending").touch()
        deadline = time.time() + 10
        while not Path("sent").exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # for the signal just sent to land here


ex = Experiment("slow_end")
ex.observers.append(SlowEnd())


@ex.config
def cfg():
    wait = True


@ex.main
def main(wait):
    print("working")
    if wait:  # until interrupted
        Path("running").touch()
        time.sleep(30)
    return "done"
"""


def signal_at_the_end(
    tmp_path: Path, args: list[str], first: signal.Signals | None, second: signal.Signals
) -> tuple[int, str, str]:
    """Run ``expkit ARGS``; send ``first`` while it runs, ``second`` while its end is recorded."""
    write_project(tmp_path, {"exp_slow_end.py": SLOW_END})
    proc = start_process([EXPKIT, "run", "--store", "store", *args], tmp_path)
    try:
        if first is not None:
            wait_for_file(tmp_path / "running", proc)
            proc.send_signal(first)
        wait_for_file(tmp_path / "ending", proc)
        proc.send_signal(second)
        (tmp_path / "sent").touch()
    finally:
        out, err = finish_process(proc, TIMEOUT)
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGINT, signal.SIGINT),
        (signal.SIGTERM, signal.SIGINT),
        (signal.SIGINT, signal.SIGTERM),
    ],
    ids=["ctrl-c-twice", "sigterm-then-ctrl-c", "ctrl-c-then-sigterm"],
)
def test_a_second_signal_while_an_interrupted_run_is_recorded_waits_for_it(
    tmp_path: Path, first: signal.Signals, second: signal.Signals
) -> None:
    code, out, err = signal_at_the_end(tmp_path, [], first, second)
    assert code == ExitCode.INTERRUPTED, out + err
    assert only_run(tmp_path / "store")["status"] == "INTERRUPTED", out + err
    assert re.search(r"^exp_slow_end\.py::slow_end  INTERRUPTED  id=1 ", out, re.M), out
    assert "stored 1 run(s) in store" in out
    assert "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_while_a_completed_run_is_recorded_keeps_it_completed_and_stops(
    tmp_path: Path,
) -> None:
    code, out, err = signal_at_the_end(tmp_path, ["-o", "wait=False"], None, signal.SIGINT)
    assert code == ExitCode.INTERRUPTED, out + err
    run = only_run(tmp_path / "store")
    assert (run["status"], run["result"]) == ("COMPLETED", "done"), out + err
    assert "Traceback" not in err


# SlowStart, told first, records a run's start slowly; the --store given hears of it after.
SLOW_START = """
import time
from pathlib import Path

from expkit import Experiment
from expkit.observers import RunObserver


class SlowStart(RunObserver):
    priority = 10

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        Path("starting").touch()
        deadline = time.time() + 10
        while not Path("sent").exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # for the signal just sent to land here
        return _id


ex = Experiment("slow_start")
ex.observers.append(SlowStart())


@ex.main
def main():
    Path("ran").touch()
    return "done"
"""


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_a_runs_start_is_recorded_waits_for_it(
    tmp_path: Path, sent: signal.Signals
) -> None:
    # Raised inside the first store's start, the signal kept the next store from hearing
    # of the run at all: its end reached a store that had no run.
    write_project(tmp_path, {"exp_slow_start.py": SLOW_START})
    proc = start_process([EXPKIT, "run", "--store", "store"], tmp_path)
    try:
        wait_for_file(tmp_path / "starting", proc)
        proc.send_signal(sent)
        (tmp_path / "sent").touch()
    finally:
        out, err = finish_process(proc, TIMEOUT)
    assert proc.returncode == ExitCode.INTERRUPTED, out + err
    assert only_run(tmp_path / "store")["status"] == "INTERRUPTED", out + err
    assert "stored 1 run(s) in store" in out, out + err
    assert not (tmp_path / "ran").exists()  # the run stopped before its main function


FORKS = """
import multiprocessing
import time

from expkit import Experiment

ex = Experiment("forks")

@ex.automain
def main():
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    child.start()
    child.terminate()  # SIGTERM, as a pool ends its workers
    child.join(10)
    return child.exitcode
"""


def test_a_child_the_run_forks_ends_on_sigterm_as_without_expkit(tmp_path: Path) -> None:
    # The run's SIGTERM handler is inherited by the fork: it must not raise there.
    (tmp_path / "exp_forks.py").write_text(FORKS)
    done = run_script("exp_forks.py", "-u", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"Result: {-signal.SIGTERM}" in done.stderr
