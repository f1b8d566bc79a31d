"""Sweeps: ``--sweep``'s grammar, ``@expkit.parametrize``, points as items, meta.sweep, resuming."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest
from cli_helpers import error_lines, run_expkit, stored_runs, write_project

from expkit.errors import UsageError
from expkit.nodes import ExitCode
from expkit_plugins.sweep import id_text, make_plan, parse_sweep

# --- the grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("C=0.1,1,10", (0.1, 1, 10)),
        ("kernel=rbf,linear", ("rbf", "linear")),
        ("name='a,b','c'", ("a,b", "c")),
        ("layers=[64, 64],[128]", ([64, 64], [128])),
        ("flag=True,False,None", (True, False, None)),
        ("path=data/x.csv", ("data/x.csv",)),
        ("seed=range(3)", (0, 1, 2)),
        ("n=range(2, 10, 4)", (2, 6)),
        ("x=linspace(0, 1, 5)", (0.0, 0.25, 0.5, 0.75, 1.0)),
        ("x=linspace(0.1, 0.3, 3)", (0.1, 0.2, 0.3)),
        ("C=logspace(-3, 3, 7)", (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)),
        ("opt.lr=0.1,0.01", (0.1, 0.01)),
        # 15-digit rounding would make the largest float inf: it stays as given.
        ("x=linspace(0, 1.7976931348623157e308, 2)", (0.0, 1.7976931348623157e308)),
    ],
)
def test_grid_values(text: str, values: tuple) -> None:
    sweep = parse_sweep(text)
    assert sweep.values == values
    assert sweep.key == text.partition("=")[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("C", "write --sweep KEY=VALUES"),
        ("C=", "no values after '='"),
        ("1C=3", "'1C' is not a config key"),
        ("C=1,,2", "an empty value between commas"),
        ("C=[1,2", "a quote or bracket is not closed"),
        ("C=range(0)", "range(0) gives no values"),
        ("C=range(1.5)", "range() takes whole numbers"),
        ("C=range(1, 5, 0)", "step must not be 0"),
        ("C=linspace(0, 1)", "linspace() takes 3 numbers, got 2"),
        ("C=logspace(0, 1, 0)", "needs a whole n >= 1"),
        ("C=uniform(2, 1)", "uniform(a, b) needs a < b"),
        ("C=loguniform(0, 1)", "loguniform(a, b) needs 0 < a"),
        ("C=randint(1.5, 3)", "randint() takes whole numbers"),
        ("C=choice()", "choice() needs at least one value"),
        ("C=gauss(0, 1)", "unknown function gauss()"),
        ("C=uniform(__import__('os'), 1)", "is not a Python literal"),
    ],
)
def test_malformed_sweeps_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_sweep(text)
    assert str(info.value).startswith(f"malformed --sweep {text!r}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("kernel=choice(rbf, linear)", ("rbf", "linear")),
        (
            "k=choice(rbf,'a,b', 3, [1, 2], None, data/x.csv)",
            ("rbf", "a,b", 3, [1, 2], None, "data/x.csv"),
        ),
        # A word is a string, as in a comma list: never evaluated.
        ("k=choice(__import__('os'), 1)", ("__import__('os')", 1)),
    ],
)
def test_choice_takes_bare_words_as_a_comma_list_does(text: str, values: tuple) -> None:
    assert parse_sweep(text).draw == ("choice", values)


def _plan(
    *sweeps: str,
    samples: int | None = None,
    seed: int | None = None,
    sample_seed: int | None = None,
) -> list[dict]:
    option = argparse.Namespace(
        sweeps=list(sweeps), samples=samples, seed=seed, sample_seed=sample_seed
    )
    return make_plan(option).points()


def test_several_sweeps_are_a_product_the_first_varying_slowest() -> None:
    assert _plan("a=1,2", "b=x,y") == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


def test_random_points_come_from_the_seed() -> None:
    sweeps = ("C=loguniform(1e-3, 1e3)", "k=randint(1, 3)", "m=choice('a', 'b')")
    first = _plan(*sweeps, samples=50, seed=1)
    assert first == _plan(*sweeps, samples=50, seed=1)
    assert first != _plan(*sweeps, samples=50, seed=2)
    assert len(first) == 50
    assert all(1e-3 <= p["C"] <= 1e3 for p in first)
    # Spread over the decades, as a log-uniform draw is.
    assert {math.floor(math.log10(p["C"])) for p in first} >= {-3, -1, 1}
    assert {p["k"] for p in first} == {1, 2, 3}  # both ends included
    assert {p["m"] for p in first} == {"a", "b"}


def test_the_sample_seed_draws_the_points_and_wins_over_the_seed() -> None:
    sweep = "C=uniform(0, 1)"
    by_seed = _plan(sweep, samples=4, seed=3)
    assert _plan(sweep, samples=4, sample_seed=3) == by_seed
    assert _plan(sweep, samples=4, seed=9, sample_seed=3) == by_seed


@pytest.mark.parametrize(
    ("seed", "sample_seed", "repeat"),
    [(None, 3, "--sample-seed 3"), (9, None, "--seed 9"), (9, 3, "--seed 9 --sample-seed 3")],
)
def test_the_header_names_every_option_that_repeats_the_points(
    seed: int | None, sample_seed: int | None, repeat: str
) -> None:
    # With both, the runs' seeds and the sweep's id come from --seed: the hint keeps both.
    option = argparse.Namespace(
        sweeps=["C=uniform(0, 1)"], samples=2, seed=seed, sample_seed=sample_seed
    )
    plan = make_plan(option)
    assert f"{plan.repeat} {plan.seed}" == repeat


def test_random_points_times_the_grid() -> None:
    points = _plan("a=1,2", "x=uniform(0, 1)", samples=3, seed=0)
    assert [p["a"] for p in points] == [1, 1, 1, 2, 2, 2]
    assert len({p["x"] for p in points}) == 6


@pytest.mark.parametrize(
    ("sweeps", "samples", "message"),
    [
        (["C=uniform(0, 1)"], None, "say how many points with --samples N"),
        (["C=1,2"], 5, "--samples needs a random --sweep"),
        (["C=1,2", "C=3"], None, "is given twice"),
        (["C=uniform(0, 1)"], 0, "--samples must be 1 or more"),
    ],
)
def test_plan_mistakes(sweeps: list[str], samples: int | None, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        _plan(*sweeps, samples=samples)


def test_a_sample_seed_needs_a_random_sweep() -> None:
    with pytest.raises(UsageError, match=re.escape("--sample-seed needs a random --sweep")):
        _plan("C=1,2", sample_seed=1)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (10, "10"),
        ("rbf", "rbf"),
        ("two words", '"two words"'),
        ([64, 64], "[64,64]"),
        (True, "True"),
        (0.0064000812345, "0.00640008"),
    ],
)
def test_values_in_node_ids_are_short_and_have_no_spaces(value: object, text: str) -> None:
    assert id_text(value) == text


# --- points on the command line ---------------------------------------------------------------

EXP = """\
import expkit

