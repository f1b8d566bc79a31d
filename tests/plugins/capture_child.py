"""Run an output capture in a process of its own: ``capture_child.py MODE SCENARIO RESULT``.

The captured text is written to the file RESULT as JSON (``{"text": ...}``), so the
process's own stdout and stderr show what reached the console.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

from expkit_plugins.capture import expkit_make_capture


def _save(path: str, text: str, **extra: object) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"text": text, **extra}, f)
    os.replace(path + ".tmp", path)


def basic(capture, result: str) -> None:
    """Python, C-level, shell and child-process output, on both streams."""
    capture.start()
    print("python out")
    print("python err", file=sys.stderr)
    sys.stdout.flush()
    os.write(1, b"c-level out\n")
    os.write(2, b"c-level err\n")
    os.system("echo shell out")
    subprocess.run([sys.executable, "-c", "print('child out')"], check=True)
    print("no newline at the end", end="")
    capture.stop()
    _save(result, capture.read(), stdout_restored=sys.stdout is sys.__stdout__)


def interleaved(capture, result: str) -> None:
    """Alternate writes to descriptors 1 and 2."""
    capture.start()
    for i in range(300):
        os.write(1 + i % 2, f"line {i}\n".encode())
    capture.stop()
    _save(result, capture.read())


def replaced(capture, result: str) -> None:
    """The experiment replaces sys.stdout and sys.stderr and never puts them back."""
    capture.start()
    print("before")
    sys.stdout = io.StringIO()
    sys.stderr = io.StringIO()
    capture.stop()
    restored = sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__
    print("after")
    _save(result, capture.read(), restored=restored)


def reads(capture, result: str) -> None:
    """Reads return only what is new; nothing is captured after stop."""
    capture.start()
    print("one", flush=True)
    deadline = time.monotonic() + 10
    first = ""
    while "one\n" not in first and time.monotonic() < deadline:
        first += capture.read()
        time.sleep(0.01)
    print("two")
    capture.stop()
    second = capture.read()
    print("after stop", flush=True)
    os.write(1, b"after stop, fd\n")
    _save(result, second, first=first, third=capture.read())


def bytes_(capture, result: str) -> None:
    """Multi-byte characters split across writes, invalid bytes and a truncated character."""
    capture.start()
    for byte in "é€😀\n".encode():
        os.write(1, bytes([byte]))
        time.sleep(0.002)
    os.write(1, b"bad \xff byte\n")
    os.write(1, "cut €".encode()[:-1])
    capture.stop()
    _save(result, capture.read())


def exception(capture, result: str) -> None:
    """Output printed right before an exception is still there after stop."""
    capture.start()
    try:
        print("last words")
        os.write(2, b"last c words\n")
        raise RuntimeError("boom")
    finally:
        capture.stop()
        _save(result, capture.read())


def linger(capture, result: str) -> None:
    """A child process keeps the pipe open past stop; stop must not wait for it."""
    capture.start()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('child up', flush=True); time.sleep(30)"]
    )
    print("parent out", flush=True)
    time.sleep(0.5)
    started = time.monotonic()
    capture.stop()
    took = time.monotonic() - started
    child.kill()
    child.wait()
    _save(result, capture.read(), took=took)


def heartbeat(capture, result: str) -> None:
    """Read and store like a heartbeat until killed; SIGTERM may be turned into an exception."""
    if "--handle-sigterm" in sys.argv:

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
    capture.start()
    text = ""
    try:
        for i in range(100_000):
            print(f"beat {i}", flush=True)
            time.sleep(0.01)
            text += capture.read()
            _save(result, text)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        capture.stop()
        _save(result, text + capture.read())


SCENARIOS = {
    "basic": basic,
    "interleaved": interleaved,
    "replaced": replaced,
    "reads": reads,
    "bytes": bytes_,
    "exception": exception,
    "linger": linger,
    "heartbeat": heartbeat,
}

if __name__ == "__main__":
    mode, scenario, result_path = sys.argv[1:4]
    SCENARIOS[scenario](expkit_make_capture(mode=mode), result_path)
