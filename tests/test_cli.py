"""The ``expkit`` command as a user runs it: exit codes, usage mistakes, in-process ``main``."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import (
    EXPKIT,
    child_env,
    error_lines,
    isolated_imports,
    only_run,
    run_expkit,
    write_project,
)

import expkit
from expkit.nodes import ExitCode
from expkit.pluginmanager import hookimpl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TWO = {
    "exp_two.py": """\
        import expkit

        @expkit.config
        def cfg():
            C = 1.0  # regularisation strength
            gamma = 0.7

        def exp_ok(C, gamma):
            return C * 10

        def exp_other(gamma):
            return gamma
        """
}

FAILING = {
    "exp_fail.py": """\
        def exp_good():
            return 1

        def exp_bad():
            raise ValueError("the data is wrong")
        """
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, TWO)


@pytest.fixture
def inprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``expkit.main`` called in this process, from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    with isolated_imports(tmp_path):
        yield tmp_path


def test_the_console_script_is_installed_next_to_python() -> None:
    assert Path(EXPKIT).is_file(), EXPKIT
    assert shutil.which(EXPKIT) == EXPKIT


def test_exit_code_0_when_every_run_completes(project: Path) -> None:
    proc = run_expkit("run", cwd=project)
    assert proc.returncode == ExitCode.OK == 0, proc.stdout + proc.stderr
    assert "2 completed in" in proc.stdout


def test_exit_code_1_when_a_run_fails(tmp_path: Path) -> None:
    write_project(tmp_path, FAILING)
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.RUNS_FAILED == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 completed in" in proc.stdout


def test_exit_code_2_on_a_collection_error_and_nothing_runs(tmp_path: Path) -> None:
    write_project(tmp_path, {**TWO, "exp_broken.py": "import no_such_module_here\n"})
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.INTERRUPTED == 2, proc.stdout + proc.stderr
    assert "No module named 'no_such_module_here'" in proc.stdout
    assert not (tmp_path / "runs").exists()


SLEEPER = {
    "exp_sleep.py": """\
        import pathlib
        import time

        import expkit

        @expkit.fixture
        def resource():
            yield "held"
            pathlib.Path("released.txt").write_text("yes")

        def exp_sleep(resource):
            print("sleeping now", flush=True)
            time.sleep(60)
        """
}


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} never appeared; output so far:\n{seen}"
        if select.select([proc.stdout], [], [], left)[0]:
            line = proc.stdout.readline()
            assert line, f"the process ended before {marker!r}:\n{seen}"
            seen += line
    return seen


def test_exit_code_2_on_ctrl_c_records_the_run_as_interrupted(tmp_path: Path) -> None:
    write_project(tmp_path, SLEEPER)
    proc = subprocess.Popen(
        [EXPKIT, "run", "--store", "store"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        before = _read_until(proc, "sleeping now", timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.INTERRUPTED, before + out + err
    assert re.search(r"^exp_sleep\.py::exp_sleep  INTERRUPTED  id=1 ", out, re.M), out
    assert "Traceback" not in err
    assert (tmp_path / "released.txt").read_text() == "yes"  # the fixture was torn down
    assert only_run(tmp_path / "store")["status"] == "INTERRUPTED"


class _BrokenPlugin:
    """A plugin whose hook fails: a bug outside the user's experiment."""

    @hookimpl
    def expkit_collection_finish(self, session: object) -> None:
        raise RuntimeError("the plugin is broken")