@expkit.config
def cfg():
    C = 1.0
    kernel = "rbf"
    gamma = 0.5

def exp_svm(C, kernel, gamma):
    if C < 0:
        raise ValueError("C must not be negative")
    return {"rbf": 2, "linear": 1}[kernel] * C

def exp_other(gamma):
    return gamma
"""

PARAMETRIZED = """\
import expkit

@expkit.config
def cfg():
    scale = 1

@expkit.parametrize("x", [1, 2, 3])
@expkit.parametrize("mode", ["a", "b"])
def exp_grid(x, mode, scale):
    return x * scale if mode == "a" else -x * scale

@expkit.parametrize("lr, momentum", [(0.1, 0.9), (0.01, 0.99)])
def exp_pairs(lr, momentum):
    return lr * momentum
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, {"exp_svm.py": EXP, "exp_grid.py": PARAMETRIZED})


def _lines(stdout: str, pattern: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.search(pattern, line)]


def test_a_grid_sweep_runs_and_stores_every_point(project: Path) -> None:
    proc = run_expkit(
        "run", "exp_svm.py::exp_svm", "--sweep", "C=0.1,1,10", "--sweep", "kernel=rbf,linear",
        cwd=project,
    )  # fmt: skip
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    runs = stored_runs(project / "runs")
    assert len(runs) == 6
    sweeps = [r["meta"]["sweep"] for r in runs]
    assert len({s["id"] for s in sweeps}) == 1
    assert sorted(s["index"] for s in sweeps) == list(range(6))
    assert {s["size"] for s in sweeps} == {6}
    by_index = {s["index"]: (s["params"], r) for s, r in zip(sweeps, runs)}
    assert by_index[0][0] == {"C": 0.1, "kernel": "rbf"}
    assert by_index[5][0] == {"C": 10, "kernel": "linear"}
    for params, run in by_index.values():
        assert run["status"] == "COMPLETED"
        assert {k: run["config"][k] for k in params} == params
        assert run["config"]["gamma"] == 0.5
    assert "Added new config entry" not in proc.stderr
    assert _lines(proc.stdout, r"exp_svm\.py::exp_svm\[C=0\.1-kernel=rbf\]  COMPLETED")


