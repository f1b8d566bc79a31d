"""Output capture: each mode in a real child process, with real descriptors and pipes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expkit.errors import UsageError
from expkit.pluginmanager import PluginManager
from expkit_plugins import capture as capture_plugin

CHILD = Path(__file__).with_name("capture_child.py")


class Child:
    """A finished run of capture_child.py: what reached the console, what was captured."""

    def __init__(self, proc: subprocess.CompletedProcess, result: dict) -> None:
        self.returncode = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.result = result
        self.text = result["text"]


@pytest.fixture
def run_child(tmp_path):
    """Run a scenario of capture_child.py with its stderr separate or merged into stdout."""

    def run(mode: str, scenario: str, merged: bool = False) -> Child:
        result = tmp_path / "result.json"
        proc = subprocess.run(
            [sys.executable, str(CHILD), mode, scenario, str(result)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merged else subprocess.PIPE,
            timeout=60,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        return Child(proc, json.loads(result.read_text(encoding="utf-8")))

    return run


def _lines(text: str) -> list[str]:
    return text.splitlines()


# --- choosing a capture --------------------------------------------------------


def test_hook_returns_a_capture_for_each_mode():
    pm = PluginManager()
    pm.register(capture_plugin)
    assert isinstance(pm.hook.expkit_make_capture(run=None, mode="fd"), capture_plugin.FdCapture)
    assert isinstance(pm.hook.expkit_make_capture(run=None, mode="sys"), capture_plugin.SysCapture)
    assert isinstance(pm.hook.expkit_make_capture(run=None, mode="no"), capture_plugin.NoCapture)


def test_unknown_mode_is_a_usage_error_listing_the_modes():
    with pytest.raises(UsageError, match=r"unknown capture mode 'tee'; choose one of: fd, sys, no"):
        capture_plugin.expkit_make_capture(mode="tee")


def test_another_plugin_may_handle_more_modes():
    class TeeMode:
        @capture_plugin.hookimpl
        def expkit_make_capture(self, mode):
            return "custom" if mode == "tee" else None

    pm = PluginManager()
    pm.register(TeeMode())
    pm.register(capture_plugin)
    assert pm.hook.expkit_make_capture(run=None, mode="tee") == "custom"
    assert isinstance(pm.hook.expkit_make_capture(run=None, mode="no"), capture_plugin.NoCapture)


# --- fd ------------------------------------------------------------------------


def test_fd_captures_python_c_shell_and_child_output(run_child):
    child = run_child("fd", "basic")
    assert child.returncode == 0, child.err
    for line in ["python out", "python err", "c-level out", "c-level err", "shell out"]:
        assert line in _lines(child.text)
    assert "child out" in _lines(child.text)
    assert child.text.endswith("no newline at the end")
    assert child.result["stdout_restored"]
    # The console still got every stream where it was sent.
    assert _lines(child.out) == [
        "python out",
        "c-level out",
        "shell out",
        "child out",
        "no newline at the end",
    ]
    assert _lines(child.err) == ["python err", "c-level err"]


def test_fd_keeps_the_order_of_stdout_and_stderr_going_to_one_place(run_child):
    child = run_child("fd", "interleaved", merged=True)
    expected = "".join(f"line {i}\n" for i in range(300))
    assert child.text == expected
    assert child.out == expected


def test_fd_reads_return_only_new_text_and_nothing_after_stop(run_child):
    child = run_child("fd", "reads")
    assert child.result["first"] == "one\n"
    assert child.text == "two\n"
    assert child.result["third"] == ""
    assert _lines(child.out) == ["one", "two", "after stop", "after stop, fd"]


def test_fd_decodes_split_characters_and_replaces_bad_bytes(run_child):
    child = run_child("fd", "bytes")
    assert child.text == "é€😀\nbad \ufffd byte\ncut \ufffd"
    # The console gets the bytes as they were written.
    assert child.out.encode("utf-8", "replace").startswith("é€😀\n".encode())


def test_fd_output_right_before_an_exception_is_kept(run_child):
    child = run_child("fd", "exception")
    assert child.returncode == 1
    assert sorted(_lines(child.text)) == ["last c words", "last words"]
    assert "RuntimeError: boom" in child.err


def test_fd_stop_does_not_wait_for_a_child_holding_the_pipe(run_child):
    child = run_child("fd", "linger")
    assert child.returncode == 0, child.err
    assert sorted(_lines(child.text)) == ["child up", "parent out"]
    assert child.result["took"] < 10


def test_fd_keeps_capturing_when_the_console_is_gone(tmp_path):
    result = tmp_path / "result.json"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "fd", "interleaved", str(result)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    proc.stdout.close()  # nobody reads the console any more
    assert proc.wait(timeout=60) == 0
    text = json.loads(result.read_text(encoding="utf-8"))["text"]
    assert sorted(_lines(text)) == sorted(f"line {i}" for i in range(300))


def test_fd_capture_with_closed_descriptors(tmp_path):
    script = (
        "import os, sys\n"
        "from expkit_plugins.capture import FdCapture\n"
        "out = os.dup(1)\n"
        "os.close(1)\n"
        "cap = FdCapture()\n"
        "cap.start()\n"
        "os.write(1, b'into the pipe\\n')\n"
        "cap.stop()\n"
        "closed = False\n"
        "try:\n"
        "    os.fstat(1)\n"
        "except OSError:\n"
        "    closed = True\n"
        "os.write(out, repr((cap.read(), closed)).encode())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout == repr(("into the pipe\n", True)), proc.stderr


def _python(script: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter that has PYTHONUNBUFFERED set."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-c", script, *args], env=env, text=True, timeout=60, **kwargs
    )


def test_fd_keeps_many_tiny_unbuffered_writes_whole_and_in_order(tmp_path):
    # Unbuffered, each print is several writes of a few bytes: every one of them must be
    # captured and echoed, in order, also while heartbeats read the capture meanwhile.
    script = (
        "import json, sys\n"
        "from expkit_plugins.capture import FdCapture\n"
        "cap = FdCapture()\n"
        "cap.start()\n"
        "text = ''\n"
        "for i in range(20000):\n"
        "    print('line', i, file=sys.stderr if i % 7 == 0 else sys.stdout)\n"
        "    if i % 1000 == 0:\n"
        "        text += cap.read()\n"
        "cap.stop()\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    json.dump(text + cap.read(), f)\n"
    )
    result = tmp_path / "text.json"
    proc = _python(script, str(result), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    expected = "".join(f"line {i}\n" for i in range(20000))
    assert proc.stdout == expected
    assert json.loads(result.read_text()) == expected


def test_fd_reads_get_all_output_in_order_and_partial_lines_too():
    script = (
        "import os, time\n"
        "from expkit_plugins.capture import FdCapture\n"
        "def read_until(cap, text):\n"
        "    seen, deadline = '', time.monotonic() + 5\n"
        "    while seen != text and time.monotonic() < deadline:\n"
        "        seen += cap.read()\n"
        "        time.sleep(0.005)\n"
        "    return seen\n"
        "cap = FdCapture()\n"
        "cap.start()\n"
        "os.write(1, b'one\\n')\n"
        "first = read_until(cap, 'one\\n')\n"
        "print('two', end='')\n"
        "second = read_until(cap, 'two')\n"
        "cap.stop()\n"
        "os.write(1, repr((first, second, cap.read())).encode())\n"
    )
    proc = _python(script, capture_output=True)
    assert proc.stdout == "one\ntwo" + repr(("one\n", "two", "")), proc.stderr


def test_a_blocked_console_does_not_hold_up_reads(tmp_path):
    # The console is a pipe nobody reads: once full, forwarding to it blocks.
    script = (
        "import os, sys, time\n"
        "from expkit_plugins.capture import FdCapture\n"
        "report = os.dup(2)\n"
        "cap = FdCapture()\n"
        "cap.start()\n"
        "os.write(1, b'x' * 100_000 + b'\\n')\n"  # more than the console pipe holds
        "time.sleep(0.5)\n"
        "start = time.monotonic()\n"
        "text = cap.read()\n"
        "print('to stderr', file=sys.stderr)\n"
        "time.sleep(0.5)\n"
        "os.write(report, repr((len(text), time.monotonic() - start < 2)).encode())\n"
        "os._exit(0)\n"  # the capture cannot stop while its console is blocked
    )
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=20,
            cwd=tmp_path,
        )
    finally:
        os.close(read_end)
        os.close(write_end)
    # The heartbeat's read returned at once with the text, and stderr still got through.
    assert proc.stderr == "to stderr\n" + repr((100_001, True))


LAST_WORDS = """\
import os
import signal
import time