def test_exit_code_3_when_a_plugin_fails(
    inprocess: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(inprocess, TWO)
    code = expkit.main(["run", "-u"], plugins=[_BrokenPlugin()])
    err = capsys.readouterr().err
    assert code == ExitCode.INTERNAL_ERROR == 3
    assert err.startswith("INTERNAL ERROR")
    assert "RuntimeError: the plugin is broken" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["run", "-o", "C"], "malformed -o 'C'"),
        (["run", "-o", "C=[1,"], "malformed -o 'C=[1,'"),
        (["run", "no_such_file.py"], "file or directory not found: no_such_file.py"),
        (["run", "--store", "ftp://somewhere/runs"], "ftp://somewhere/runs"),
        (["run", "exp_two.py::exp_missing"], "exp_missing"),
        (["run", "-p", "no_such_plugin_module"], "no_such_plugin_module"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["run", "--seed", "many"], "--seed"),
        (["run", "--capture", "all"], "--capture"),
        (["run", "-u", "--store", "runs"], "-u/--unobserved stores nothing, yet --store"),
    ],
    ids=[
        "unknown-flag",
        "o-without-value",
        "o-broken-literal",
        "missing-path",
        "unknown-store-url",
        "unknown-node-id",
        "unknown-plugin",
        "unknown-command",
        "seed-not-a-number",
        "unknown-capture-mode",
        "unobserved-with-store",
    ],
)
def test_a_usage_mistake_is_one_line_on_stderr_and_exit_code_4(
    project: Path, args: list[str], message: str
) -> None:
    proc = run_expkit(*args, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR == 4, proc.stdout + proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ERROR: ")
    assert message in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (project / "runs").exists()  # nothing ran


def test_code_in_an_override_is_never_evaluated(project: Path) -> None:
    code = "__import__('pathlib').Path('pwned').touch()"
    proc = run_expkit("run", "exp_two.py::exp_other", "-o", f"gamma={code}", cwd=project)
    assert not (project / "pwned").exists()
    # Text that is no literal is a string, as Sacred reads it.
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert only_run(project / "runs")["result"] == code


def test_an_unknown_key_is_exit_code_4_with_a_suggestion(project: Path) -> None:
    proc = run_expkit("run", "-o", "gamme=0.5", cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "'gamme'" in out
    assert "did you mean 'gamma'?" in out
    assert "Traceback" not in out
    assert not (project / "runs").exists() or not any((project / "runs").glob("[0-9]*"))


def test_exit_code_5_when_nothing_is_collected(tmp_path: Path) -> None:
    write_project(tmp_path, {"helpers.py": "def exp_not_collected():\n    return 1\n"})
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.NO_EXPERIMENTS_COLLECTED == 5, proc.stdout + proc.stderr
    assert "collected 0 experiments" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_exit_code_5_for_a_file_without_experiments(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_empty.py": "def helper():\n    return 1\n"})
    proc = run_expkit("run", "exp_empty.py", cwd=tmp_path)
    assert proc.returncode == ExitCode.NO_EXPERIMENTS_COLLECTED, proc.stdout + proc.stderr


def test_a_k_that_selects_nothing_is_one_line(project: Path) -> None:
    proc = run_expkit("run", "-k", "nothing_matches_this", cwd=project)
    assert proc.returncode in (ExitCode.USAGE_ERROR, ExitCode.NO_EXPERIMENTS_COLLECTED)
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "nothing_matches_this" in lines[0], proc.stderr
    assert not (project / "runs").exists()


def test_an_error_in_a_config_scope_is_the_users_error_not_expkits(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "exp_scope.py": """\
                import expkit

                @expkit.config
                def cfg():
                    size = 10
                    derived = size / undefined_name

                def exp_uses_scope(size, derived):
                    return size
                """,
            "exp_fine.py": "def exp_fine():\n    return 'fine'\n",
        },
    )
    proc = run_expkit("run", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "INTERNAL ERROR" not in out
    assert proc.returncode in (ExitCode.RUNS_FAILED, ExitCode.USAGE_ERROR), out
    assert "NameError" in out and "undefined_name" in out
    # The other experiment still ran.
    assert re.search(r"exp_fine\.py::exp_fine  COMPLETED", proc.stdout), out


def test_main_returns_the_exit_code_in_process(
    inprocess: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_project(inprocess, {**TWO, **FAILING})
    assert expkit.main(["run", "-u", "--capture", "sys", "exp_two.py"]) == ExitCode.OK
    assert expkit.main(["run", "-u", "--capture", "sys", "exp_fail.py"]) == ExitCode.RUNS_FAILED
    assert expkit.main(["run", "-o", "C"]) == ExitCode.USAGE_ERROR
    assert expkit.main(["run", "no_such_dir"]) == ExitCode.USAGE_ERROR
    out = capsys.readouterr().out
    assert "exp_two.py::exp_ok  COMPLETED" in out
    assert "exp_fail.py::exp_bad  FAILED" in out


def test_main_runs_and_records_in_process(inprocess: Path) -> None:
    write_project(inprocess, TWO)
    code = expkit.main(["run", "exp_two.py::exp_ok", "-o", "C=3", "--capture", "sys", "-q"])
    assert code == ExitCode.OK
    run = only_run(inprocess / "runs")
    assert run["result"] == 30
    assert run["config"]["C"] == 3


def test_python_dash_m_expkit_is_the_same_command(project: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "expkit", "--collect-only", "-q"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["exp_two.py::exp_ok", "exp_two.py::exp_other"]


def test_without_arguments_expkit_prints_its_usage(project: Path) -> None:
    proc = run_expkit(cwd=project)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: expkit")
    assert "-o KEY=VALUE" in proc.stdout


@pytest.mark.slow
def test_the_iris_example_runs_and_says_where_it_was_stored(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLES / "exp_iris.py", tmp_path / "examples" / "exp_iris.py")
    proc = run_expkit("run", "examples/exp_iris.py", "-o", "C=3", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = re.search(
        r"^examples/exp_iris\.py::exp_rbf_svm  COMPLETED  id=1  \d+\.\d\ds  result=([\d.]+)$",
        proc.stdout,
        re.M,
    )
    assert line, proc.stdout
    store = tmp_path / "runs"
    assert f"stored 1 run(s) in {store}: id 1" in proc.stdout
    run = only_run(store)
    assert run["status"] == "COMPLETED"
    assert run["config"]["C"] == 3
    assert run["config"]["gamma"] == 0.7
    assert 0.0 <= run["result"] <= 1.0
    assert float(line.group(1)) == pytest.approx(run["result"])
    assert run["experiment"]["name"] == "examples/exp_iris.py::exp_rbf_svm"
    assert json.loads((store / "1" / "run.json").read_text())["meta"]["config_updates"] == {"C": 3}


# --- clean errors everywhere (issue 10, point 9) ------------------------------------------


def test_a_store_url_nobody_claims_stops_before_the_session_header(project: Path) -> None:
    proc = run_expkit("run", "--store", "ftp://u:pw@somewhere/runs", cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR
    assert proc.stdout == ""  # no header, no "collected", nothing half-said
    [line] = error_lines(proc.stderr)
    assert line.startswith("ERROR: no store plugin handles 'ftp://u:***@somewhere/runs'; known ")
    assert "file://" in line and "mongodb://" in line and "pw" not in line


BROKEN_STORE = """\
from expkit.pluginmanager import hookimpl


@hookimpl
def expkit_store_for_url(url):
    if url.startswith("broken://"):
        raise ConnectionError(f"no route to {url}\\n(details follow)")
"""


def test_a_store_that_cannot_be_made_is_one_line_naming_it(project: Path) -> None:
    (project / "brokenstore.py").write_text(BROKEN_STORE)
    env = child_env(PYTHONPATH=str(project))
    url = "broken://alice:Pw-4-never@db.lab/runs"
    proc = run_expkit("run", "-p", "brokenstore", "--store", url, cwd=project, env=env)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert error_lines(proc.stderr) == [
        "ERROR: cannot open the store 'broken://alice:***@db.lab/runs': ConnectionError: "
        "no route to broken://alice:***@db.lab/runs (details follow)"
    ]
    assert "INTERNAL ERROR" not in proc.stderr and "Pw-4-never" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [["plugins"], ["runs", "list", "--store", "runs"]])
def test_a_closed_pipe_ends_the_command_quietly(project: Path, command: list[str]) -> None:
    assert run_expkit("run", "exp_two.py", cwd=project).returncode == 0
    read, write = os.pipe()
    os.close(read)  # as `expkit ... | head -1` once head has read its line
    try:
        proc = subprocess.run(
            [EXPKIT, *command],
            cwd=project,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=child_env(),
        )
    finally:
        os.close(write)
    assert proc.stderr == ""  # no traceback, no "Exception ignored"
    assert proc.returncode == ExitCode.OK  # the reader took what it wanted


ESCAPES = "\x1b[2J\x1b]0;owned\x07"


def test_control_characters_in_names_are_escaped_when_printed(tmp_path: Path) -> None:
    script = tmp_path / "exp_named.py"
    script.write_text(
        "from expkit import Experiment\n"
        f"ex = Experiment({'wipe' + ESCAPES!r})\n"
        "@ex.main\ndef main():\n    return 1\n"
        "if __name__ == '__main__':\n    ex.run_commandline()\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), "-F", "runs", "-l", "ERROR"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    listed = run_expkit("runs", "list", "--store", "runs", cwd=tmp_path)
    shown = run_expkit("runs", "show", "1", "--store", "runs", cwd=tmp_path)
    for proc in (listed, shown):
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
        assert "wipe\\x1b[2J\\x1b]0;owned\\x07" in proc.stdout


def test_control_characters_in_a_node_id_are_escaped_in_the_report(tmp_path: Path) -> None:
    write_project(tmp_path, {f"exp_{ESCAPES}.py": "def exp_x():\n    return 1\n"})
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "exp_\\x1b[2J\\x1b]0;owned\\x07.py::exp_x  COMPLETED  id=1" in proc.stdout


def test_an_id_with_control_characters_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "exp_id.py"
    script.write_text(
        "from expkit import Experiment\nex = Experiment('ids')\n"
        "@ex.main\ndef main():\n    return 1\n"
        "if __name__ == '__main__':\n    ex.run_commandline()\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), "-F", "runs", "-i", f"run{ESCAPES}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert done.returncode != 0
    assert error_lines(done.stderr) == [
        "ERROR: --id 'run\\x1b[2J\\x1b]0;owned\\x07' holds control characters"
    ]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", ["1e400", "-1e400", "[0.5, 1e999]"])
def test_an_override_beyond_the_largest_float_is_refused_naming_the_entry(
    project: Path, value: str
) -> None:
    proc = run_expkit("run", "exp_two.py", "-o", f"C={value}", cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR
    [line] = error_lines(proc.stderr)
    assert line.startswith(f"ERROR: malformed -o 'C={value}': '{value}' holds a number beyond")
    assert "which JSON cannot store" in line
    assert not (project / "runs").exists()


def test_an_options_value_is_never_taken_for_a_path_that_moves_the_project_root(
    tmp_path: Path,
) -> None:
    # Only the paths a command names choose the project root, as in pytest; the value of
    # any option, a plugin's too, is not one of them, even when it names a folder.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "pyproject.toml").parent.mkdir()
    (elsewhere / "pyproject.toml").write_text('[tool.expkit]\nstore = "other"\n')
    project = write_project(
        tmp_path / "project",
        {"exp_one.py": "def exp_one():\n    return 1\n"},
        pyproject='store = "kept"\n',
    )
    assert run_expkit("run", "exp_one.py", "-q", cwd=project).returncode == 0
    for option in ("--experiment", "--comment"):
        done = run_expkit("runs", "list", option, str(elsewhere), cwd=project)
        assert f"in {project / 'kept'}" in done.stdout + done.stderr, (option, done.stderr)
