"""Live progress on a terminal: watched through a pseudo-terminal and a terminal emulator (pyte)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import run_expkit, run_in_terminal, write_project

from expkit.nodes import ExitCode
from expkit_plugins.progress import _Entry, clock, item_line, session_line

pyte = pytest.importorskip("pyte")

ROWS, COLUMNS = 24, 100
# The margins (DECSTBM) that keep the live lines out of the scrolling text.
MARGINS = re.compile(r"\x1b\[1;\d+r")

EXP = """\
import sys
import time

import expkit

@expkit.config
def cfg():
    steps = 8
    nap = 0.25
    x = 0

def exp_train(steps, nap, x, _run):
    for step in range(steps):
        print(f"line {step} of a run that prints while the display draws")
        sys.stdout.flush()
        _run.log_scalar("loss", 1 / (step + 1), total=steps)
        time.sleep(nap)
    return x
"""


def on_screen(
    args: list[str], cwd: Path, seen: Callable[[list[str]], bool]
) -> tuple[int, list[str], list[str] | None, str]:
    """Run ``expkit ARGS`` on a terminal of ROWS x COLUMNS; the exit code, the last screen,
    the first screen ``seen`` accepted, and everything written."""
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    snapshots: list[list[str]] = []

    def watch(data: bytes) -> None:
        stream.feed(data)
        shown = [line.rstrip() for line in screen.display]
        if not snapshots and seen(shown):
            snapshots.append(shown)

    code, out = run_in_terminal(*args, cwd=cwd, size=(ROWS, COLUMNS), on_output=watch, TERM="xterm")
    final = [line.rstrip() for line in screen.display]
    return code, final, snapshots[0] if snapshots else None, out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, {"exp_train.py": EXP})


def test_a_single_run_shows_a_bar_its_metrics_and_keeps_its_output_whole(project: Path) -> None:
    bar = re.compile(r"^exp_train\.py::exp_train  0:0\d  \[#+-+\]\s+\d+%.* left  loss=0\.\d+$")
    code, final, seen, raw = on_screen(
        ["run", "-u"], project, lambda screen: any(bar.match(line) for line in screen)
    )
    assert code == ExitCode.OK
    assert seen is not None, final
    assert bar.match(seen[-1]), seen  # the live line is the terminal's last row
    # The live line is gone at the end, and every line the run printed is there, whole.
    assert not any(bar.match(line) for line in final)
    printed = [line for line in final if line.startswith("line ")]
    assert printed == [f"line {i} of a run that prints while the display draws" for i in range(8)]
    # The margins are given back before the closing summary.
    reset = raw.rfind("\x1b[r")
    assert MARGINS.search(raw) and reset > 0 and "1 completed" in raw[reset:]
    assert any(re.match(r"exp_train\.py::exp_train  COMPLETED  \d\.\d\ds  result=0", ln)
               for ln in final)  # fmt: skip


def test_a_run_without_a_total_shows_its_time_and_metrics_but_no_bar(tmp_path: Path) -> None:
    untimed = EXP.replace(", total=steps", "").replace("def exp_train", "def exp_untimed")
    project = write_project(tmp_path, {"exp_untimed.py": untimed})
    live = re.compile(r"^exp_untimed\.py::exp_untimed  0:0\d  loss=0\.\d+$")
    code, final, seen, _ = on_screen(
        ["run", "-u"], project, lambda screen: any(live.match(line) for line in screen)
    )
    assert code == ExitCode.OK
    assert seen is not None, final
    assert live.match(seen[-1]), seen  # elapsed time and the latest loss, no bar, no ETA
    assert not any("[#" in line or "left" in line for line in seen)


@pytest.mark.slow
def test_workers_points_each_have_a_live_line_under_the_count(project: Path) -> None:
    def both_with_metrics(screen: list[str]) -> bool:
        live = [line for line in screen if re.match(r"  exp_train\.py::exp_train\[x=\d\]", line)]
        return len(live) == 2 and all("loss=" in line for line in live)

    code, final, seen, _ = on_screen(
        ["run", "-u", "--sweep", "x=1,2", "-o", "steps=10", "-o", "nap=0.3", "-n", "2"],
        project,
        both_with_metrics,
    )
    assert code == ExitCode.OK
    assert seen is not None, final
    assert re.match(r"\[0/2\]   0%  0:0\d", seen[-3]), seen
    assert {seen[-2].split()[0], seen[-1].split()[0]} == {
        "exp_train.py::exp_train[x=1]",
        "exp_train.py::exp_train[x=2]",
    }
    assert "2 completed" in final[-1] or any("2 completed" in line for line in final)


@pytest.mark.parametrize("flag", [["-q"], ["--capture=no"]])
def test_off_with_quiet_and_with_capture_no(project: Path, flag: list[str]) -> None:
    code, _, _, raw = on_screen(
        ["run", "-u", "-o", "steps=2", "-o", "nap=0.3", *flag], project, lambda s: False
    )
    assert code == ExitCode.OK
    assert not MARGINS.search(raw)
    assert "left" not in raw


def test_off_when_piped(project: Path) -> None:
    proc = run_expkit("run", "-u", "-o", "steps=2", "-o", "nap=0.3", cwd=project)
    assert proc.returncode == ExitCode.OK
    assert "\x1b[" not in proc.stdout and "left" not in proc.stdout


# --- the lines ---------------------------------------------------------------------------------


def test_clock() -> None:
    assert [clock(s) for s in (0, 7.9, 61, 3723)] == ["0:00", "0:07", "1:01", "1:02:03"]


def test_item_line_with_progress_and_metrics() -> None:
    entry = _Entry("exp.py::exp[C=1]", started=100.0, metrics={"loss": 0.123456, "acc": 1})
    entry.step, entry.total = 4, 10  # steps count from 0: five of ten done
    line = item_line(entry, now=110.0)
    assert line == (
        "exp.py::exp[C=1]  0:10  [##########----------]  50% 0:10 left  loss=0.1235  acc=1"
    )


def test_session_line_estimates_the_time_left() -> None:
    assert session_line(7, 21, 12.0) == "[ 7/21]  33%  0:12  ~0:24 left"
    assert session_line(0, 21, 1.0) == "[ 0/21]   0%  0:01"
