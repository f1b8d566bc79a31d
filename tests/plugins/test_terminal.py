"""What ``expkit run`` prints: header, one line per run, failures, and the closing summary."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest
from cli_helpers import run_expkit, run_in_terminal, write_project

import expkit

PROJECT = {
    "exp_a.py": """\
        import expkit

        @expkit.config
        def cfg():
            n = 21

        def exp_double(n):
            return n * 2

        def exp_text():
            return "hello"
        """,
    "sub/exp_b.py": """\
        def exp_broken():
            raise KeyError("missing column")

        def exp_none():
            print("nothing to return")
        """,
}

LINE = r"  (?P<status>[A-Z]+)(?:  id=(?P<id>\S+))?  (?P<seconds>\d+\.\d\d)s(?:  (?P<rest>.*))?$"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, PROJECT)


def test_header_lines(project: Path) -> None:
    proc = run_expkit("run", "exp_a.py", cwd=project)
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"=+ expkit session starts =+", lines[0]), lines[0]
    assert lines[1] == f"expkit {expkit.__version__}, Python {platform.python_version()}"
    assert lines[2] == f"rootdir: {project}, configfile: pyproject.toml"
    assert lines[3] == f"store: {project / 'runs'}"
    assert lines[4] == "collected 2 experiments"


def test_header_names_the_store_the_runs_go_to(tmp_path: Path) -> None:
    # A store in pyproject.toml is relative to the project root, in the header as in the runs.
    project = write_project(tmp_path / "p", PROJECT, pyproject='store = "results"\n')
    proc = run_expkit("run", "exp_a.py", "--collect-only", cwd=project)
    assert f"store: {project / 'results'}" in proc.stdout.splitlines()
    url = "mongodb://me:s3cret@127.0.0.1:1/db"
    proc = run_expkit("run", "exp_a.py", "--collect-only", "--store", url, cwd=project)
    assert "store: mongodb://me:***@127.0.0.1:1/db" in proc.stdout.splitlines()
    assert "s3cret" not in proc.stdout


def test_one_line_per_run_with_progress_id_status_duration_result(project: Path) -> None:
    proc = run_expkit("run", cwd=project)
    assert proc.returncode == 1
    runs = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    found = [(re.match(r"\[(\d)/4\] (\S+)" + LINE, line), line) for line in runs]
    assert all(m for m, _ in found), runs
    seen = [(m["status"], m["id"], m["rest"]) for m, _ in found]
    names = [m.group(2) for m, _ in found]
    assert [m.group(1) for m, _ in found] == ["1", "2", "3", "4"]
    assert names == [
        "exp_a.py::exp_double",
        "exp_a.py::exp_text",
        "sub/exp_b.py::exp_broken",
        "sub/exp_b.py::exp_none",
    ]
    assert seen == [
        ("COMPLETED", "1", "result=42"),
        ("COMPLETED", "2", "result='hello'"),
        ("FAILED", "3", "KeyError: 'missing column'"),
        ("COMPLETED", "4", None),
    ]


def test_a_single_run_has_no_progress_count(project: Path) -> None:
    proc = run_expkit("run", "exp_a.py::exp_double", cwd=project)
    assert re.search(r"^exp_a\.py::exp_double" + LINE, proc.stdout, re.M), proc.stdout
    assert "[1/1]" not in proc.stdout


def test_closing_summary_line(project: Path) -> None:
    proc = run_expkit("run", cwd=project)
    last = proc.stdout.splitlines()[-1]
    # pytest's order: failures first.
    assert re.fullmatch(r"=+ 1 failed, 3 completed in \d+\.\d\ds =+", last), last
    ok = run_expkit("run", "exp_a.py", cwd=project).stdout.splitlines()[-1]
    assert re.fullmatch(r"=+ 2 completed in \d+\.\d\ds =+", ok), ok


def test_the_summary_counts_errors_in_pytest_words(project: Path) -> None:
    proc = run_expkit("run", "exp_a.py", "-o", "m=1", cwd=project)
    last = proc.stdout.splitlines()[-1]
    assert re.fullmatch(r"=+ 2 errors in \d+\.\d\ds =+", last), last


def test_the_stored_line_says_where_the_runs_went(project: Path) -> None:
    proc = run_expkit("run", "exp_a.py", "--store", "elsewhere", cwd=project)
    assert "stored 2 run(s) in elsewhere: id 1, 2" in proc.stdout.splitlines()


def test_failures_show_the_users_traceback_without_expkit_frames(project: Path) -> None:
    proc = run_expkit("run", "sub/exp_b.py::exp_broken", cwd=project)
    out = proc.stdout
    assert re.search(r"^=+ FAILURES =+$", out, re.M)
    section = out[out.index("FAILURES") :]
    assert re.search(r"^_+ sub/exp_b\.py::exp_broken _+$", section, re.M)
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', section)
    assert frames == [(str(project / "sub" / "exp_b.py"), "2", "exp_broken")], section
    assert "KeyError: 'missing column'" in section


def test_no_ansi_codes_when_not_a_terminal(project: Path) -> None:
    proc = run_expkit("run", cwd=project)
    assert "\x1b[" not in proc.stdout + proc.stderr


def test_colour_on_a_terminal(project: Path) -> None:
    code, out = run_in_terminal("run", cwd=project)
    assert code == 1
    assert re.search(r"\x1b\[32m\[1/4\] exp_a\.py::exp_double  COMPLETED .*\x1b\[0m", out), out
    assert re.search(r"\x1b\[31m\[3/4\] sub/exp_b\.py::exp_broken  FAILED .*\x1b\[0m", out), out
    assert re.search(r"\x1b\[31m=+ 1 failed, 3 completed in", out)


def test_the_experiments_own_output_is_shown(project: Path) -> None:
    proc = run_expkit("run", "sub/exp_b.py::exp_none", cwd=project)
    assert "nothing to return" in proc.stdout


def test_collected_line_counts_deselected(project: Path) -> None:
    proc = run_expkit("run", "-k", "double", cwd=project)
    assert "collected 4 experiments / 3 deselected" in proc.stdout.splitlines()
    last = proc.stdout.splitlines()[-1]
    assert re.fullmatch(r"=+ 1 completed, 3 deselected in \d+\.\d\ds =+", last), last


def test_results_are_plain_values(tmp_path: Path) -> None:
    project = write_project(
        tmp_path,
        {
            "exp_np.py": """\
                import numpy as np

                def exp_score():
                    return np.float64(0.97)

                def exp_scores():
                    return {"acc": np.float64(0.5), "name": np.str_("svm"), "n": np.int64(3)}
                """
        },
    )
    proc = run_expkit("run", "-u", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "np.float64" not in proc.stdout and "np.str_" not in proc.stdout
    assert "exp_np.py::exp_score  COMPLETED" in proc.stdout
    assert re.search(r"exp_score  COMPLETED  \d+\.\d\ds  result=0\.97$", proc.stdout, re.M)
    assert "result={'acc': 0.5, 'name': 'svm', 'n': 3}" in proc.stdout


def test_exitfirst_says_how_many_experiments_it_did_not_run(project: Path) -> None:
    proc = run_expkit("run", "sub/exp_b.py", "exp_a.py", "-x", cwd=project)
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"!+ stopping after 1 failure \(-x\): 3 experiments not run !+", lines[-2])
    assert re.fullmatch(r"=+ 1 failed in \d+\.\d\ds =+", lines[-1]), lines[-1]


# --- where the runs went, per store (issue 10, point 3) -------------------------------------


def test_the_closing_lines_say_per_store_where_each_run_went() -> None:
    from expkit.delivery import StoreOutcome
    from expkit.nodes import RunReport
    from expkit_plugins.terminal import store_lines

    mongo = "mongodb://me:***@db.lab/exp"
    reports = [
        RunReport(
            "exp_a.py::exp_one",
            "COMPLETED",
            1.0,
            run_id="1",
            stored=(
                StoreOutcome("runs", "stored", run_id="1"),
                StoreOutcome(mongo, "spooled", folder="/spool/MongoObserver-ab"),
            ),
        ),
        RunReport(
            "exp_a.py::exp_two",
            "COMPLETED",
            1.0,
            run_id="2",
            stored=(
                StoreOutcome(mongo, "stored", run_id=7),
                StoreOutcome(
                    "runs", "undeliverable", folder="/spool/F-1/20261202", reason="it refused"
                ),
            ),
        ),
        RunReport(
            "exp_a.py::exp_three",
            "FAILED",
            1.0,
            stored=(StoreOutcome("db\x1b[2J", "lost", reason="disk full; spool unwritable"),),
        ),
    ]
    assert store_lines(reports, ["runs", "mongodb://me:secret@db.lab/exp"]) == [
        "stored 1 run(s) in runs: id 1",
        "not stored in runs: it refused; kept in /spool/F-1/20261202",
        "stored 1 run(s) in mongodb://me:***@db.lab/exp: id 7",
        "spooled 1 run(s) for mongodb://me:***@db.lab/exp (not stored yet); deliver with: "
        "expkit sync /spool/MongoObserver-ab 'mongodb://me:***@db.lab/exp' "
        "(the password in place of ***)",
        "not stored in db\\x1b[2J, and lost: disk full; spool unwritable",
    ]


def test_the_closing_line_never_shows_a_password(tmp_path: Path) -> None:
    write_project(tmp_path, PROJECT)
    url = "tinydb://me:Pw-77-secret@db"  # a path that looks like a URL with a password
    proc = run_expkit(
        "run", "exp_a.py::exp_double", "--store", "runs", "--store", url, cwd=tmp_path
    )
    assert "Pw-77-secret" not in proc.stdout + proc.stderr