from expkit import Experiment

ex = Experiment("last_words")


@ex.config
def cfg():
    end = "sigterm"


@ex.main
def main(end):
    for i in range(3000):
        print("line", i)
    print("last words")
    if end == "crash":
        raise RuntimeError("crashed on purpose")
    os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stops a job
    time.sleep(30)


if __name__ == "__main__":
    ex.run_commandline()
"""


@pytest.mark.parametrize("end", ["crash", "sigterm"])
def test_output_printed_right_before_the_end_reaches_cout_txt(tmp_path, end):
    (tmp_path / "exp_last.py").write_text(LAST_WORDS)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "exp_last.py", "-F", "store", "-C", "fd", "with", f"end={end}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    expected = "".join(f"line {i}\n" for i in range(3000)) + "last words\n"
    assert proc.stdout == expected
    cout = (tmp_path / "store" / "1" / "cout.txt").read_text()
    # The log lines on stderr come through a pipe of their own: their place among the
    # printed lines is only as good as the reads, so they are left out here.
    printed = [line for line in cout.splitlines() if " - last_words - " not in line]
    assert printed == expected.splitlines()
    status = json.loads((tmp_path / "store" / "1" / "run.json").read_text())["status"]
    assert status == ("FAILED" if end == "crash" else "INTERRUPTED")


LIVE_ECHO = """\
import os
import time