def test_the_end_table_lists_the_points_and_marks_the_best(project: Path) -> None:
    args = ["run", "exp_svm.py::exp_svm", "--sweep", "C=0.1,1,10", "--sweep", "kernel=rbf,linear"]
    low = run_expkit(*args, "-u", cwd=project).stdout
    (best,) = _lines(low, r"<- best")
    assert re.match(r"1\s+0\.1\s+linear\s+COMPLETED\s+0\.1\s+<- best", best), best
    assert "best (lowest result): [C=0.1-kernel=linear] result=0.1" in low
    high = run_expkit(*args, "-u", "--maximize", cwd=project).stdout
    (best,) = _lines(high, r"<- best")
    assert re.match(r"4\s+10\s+rbf\s+COMPLETED\s+20\s+<- best", best), best
    header = _lines(high, r"^#\s+C\s+kernel\s+status\s+result\s+run$")
    assert header, high


def test_the_best_by_a_key_of_a_dict_result(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {"exp_d.py": "def exp_d(a=1):\n    return {'acc': 1 / a, 'a': a}\n"},
    )
    proc = run_expkit(
        "run", "-u", "--sweep", "a=1,2,4", "--objective", "acc", "--maximize", cwd=tmp_path
    )
    assert "best (highest acc): [a=1] acc=1" in proc.stdout, proc.stdout


def test_the_best_by_a_metrics_last_value(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "exp_m.py": """\
                def exp_m(_run, a=1):
                    for step in range(3):
                        _run.log_scalar("loss", a * (3 - step))
                """
        },
    )
    proc = run_expkit("run", "-u", "--sweep", "a=3,1,2", "--objective", "loss", cwd=tmp_path)
    assert "best (lowest loss): [a=1] loss=1" in proc.stdout, proc.stdout
    (best,) = _lines(proc.stdout, r"<- best")
    assert re.match(r"1\s+1\s+COMPLETED\s+1\s+<- best", best), best


def test_collect_only_lists_every_point_and_runs_nothing(project: Path) -> None:
    proc = run_expkit(
        "--collect-only", "-q", "exp_svm.py::exp_svm", "--sweep", "C=logspace(-1,1,3)", cwd=project
    )
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert proc.stdout.splitlines()[:3] == [
        "exp_svm.py::exp_svm[C=0.1]",
        "exp_svm.py::exp_svm[C=1.0]",
        "exp_svm.py::exp_svm[C=10.0]",
    ]
    assert not (project / "runs").exists()


def test_collect_only_shows_each_points_config(project: Path) -> None:
    proc = run_expkit("--collect-only", "exp_svm.py::exp_svm", "--sweep", "C=3,4", cwd=project)
    assert "<Experiment exp_svm[C=3]>" in proc.stdout
    assert "C = 3" in proc.stdout and "C = 4" in proc.stdout


