"""Collecting experiment files: folders, patterns, node ids, errors and ``expconf.py``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_helpers import child_env, only_run, run_expkit, stored_runs, write_project

from expkit.nodes import ExitCode


def _ids(proc) -> list[str]:
    """The node ids printed by ``--collect-only -q`` (without the closing count line)."""
    return [line for line in proc.stdout.splitlines() if "::" in line]


def _experiment(name: str = "exp_f", result: str = "1") -> str:
    return f"def {name}():\n    return {result}\n"


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    return write_project(
        tmp_path,
        {
            "exp_top.py": _experiment("exp_top"),
            "sub/exp_mid.py": _experiment("exp_mid") + _experiment("exp_mid2"),
            "sub/deep/exp_low.py": _experiment("exp_low"),
            "sub/deep/helpers.py": _experiment("exp_not_in_a_matching_file"),
        },
    )


def test_nested_folders_are_walked_and_named_relative_to_the_root(nested: Path) -> None:
    proc = run_expkit("--collect-only", "-q", cwd=nested)
    assert proc.returncode == 0, proc.stderr
    assert _ids(proc) == [
        "exp_top.py::exp_top",
        "sub/exp_mid.py::exp_mid",
        "sub/exp_mid.py::exp_mid2",
        "sub/deep/exp_low.py::exp_low",
    ]


def test_node_ids_stay_relative_to_the_root_from_a_subfolder(nested: Path) -> None:
    proc = run_expkit("--collect-only", "-q", "deep", cwd=nested / "sub")
    assert _ids(proc) == ["sub/deep/exp_low.py::exp_low"]


@pytest.mark.parametrize(
    "folder", [".hidden", ".git", "venv", ".venv", "__pycache__", "build", "dist", "pkg.egg-info"]
)
def test_tooling_folders_are_skipped(tmp_path: Path, folder: str) -> None:
    write_project(
        tmp_path, {"exp_kept.py": _experiment(), f"{folder}/exp_skipped.py": _experiment()}
    )
    if "venv" in folder:
        (tmp_path / folder / "pyvenv.cfg").write_text("home = /usr/bin\n")
    proc = run_expkit("--collect-only", "-q", cwd=tmp_path)
    assert _ids(proc) == ["exp_kept.py::exp_f"]


def test_a_virtual_environment_under_any_name_is_skipped(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_kept.py": _experiment(), "py311/exp_in_env.py": _experiment()})
    (tmp_path / "py311" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    proc = run_expkit("--collect-only", "-q", cwd=tmp_path)
    assert _ids(proc) == ["exp_kept.py::exp_f"]


def test_only_exp_functions_defined_in_the_file_are_experiments(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "shared.py": _experiment("exp_imported"),
            "exp_a.py": """\
                from shared import exp_imported

                EXP_CONSTANT = 3

                def helper():
                    return 0

                def exp_real():
                    return helper()

                class exp_Class:
                    pass
                """,
        },
    )
    proc = run_expkit("--collect-only", "-q", cwd=tmp_path)
    assert _ids(proc) == ["exp_a.py::exp_real"]


def test_a_module_level_experiment_object_is_collected_under_its_name(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "exp_sacred.py": """\
                from expkit import Experiment

                ex = Experiment("classic")

                @ex.config
                def cfg():
                    x = 2

                @ex.main
                def main(x):
                    return x * 3
                """,
            "exp_reuse.py": "from exp_sacred import ex\n",
        },
    )
    proc = run_expkit("--collect-only", "-q", cwd=tmp_path)
    assert _ids(proc) == ["exp_sacred.py::classic"]  # not a second time where it is imported
    proc = run_expkit("run", "exp_sacred.py::classic", "-o", "x=5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert only_run(tmp_path / "runs")["result"] == 15


def test_file_and_function_patterns_come_from_pyproject(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "study_one.py": "def trial_a():\n    return 1\n\ndef exp_b():\n    return 2\n",
            "exp_two.py": "def trial_c():\n    return 3\n",
        },
        pyproject="""\
            file_patterns = ["study_*.py"]
            function_patterns = ["trial_*"]
            """,
    )
    proc = run_expkit("--collect-only", "-q", cwd=tmp_path)
    assert _ids(proc) == ["study_one.py::trial_a"]


def test_paths_come_from_pyproject_relative_to_the_root(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {"experiments/exp_in.py": _experiment("exp_in"), "scratch/exp_out.py": _experiment()},
        pyproject='paths = ["experiments"]\n',
    )
    assert _ids(run_expkit("--collect-only", "-q", cwd=tmp_path)) == [
        "experiments/exp_in.py::exp_in"
    ]
    # From a subfolder the configured paths still count from the root.
    assert _ids(run_expkit("--collect-only", "-q", cwd=tmp_path / "scratch")) == [
        "experiments/exp_in.py::exp_in"
    ]


def test_a_file_named_on_the_command_line_is_collected_whatever_its_name(tmp_path: Path) -> None:
    write_project(tmp_path, {"study.py": _experiment("exp_named")})
    assert _ids(run_expkit("--collect-only", "-q", "study.py", cwd=tmp_path)) == [
        "study.py::exp_named"
    ]


def test_selecting_by_node_id_and_by_file(nested: Path) -> None:
    proc = run_expkit(
        "--collect-only", "-q", "sub/exp_mid.py::exp_mid2", "sub/deep/exp_low.py", cwd=nested
    )
    assert _ids(proc) == ["sub/exp_mid.py::exp_mid2", "sub/deep/exp_low.py::exp_low"]
    proc = run_expkit("run", "sub/exp_mid.py::exp_mid2", cwd=nested)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["experiment"]["name"] for r in stored_runs(nested / "runs")] == [
        "sub/exp_mid.py::exp_mid2"
    ]


def test_each_file_is_imported_once(tmp_path: Path) -> None:
    counter = (
        "import pathlib\n"
        'with pathlib.Path("imports.log").open("a") as log:\n'
        '    log.write(__file__ + "\\n")\n'
    )
    write_project(
        tmp_path,
        {
            "expconf.py": counter,
            "exp_a.py": counter + _experiment("exp_one") + _experiment("exp_two"),
            "exp_b.py": _experiment("exp_three"),
        },
    )
    proc = run_expkit("run", "-u", ".", "exp_a.py::exp_one", "exp_a.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = (tmp_path / "imports.log").read_text().splitlines()
    assert sorted(Path(p).name for p in imported) == ["exp_a.py", "expconf.py"]


def test_a_file_rewritten_at_the_same_size_and_second_runs_as_it_now_is(tmp_path: Path) -> None:
    import os

    exp = write_project(tmp_path, {"exp_v.py": _experiment("exp_v", "1")}) / "exp_v.py"
    stamp = exp.stat().st_mtime_ns
    first = run_expkit("run", "exp_v.py", cwd=tmp_path, env=child_env(PYTHONDONTWRITEBYTECODE=""))
    assert first.returncode == 0, first.stdout + first.stderr
    # Rewritten within the same second to a text of the same size: Python's bytecode cache,
    # which checks only mtime seconds and size, would run version 1 again.
    exp.write_text(_experiment("exp_v", "2"))
    os.utime(exp, ns=(stamp, stamp))
    second = run_expkit("run", "exp_v.py", cwd=tmp_path, env=child_env(PYTHONDONTWRITEBYTECODE=""))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "result=2" in second.stdout
    recorded = stored_runs(tmp_path / "runs")[-1]
    assert recorded["result"] == 2  # what ran is the source the run recorded


def test_a_second_run_does_not_collect_the_stores_copies(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_a.py": _experiment("exp_one")})
    first = run_expkit("run", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert list((tmp_path / "runs" / "_sources").glob("exp_a*.py"))  # the store kept the source
    second = run_expkit("--collect-only", "-q", cwd=tmp_path)
    assert _ids(second) == ["exp_a.py::exp_one"]


BROKEN = {
    "exp_good.py": _experiment("exp_good"),
    "sub/exp_broken.py": """\
        import os

        def exp_never():
            return 1

        value = int("not a number")
        """,
    "sub/exp_later.py": _experiment("exp_later"),
}


def test_a_file_that_fails_to_import_is_a_collection_error(tmp_path: Path) -> None:
    write_project(tmp_path, BROKEN)
    proc = run_expkit("--collect-only", cwd=tmp_path)
    assert proc.returncode == ExitCode.INTERRUPTED, proc.stdout + proc.stderr
    out = proc.stdout
    # The other files are still listed.
    assert "<Module exp_good.py>" in out and "<Module sub/exp_later.py>" in out
    assert "collected 2 experiments / 1 error" in out
    # The file's own traceback: its line, its exception.
    assert "ERROR collecting sub/exp_broken.py" in out
    assert re.search(r'File ".*sub/exp_broken\.py", line 6, in <module>', out), out
    assert 'value = int("not a number")' in out
    assert "ValueError: invalid literal for int() with base 10: 'not a number'" in out


def test_a_node_id_in_a_file_that_fails_to_import_shows_why(tmp_path: Path) -> None:
    # Not "no experiment 'exp_never' in exp_broken.py": it is there; its file failed.
    write_project(tmp_path, BROKEN)
    proc = run_expkit("run", "sub/exp_broken.py::exp_never", "-u", cwd=tmp_path)
    assert proc.returncode == ExitCode.INTERRUPTED, proc.stdout + proc.stderr
    assert "ERROR collecting sub/exp_broken.py" in proc.stdout
    assert "ValueError: invalid literal for int() with base 10: 'not a number'" in proc.stdout
    assert "no experiment" not in proc.stdout + proc.stderr


def test_a_collection_error_shows_no_expkit_frames(tmp_path: Path) -> None:
    write_project(tmp_path, BROKEN)
    out = run_expkit("--collect-only", cwd=tmp_path).stdout
    section = out[out.index("ERROR collecting") :]
    frames = re.findall(r'File "([^"]+)"', section)
    assert frames and all(f.endswith("exp_broken.py") for f in frames), section


def test_a_syntax_error_is_a_collection_error_with_the_line(tmp_path: Path) -> None:
    write_project(tmp_path, {"exp_good.py": _experiment(), "exp_syntax.py": "def exp_x(:\n"})
    proc = run_expkit("--collect-only", "-q", cwd=tmp_path)
    assert proc.returncode == ExitCode.INTERRUPTED
    assert _ids(proc)[0] == "exp_good.py::exp_f"
    assert "SyntaxError" in proc.stdout and "exp_syntax.py" in proc.stdout


# --- expconf.py at two levels -------------------------------------------------------------------

EXPCONF_PROJECT = {
    "lab/expconf.py": """\
        import pathlib

        import expkit

        @expkit.config
        def outer():
            base = 10  # shared by the whole lab
            where = "outer"

        @expkit.named_config
        def big():
            \"\"\"A big base.\"\"\"
            base = 1000

        @expkit.fixture
        def data(base):
            return ["outer", base]

        @expkit.fixture
        def label():
            return "from the outer expconf"

        def expkit_run_completed(run):
            marker = pathlib.Path(__file__).with_name("completed.txt")
            with marker.open("a") as file:
                file.write(f"{run.experiment_info['name']} {run.result!r}\\n")
        """,
    "lab/deep/expconf.py": """\
        import expkit

        @expkit.config
        def inner(base):
            derived = base * 2  # twice the base
            where = "inner"

        @expkit.fixture
        def data(base, label):
            return ["inner", base, label]
        """,
    "lab/exp_top.py": """\
        def exp_top(base, where, data):
            return [base, where, data]
        """,
    "lab/deep/exp_low.py": """\
        def exp_low(base, derived, where, data):
            return [base, derived, where, data]
        """,
    "elsewhere/exp_outside.py": """\
        def exp_outside(base=-1):
            return base
        """,
}


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return write_project(tmp_path, EXPCONF_PROJECT)


def _results(store: Path) -> dict[str, object]:
    return {r["experiment"]["name"]: r["result"] for r in stored_runs(store)}


def test_expconf_files_apply_from_the_root_down(lab: Path) -> None:
    proc = run_expkit("run", cwd=lab)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _results(lab / "runs") == {
        "lab/exp_top.py::exp_top": [10, "outer", ["outer", 10]],
        "lab/deep/exp_low.py::exp_low": [10, 20, "inner", ["inner", 10, "from the outer expconf"]],
        "elsewhere/exp_outside.py::exp_outside": -1,  # no expconf.py above it
    }


def test_named_config_and_overrides_from_expconf(lab: Path) -> None:
    proc = run_expkit("run", "lab", "-w", "big", cwd=lab)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _results(lab / "runs")
    assert results["lab/deep/exp_low.py::exp_low"][:2] == [1000, 2000]
    proc = run_expkit("run", "lab/deep", "-w", "big", "-o", "base=3", "--store", "s2", cwd=lab)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _results(lab / "s2")["lab/deep/exp_low.py::exp_low"][:2] == [3, 6]


def test_a_hook_function_in_expconf_is_called(lab: Path) -> None:
    proc = run_expkit("run", "-u", "lab", cwd=lab)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (lab / "lab" / "completed.txt").read_text().splitlines()
    assert sorted(lines) == [
        "lab/deep/exp_low.py::exp_low [10, 20, 'inner', ['inner', 10, 'from the outer expconf']]",
        "lab/exp_top.py::exp_top [10, 'outer', ['outer', 10]]",
    ]


def test_expconf_config_is_shown_by_collect_only(lab: Path) -> None:
    proc = run_expkit("--collect-only", "lab/deep", cwd=lab)
    assert proc.returncode == 0, proc.stderr
    assert "<Module lab/deep/exp_low.py>" in proc.stdout
    for line in ("    base = 10", "    derived = 20", "    where = 'inner'"):
        assert line in proc.stdout.splitlines(), proc.stdout


def test_an_expconf_that_fails_is_a_collection_error(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "bad/expconf.py": "raise RuntimeError('expconf is broken')\n",
            "bad/exp_x.py": _experiment("exp_x"),
            "exp_ok.py": _experiment("exp_ok"),
        },
    )
    proc = run_expkit("--collect-only", "-q", cwd=tmp_path)
    assert proc.returncode == ExitCode.INTERRUPTED
    assert _ids(proc)[0] == "exp_ok.py::exp_ok"
    assert "RuntimeError: expconf is broken" in proc.stdout
