"""Shared helpers for the tests of the ``expkit`` command: temporary projects and real processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The console script installed next to this interpreter: what a user types as `expkit`.
EXPKIT = str(Path(sys.executable).with_name("expkit"))

# Variables that would let the developer's environment leak into a test's plugin set.
_HOST_VARIABLES = ("EXPKIT_PLUGINS", "EXPKIT_DISABLE_PLUGIN_AUTOLOAD", "NO_COLOR", "PYTHONPATH")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for an ``expkit`` child process, with ``extra`` variables set."""
    env = {k: v for k, v in os.environ.items() if k not in _HOST_VARIABLES}
    env.update(extra)
    return env


def fresh_python(*args: str, cwd: Path | None = None, **env: str) -> str:
    """The output of ``python ARGS`` in a fresh interpreter that coverage does not measure.

    Tests of what a process imports use it: coverage, measuring a child, imports more.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=environ, check=True
    )
    return done.stdout


def write_project(root: Path, files: dict[str, str], pyproject: str | None = "") -> Path:
    """Write ``files`` (dedented) under ``root`` and a ``pyproject.toml`` pinning the root there.

    ``pyproject`` is the body of ``[tool.expkit]``; ``None`` writes no ``pyproject.toml``.
    """
    root.mkdir(parents=True, exist_ok=True)
    if pyproject is not None:
        text = "[tool.expkit]\n" + textwrap.dedent(pyproject)
        (root / "pyproject.toml").write_text(text, encoding="utf-8")
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content), encoding="utf-8")
    return root


def run_expkit(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``expkit`` console script in ``cwd`` and wait for it."""
    return subprocess.run(
        [EXPKIT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env() if env is None else env,
    )


def run_script(
    script: str | Path,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``python SCRIPT ARGS`` the way a user does and wait for it."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env() if env is None else env,
        **kwargs,
    )


def run_in_terminal(
    *args: str,
    cwd: Path,
    timeout: float = 60,
    size: tuple[int, int] | None = None,
    columns: int | None = None,
    on_output: Callable[[bytes], None] | None = None,
    **env: str,
) -> tuple[int, str]:
    """Run ``expkit`` with its standard output on a pseudo-terminal; the exit code and output.

    ``size`` is the terminal's (rows, columns), ``columns`` its width alone (24 rows); a size
    leaves ``COLUMNS`` and ``LINES`` out of the environment. ``on_output`` sees the bytes as
    they come; ``env`` adds environment variables.
    """
    master, slave = os.openpty()
    environ = child_env(**env)
    if columns is not None:
        size = (24, columns)
    if size is not None:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
        environ = {k: v for k, v in environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [EXPKIT, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env=environ,
    )
    os.close(slave)
    chunks = []
    try:
        while select.select([master], [], [], timeout)[0]:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
            if on_output is not None:
                on_output(data)
    finally:
        os.close(master)
        proc.wait(timeout=timeout)
    return proc.returncode, b"".join(chunks).decode()


def stored_runs(store: Path) -> list[dict[str, Any]]:
    """Every run of a file store, in id order: run.json with ``config``, ``info`` and ``cout``."""
    runs = []
    folders = [p for p in store.iterdir() if p.is_dir() and not p.name.startswith("_")]
    for folder in sorted(folders, key=lambda p: (len(p.name), p.name)):
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        run["config"] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        info = folder / "info.json"
        run["info"] = json.loads(info.read_text(encoding="utf-8")) if info.exists() else {}
        cout = folder / "cout.txt"
        run["cout"] = cout.read_text(encoding="utf-8") if cout.exists() else ""
        run["_dir"] = folder.name
        runs.append(run)
    return runs


def stored_runs_so_far(store: Path) -> list[dict[str, Any]]:
    """:func:`stored_runs` of a store being written to: ``[]`` while a run is half made."""
    if not store.exists():
        return []
    try:
        return stored_runs(store)
    except (FileNotFoundError, ValueError):
        return []


def only_run(store: Path) -> dict[str, Any]:
    """The one run of a file store (fails when there is not exactly one)."""
    runs = stored_runs(store)
    assert len(runs) == 1, [r["experiment"]["name"] for r in runs]
    return runs[0]


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of ``stderr``."""
    return [line for line in stderr.splitlines() if line.strip()]


@contextlib.contextmanager
def isolated_imports(root: Path) -> Iterator[None]:
    """Undo what an in-process ``expkit.main`` leaves behind: the modules imported from files
    under ``root``, sys.path entries and the root logger's level and handlers."""
    modules = set(sys.modules)
    path = list(sys.path)
    prefix = str(root.resolve())
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        for name in set(sys.modules) - modules:
            # Only the user's files: unloading a library (numpy) would break its next import.
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(prefix):
                del sys.modules[name]
        sys.path[:] = path
        root.setLevel(level)
        root.handlers[:] = handlers


def point_pid(run: dict[str, Any]) -> str:
    """The process id a test experiment printed as ``point X in PID`` (log lines around it)."""
    import re

    found = re.search(r"^point \S+ in (\d+)$", run["cout"], re.M)
    assert found, run["cout"]
    return found.group(1)


def start_expkit(*args: str, cwd: Path, until: str) -> subprocess.Popen[str]:
    """Start the real ``expkit`` in ``cwd`` and return once its output showed ``until``."""
    proc = subprocess.Popen(
        [EXPKIT, *args],
        cwd=cwd,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = ""
    while until not in line:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line or proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
    return proc


def assert_not_printed(secret: str, *outputs: str) -> None:
    """Fail when ``secret`` is in any line of ``outputs``."""
    leaks = [line for out in outputs for line in out.splitlines() if secret in line]
    assert leaks == []


def run_at_once(
    commands: list[list[str]], cwd: Path, go: Path | None = None, timeout: float = 300
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``commands`` as concurrent processes and wait for them all.

    With ``go``, the commands are expected to wait for that file: it is created once every
    process had time to start, so that their work begins at the same moment.
    """
    procs = [
        subprocess.Popen(
            command,
            cwd=cwd,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    if go is not None:
        time.sleep(1.5)  # long enough for the interpreters to start and import what they need
        go.touch()
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


# `python -c RUN_AT_GO URL GO N`: opens the store at URL, waits for the file GO, then records
# the run of worker N (config {"worker": N}, output "worker N\n", result N) and prints its id.
RUN_AT_GO = """
import datetime, os, sys, time
from expkit.pluginmanager import get_plugin_manager
from expkit.store import open_store

url, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
obs = open_store(get_plugin_manager(), url)
while not os.path.exists(go):
    time.sleep(0.002)
info = {"name": "concurrent", "base_dir": os.getcwd(), "sources": [], "dependencies": [],
        "repositories": [], "mainfile": None}
now = datetime.datetime(2024, 5, 1, 12, 0, n)
run_id = obs.started_event(info, "main", {"hostname": "h"}, now, {"worker": n}, {}, None)
obs.heartbeat_event({"n": n}, f"worker {n}\\n", now, None)
obs.completed_event(now, n)
print(run_id)
"""


def block_folder(path: Path) -> None:
    """Keep a store from making its folder at ``path`` until ``path.unlink()``.

    A link to nowhere, not a file: a file store refuses a file at once, as a usage error.
    """
    path.symlink_to(path.parent / "nowhere" / path.name)


def start_process(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``args`` started in ``cwd`` (with ``env``, else :func:`child_env`), its output piped,
    not waited for."""
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=child_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until ``path`` exists; fail with the process's output if it ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended early ({proc.returncode}):\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def finish_process(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """Wait for ``proc`` and return its output; killed if it has not ended in ``timeout``."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