def test_random_search_is_repeatable_with_the_seed(project: Path) -> None:
    args = ["--collect-only", "-q", "exp_svm.py::exp_svm", "--sweep", "C=loguniform(1e-3,1e3)"]
    one = run_expkit(*args, "--samples", "5", "--seed", "7", cwd=project).stdout
    two = run_expkit(*args, "--samples", "5", "--seed", "7", cwd=project).stdout
    other = run_expkit(*args, "--samples", "5", "--seed", "8", cwd=project).stdout

    def points(out: str) -> list[str]:
        return [line for line in out.splitlines() if "[C=" in line]

    assert len(points(one)) == 5 and points(one) == points(two) != points(other)


def _repeat_option(stdout: str) -> list[str]:
    """The option the header says repeats the random points: ``["--sample-seed", "123"]``."""
    (line,) = _lines(stdout, r"random points drawn with seed \d+")
    return re.search(r"\((--[\w-]+ \d+) repeats them\)$", line).group(1).split()


def test_random_search_without_seed_says_which_seed_it_drew(project: Path) -> None:
    args = ["run", "-u", "exp_svm.py::exp_svm", "--sweep", "C=uniform(0, 1)", "--samples", "2"]
    proc = run_expkit(*args, cwd=project)
    again = run_expkit(*args, *_repeat_option(proc.stdout), cwd=project)
    points = _lines(proc.stdout, r"^\[\d/2\]")
    assert [p.split()[1] for p in points] == [p.split()[1] for p in _lines(again.stdout, r"^\[")]
    # Given --seed, the points come from it, and it repeats them.
    seeded = run_expkit(*args, "--seed", "4", cwd=project)
    assert _repeat_option(seeded.stdout) == ["--seed", "4"]


def test_a_random_sweep_started_without_seed_resumes_with_the_printed_option(
    project: Path,
) -> None:
    args = ["run", "exp_svm.py::exp_svm", "--sweep", "C=uniform(0, 1)", "--samples", "3"]
    first = run_expkit(*args, cwd=project)
    assert first.returncode == ExitCode.OK, first.stdout + first.stderr
    repeat = _repeat_option(first.stdout)
    again = run_expkit(*args, *repeat, "--skip-completed", cwd=project)
    assert again.returncode == ExitCode.OK, again.stdout + again.stderr
    # The same sweep (its id), and every point skipped as done.
    (sweep,) = _lines(first.stdout, r"^sweep \w+: 3 points of exp_svm\.py::exp_svm$")
    assert sweep in again.stdout.splitlines()
    assert len(_lines(again.stdout, r"SKIPPED  id=\d+  0\.00s  completed before as run \d+")) == 3
    assert "3 skipped" in again.stdout
    runs = stored_runs(project / "runs")
    assert len(runs) == 3
    # The option fixes the points, not the runs' seeds: each run drew its own.
    assert len({r["config"]["seed"] for r in runs}) == 3


def test_choice_of_bare_words_runs_every_point(project: Path) -> None:
    proc = run_expkit(
        "run", "exp_svm.py::exp_svm", "--sweep", "kernel=choice(rbf,linear)", "--samples", "6",
        "--seed", "1", cwd=project,
    )  # fmt: skip
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    kernels = [r["config"]["kernel"] for r in stored_runs(project / "runs")]
    assert len(kernels) == 6 and set(kernels) == {"rbf", "linear"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep", "C=[1,2"], "malformed --sweep 'C=[1,2': a quote or bracket is not closed"),
        (["--sweep", "C=1,2", "-o", "C=3"], "C is both fixed with -o and swept with --sweep"),
        (["--samples", "3"], "--samples needs a random --sweep"),
    ],
)
def test_a_malformed_sweep_is_one_line_and_runs_nothing(
    project: Path, args: list[str], message: str
) -> None:
    proc = run_expkit("run", "exp_svm.py", *args, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"ERROR: {message}")
    assert not (project / "runs").exists()


