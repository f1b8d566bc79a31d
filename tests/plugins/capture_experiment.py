"""An experiment run through the core: ``capture_experiment.py MODE RESULT [--fail]``.

Writes ``run.captured_out`` (or, when the run fails, the text of the last heartbeat) and
every heartbeat's text to the file RESULT as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from expkit import Experiment
from expkit.observers import RunObserver
from expkit.utils import apply_backspaces_and_linefeeds

ex = Experiment("capture_demo")
ex.captured_out_filter = apply_backspaces_and_linefeeds


class Beats(RunObserver):
    """Keeps the captured text each heartbeat carries."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self.texts.append(captured_out)


beats = Beats()
ex.observers.append(beats)


@ex.main
def main():
    print("python out")
    print("python err", file=sys.stderr)
    os.system("echo shell out")
    subprocess.run([sys.executable, "-c", "print('child out')"], check=True)
    for percent in range(0, 101, 10):
        print(f"\rprogress {percent:3d}%", end="", flush=True)
    print()
    # Wait until a heartbeat carried the output so far.
    deadline = time.monotonic() + 20
    while not any("progress 100%" in text for text in beats.texts):
        if time.monotonic() > deadline:
            raise RuntimeError("no heartbeat carried the output")
        time.sleep(0.01)
    print("last words", flush="--fail" not in sys.argv)
    if "--fail" in sys.argv:
        raise ValueError("failed on purpose")
    return 42


if __name__ == "__main__":
    mode, result_path = sys.argv[1:3]
    try:
        run = ex.run(options={"--capture": mode, "--beat-interval": "0.05"})
        text = run.captured_out
    except ValueError:
        text = beats.texts[-1]
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump({"text": text, "beats": beats.texts}, f)