from expkit import Experiment

ex = Experiment("live_echo")


@ex.main
def main():
    print("early", flush=True)
    # Go on only once the console has shown it: the test creates "go" when it sees it.
    deadline = time.monotonic() + 30
    while not os.path.exists("go"):
        if time.monotonic() > deadline:
            raise RuntimeError("the console never showed the first line")
        time.sleep(0.01)
    print("late")


if __name__ == "__main__":
    ex.run_commandline()
"""


def test_fd_echoes_to_the_console_while_the_run_goes_on(tmp_path):
    (tmp_path / "exp_live.py").write_text(LIVE_ECHO)
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "exp_live.py", "-u", "-C", "fd"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            first = proc.stdout.readline()
            (tmp_path / "go").touch()
            rest = proc.stdout.read()
            returncode = proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    assert returncode == 0, (tmp_path / "err.txt").read_text()
    assert (first, rest) == ("early\n", "late\n")


def _wait_for(path: Path, text: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if text in json.loads(path.read_text(encoding="utf-8"))["text"]:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never reached {path}")


@pytest.mark.parametrize("mode", ["fd", "sys"])
@pytest.mark.parametrize("handled", [False, True], ids=["killed", "handled"])
def test_sigterm_keeps_the_output_already_read(tmp_path, mode, handled):
    result = tmp_path / "result.json"
    argv = [sys.executable, str(CHILD), mode, "heartbeat", str(result)]
    proc = subprocess.Popen(
        [*argv, "--handle-sigterm"] if handled else argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(result, "beat 3\n")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    text = json.loads(result.read_text(encoding="utf-8"))["text"]
    assert _lines(text)[:4] == ["beat 0", "beat 1", "beat 2", "beat 3"]
    # Whatever was captured also reached the console, in the same order.
    assert out.startswith(text)
    if handled:
        assert proc.returncode == 0
        assert text.endswith("interrupted\n")
    else:
        assert proc.returncode == -signal.SIGTERM


# --- sys -----------------------------------------------------------------------


def test_sys_captures_python_output_only(run_child):
    child = run_child("sys", "basic")
    assert child.returncode == 0, child.err
    assert _lines(child.text) == ["python out", "python err", "no newline at the end"]
    assert child.result["stdout_restored"]
    assert _lines(child.out) == [
        "python out",
        "c-level out",
        "shell out",
        "child out",
        "no newline at the end",
    ]
    assert _lines(child.err) == ["python err", "c-level err"]


def test_sys_restores_the_streams_the_run_replaced(run_child):
    child = run_child("sys", "replaced")
    assert child.result["restored"]
    assert child.text == "before\n"
    assert _lines(child.out) == ["before", "after"]


def test_sys_reads_return_only_new_text_and_nothing_after_stop(run_child):
    child = run_child("sys", "reads")
    assert child.result["first"] == "one\n"
    assert child.text == "two\n"
    assert child.result["third"] == ""


def test_sys_output_right_before_an_exception_is_kept(run_child):
    child = run_child("sys", "exception")
    assert child.returncode == 1
    assert child.text == "last words\n"
    assert "last c words" in child.err


def test_sys_tee_after_stop_writes_to_the_console_only(capsys):
    capture = capture_plugin.SysCapture()
    capture.start()
    kept = sys.stdout  # as a logging handler made during the run would keep it
    print("during")
    capture.stop()
    kept.write("later\n")
    assert capture.read() == "during\n"
    assert capsys.readouterr().out == "during\nlater\n"


def test_sys_tee_behaves_like_the_stream(capsys):
    original = sys.stdout
    capture = capture_plugin.SysCapture()
    capture.start()
    try:
        assert sys.stdout is not original
        sys.stdout.writelines(["a\n", "b\n"])
        assert sys.stdout.write("c") == 1
        sys.stdout.flush()
        assert sys.stdout.encoding == original.encoding
        assert sys.stdout.isatty() == original.isatty()
        with pytest.raises(TypeError, match="must be str, not bytes"):
            sys.stdout.write(b"x")
    finally:
        capture.stop()
    assert capture.read() == "a\nb\nc"


# --- no ------------------------------------------------------------------------


def test_no_captures_nothing(run_child):
    child = run_child("no", "basic")
    assert child.text == ""
    assert "python out" in _lines(child.out)


def test_captures_can_be_started_and_stopped_twice(capsys):
    original = sys.stdout
    for capture in (capture_plugin.SysCapture(), capture_plugin.NoCapture()):
        capture.start()
        capture.start()
        print("once")
        capture.stop()
        capture.stop()
        assert sys.stdout is original
    assert capsys.readouterr().out == "once\nonce\n"


def test_fd_capture_inside_pytest_capfd(capfd):
    capture = capture_plugin.FdCapture()
    capture.start()
    os.write(1, b"to fd 1\n")
    os.write(2, b"to fd 2\n")
    capture.stop()
    capture.stop()
    assert sorted(_lines(capture.read())) == ["to fd 1", "to fd 2"]
    seen = capfd.readouterr()
    assert (seen.out, seen.err) == ("to fd 1\n", "to fd 2\n")


# --- through the core: ex.run(options={"--capture": ...}) ------------------------

EXPERIMENT = Path(__file__).with_name("capture_experiment.py")


@pytest.fixture
def run_experiment(tmp_path):
    """Run capture_experiment.py in a process of its own; return what it recorded."""

    def run(mode: str, *flags: str) -> dict:
        result = tmp_path / "result.json"
        proc = subprocess.run(
            [sys.executable, str(EXPERIMENT), mode, str(result), *flags],
            capture_output=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        recorded = json.loads(result.read_text(encoding="utf-8"))
        recorded["console"] = proc.stdout.decode()  # as bytes: "\r" must stay "\r"
        return recorded

    return run


def test_run_captures_fd_output_with_the_filter_applied(run_experiment):
    recorded = run_experiment("fd")
    lines = _lines(recorded["text"])
    for line in ["python out", "python err", "shell out", "child out", "progress 100%"]:
        assert line in lines
    assert any(line.startswith("INFO - capture_demo - Completed after") for line in lines)
    assert "\r" not in recorded["text"]
    assert "progress  50%" not in recorded["text"]
    # The console still saw everything, progress bar included.
    assert "\rprogress  50%" in recorded["console"]
    # Heartbeats carried the complete lines, each extending the one before.
    beats = recorded["beats"]
    assert any("progress 100%\n" in text for text in beats[:-1])
    assert all(b.startswith(a) for a, b in itertools.pairwise(beats))
    assert beats[-1] == recorded["text"]


def test_run_captures_sys_output_without_c_level_output(run_experiment):
    recorded = run_experiment("sys")
    lines = _lines(recorded["text"])
    assert "python out" in lines
    assert "python err" in lines
    assert "progress 100%" in lines
    assert "shell out" not in lines
    assert "child out" not in lines
    assert "shell out" in _lines(recorded["console"])


@pytest.mark.parametrize("mode", ["fd", "sys"])
def test_failed_run_keeps_the_output_printed_right_before_the_error(run_experiment, mode):
    recorded = run_experiment(mode, "--fail")
    assert "last words" in _lines(recorded["text"])


def test_run_in_process_with_sys_capture(capsys):
    from expkit import Experiment

    ex = Experiment("in_process")

    @ex.main
    def main():
        print("hello from main")
        return 1

    run = ex.run(options={"--capture": "sys"})
    assert "hello from main" in _lines(run.captured_out)
    assert "hello from main" in capsys.readouterr().out
    run = ex.run(options={"--capture": "no"})
    assert run.captured_out == ""


# --- captures of overlapping runs stop in any order ----------------------------------


def _where(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _read_until(capture, lines: set[str]) -> str:
    """Read ``capture`` until it has given all of ``lines``, in any order (10 s at most)."""
    seen = ""
    deadline = time.monotonic() + 10
    while not lines <= set(_lines(seen)) and time.monotonic() < deadline:
        seen += capture.read()
        time.sleep(0.005)
    return seen


def test_fd_captures_stopping_out_of_order_put_the_descriptors_back(capfd):
    before = {fd: _where(fd) for fd in (1, 2)}
    first, second = capture_plugin.FdCapture(), capture_plugin.FdCapture()
    first.start()
    os.write(1, b"first only\n")
    second.start()
    os.write(1, b"both\n")
    os.write(2, b"both, err\n")
    # The second capture forwards into the first one's pipe: let it have done so.
    seen_second = _read_until(second, {"both", "both, err"})
    first.stop()  # while the second is still on
    os.write(1, b"second only\n")
    second.stop()
    os.write(1, b"neither\n")
    assert {fd: _where(fd) for fd in (1, 2)} == before
    # Lines from two pipes keep their order within each pipe only.
    assert sorted(_lines(first.read())) == ["both", "both, err", "first only"]
    assert sorted(_lines(seen_second + second.read())) == ["both", "both, err", "second only"]
    seen = capfd.readouterr()
    assert seen.out == "first only\nboth\nsecond only\nneither\n"
    assert seen.err == "both, err\n"


def test_sys_captures_stopping_out_of_order_put_the_streams_back(capsys):
    original = sys.stdout, sys.stderr
    first, second = capture_plugin.SysCapture(), capture_plugin.SysCapture()
    first.start()
    print("first only")
    second.start()
    print("both")
    first.stop()  # while the second is still on
    print("second only")
    second.stop()
    print("neither")
    assert (sys.stdout, sys.stderr) == original
    assert first.read() == "first only\nboth\n"
    assert second.read() == "both\nsecond only\n"
    assert capsys.readouterr().out == "first only\nboth\nsecond only\nneither\n"


def test_fd_mode_also_captures_python_streams_that_are_not_descriptors() -> None:
    # Under pytest (as in a notebook) sys.stdout writes to no file descriptor; fd mode must
    # still see what Python code prints, as well as what child processes write.
    from expkit import Experiment

    ex = Experiment("fd_in_process", interactive=True)

    @ex.main
    def main():
        print("from python")
        os.system("echo from a child")

    run = ex.run(options={"--capture": "fd", "--unobserved": True})
    assert "from python" in run.captured_out
    assert "from a child" in run.captured_out