_BEYOND = "holds a number beyond the largest float (it would be inf, which JSON cannot store)"
_WIDE = "spans more than the largest float (1.8e308); give a narrower range"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--sweep", "C=logspace(0,400,3)"],
            "logspace() gives 10**400, beyond the largest float; give exponents up to 308",
        ),
        (
            ["--sweep", "C=logspace(0,400,3)", "--collect-only"],
            "logspace() gives 10**400, beyond the largest float; give exponents up to 308",
        ),
        (["--sweep", "C=linspace(0,1e400,2)"], f"'1e400' {_BEYOND}; give a number below 1.8e308"),
        (
            ["--sweep", "C=uniform(0,1e400)", "--samples", "1"],
            f"'1e400' {_BEYOND}; give a number below 1.8e308",
        ),
        (
            ["--sweep", "C=loguniform(1,1e400)", "--samples", "1"],
            f"'1e400' {_BEYOND}; give a number below 1.8e308",
        ),
        (
            ["--sweep", "C=uniform(-1e308,1e308)", "--samples", "1"],
            f"uniform() from -1e+308 to 1e+308 {_WIDE}",
        ),
        (["--sweep", "C=linspace(-1e308,1e308,3)"], f"linspace() from -1e+308 to 1e+308 {_WIDE}"),
        (
            ["--sweep", f"C=uniform(0,{10**400})", "--samples", "1"],
            "an int of 401 digits is beyond the largest float; give a number below 1.8e308",
        ),
    ],
)
def test_a_sweep_beyond_the_largest_float_is_refused_before_any_run(
    project: Path, args: list[str], message: str
) -> None:
    # Such points would be inf (stored as non-standard JSON "Infinity") or overflow inside.
    proc = run_expkit("run", "exp_svm.py::exp_svm", *args, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert error_lines(proc.stderr) == [f"ERROR: malformed --sweep {args[1]!r}: {message}"]
    assert not (project / "runs").exists()


def test_a_node_id_selects_one_point(project: Path) -> None:
    proc = run_expkit(
        "run", "exp_svm.py::exp_svm[C=1-kernel=linear]", "--sweep", "C=0.1,1",
        "--sweep", "kernel=rbf,linear", cwd=project,
    )  # fmt: skip
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    (run,) = stored_runs(project / "runs")
    assert run["meta"]["sweep"]["index"] == 3 and run["meta"]["sweep"]["size"] == 4
    assert run["result"] == 1


def test_k_selects_points_by_their_values(project: Path) -> None:
    proc = run_expkit(
        "--collect-only", "-q", "exp_svm.py::exp_svm", "--sweep", "C=0.1,1", "--sweep",
        "kernel=rbf,linear", "-k", "kernel=rbf and not C=0.1", cwd=project,
    )  # fmt: skip
    assert [line for line in proc.stdout.splitlines() if "::" in line] == [
        "exp_svm.py::exp_svm[C=1-kernel=rbf]"
    ]


def test_a_failing_point_does_not_stop_the_others(project: Path) -> None:
    proc = run_expkit("run", "-u", "exp_svm.py::exp_svm", "--sweep", "C=1,-1,2", cwd=project)
    assert proc.returncode == ExitCode.RUNS_FAILED
    statuses = [line.split()[2] for line in _lines(proc.stdout, r"^\[\d/3\]")]
    assert statuses == ["COMPLETED", "FAILED", "COMPLETED"]


def test_exitfirst_stops_and_says_how_many_did_not_run(project: Path) -> None:
    proc = run_expkit(
        "run", "-u", "-x", "exp_svm.py::exp_svm", "--sweep", "C=1,-1,2,3", cwd=project
    )
    assert proc.returncode == ExitCode.RUNS_FAILED
    assert len(_lines(proc.stdout, r"^\[\d/4\]")) == 2
    assert "stopping after 1 failure (-x): 2 experiments not run" in proc.stdout


def test_runs_list_sweep_lists_one_sweep(project: Path) -> None:
    run_expkit("run", "exp_svm.py::exp_svm", "--sweep", "C=1,2", cwd=project)
    run_expkit("run", "exp_svm.py::exp_svm", "--sweep", "C=3,4,5", cwd=project)
    runs = stored_runs(project / "runs")
    second = next(r["meta"]["sweep"]["id"] for r in runs if r["config"]["C"] == 3)
    proc = run_expkit("runs", "list", "--sweep", second, "--json", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["config"]["C"] for r in json.loads(proc.stdout)) == [3, 4, 5]


def test_skip_completed_runs_only_the_points_not_done(project: Path) -> None:
    args = ["run", "exp_svm.py::exp_svm", "--sweep", "C=1,2", "--seed", "5"]
    assert run_expkit(*args, cwd=project).returncode == 0
    more = ["run", "exp_svm.py::exp_svm", "--sweep", "C=1,2,3", "--seed", "5", "--skip-completed"]
    proc = run_expkit(*more, cwd=project)
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert len(_lines(proc.stdout, r"SKIPPED  id=\d+  0\.00s  completed before as run \d+")) == 2
    assert "1 completed, 2 skipped" in proc.stdout
    assert sorted(r["config"]["C"] for r in stored_runs(project / "runs")) == [1, 2, 3]
    # The seed is part of the config when it is given: another seed is another point.
    other = run_expkit(*more[:-3], "--seed", "6", "--skip-completed", cwd=project)
    assert "3 completed" in other.stdout


@pytest.mark.parametrize("store", ["sqlite:///fresh.db", "tinydb://fresh", "fresh"])
def test_skip_completed_into_a_store_not_made_yet_runs_every_point(
    project: Path, store: str
) -> None:
    if store.startswith("sqlite"):
        pytest.importorskip("sqlalchemy")
    args = ["run", "exp_svm.py::exp_svm", "--sweep", "C=1,2", "--store", store, "--skip-completed"]
    proc = run_expkit(*args, cwd=project)
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert "2 completed" in proc.stdout
    assert "2 skipped" in run_expkit(*args, cwd=project).stdout


def test_parametrize_stacks_as_a_product_with_pytest_ids(project: Path) -> None:
    proc = run_expkit("--collect-only", "-q", "exp_grid.py::exp_grid", cwd=project)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids == [f"exp_grid.py::exp_grid[mode={m}-x={x}]" for m in ("a", "b") for x in (1, 2, 3)]


def test_parametrize_with_several_names_zips_them(project: Path) -> None:
    proc = run_expkit("run", "exp_grid.py::exp_pairs", cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = sorted(r["result"] for r in stored_runs(project / "runs"))
    assert results == pytest.approx([0.0099, 0.09])
    assert "Added new config entry" not in proc.stderr


def test_the_command_line_wins_over_parametrize(project: Path) -> None:
    fixed = run_expkit("--collect-only", "-q", "exp_grid.py::exp_grid", "-o", "x=7", cwd=project)
    assert [line for line in fixed.stdout.splitlines() if "::" in line] == [
        "exp_grid.py::exp_grid[mode=a]",
        "exp_grid.py::exp_grid[mode=b]",
    ]
    swept = run_expkit(
        "run", "-u", "exp_grid.py::exp_grid", "--sweep", "x=10", "-k", "mode=b", cwd=project
    )
    assert "result=-10" in swept.stdout, swept.stdout


def test_a_malformed_parametrize_is_a_collection_error(tmp_path: Path) -> None:
    write_project(
        tmp_path,
        {
            "exp_bad.py": """\
                import expkit

                @expkit.parametrize("a, b", [(1, 2), (3,)])
                def exp_bad(a, b):
                    return a
                """
        },
    )
    proc = run_expkit("run", cwd=tmp_path)
    assert proc.returncode == ExitCode.INTERRUPTED
    assert "each value must be a tuple of 2 values, one per name; got (3,)" in proc.stdout


def test_a_point_ended_interrupted_stops_the_sweep_as_ctrl_c_does(tmp_path: Path) -> None:
    # Serial points stop at an interrupted one, as -n workers do; the rest are not started.
    project = write_project(
        tmp_path,
        {
            "exp_stop.py": """\
            import expkit

            @expkit.config
            def cfg():
                x = 0

            def exp_stop(x):
                if x == 1:
                    raise expkit.SacredInterrupt("stopped by hand")
                return x
            """
        },
    )
    proc = run_expkit("run", "exp_stop.py", "--sweep", "x=0,1,2,3", cwd=project)
    assert proc.returncode == ExitCode.INTERRUPTED, proc.stdout + proc.stderr
    runs = stored_runs(project / "runs")
    assert [r["status"] for r in runs] == ["COMPLETED", "INTERRUPTED"]
