"""``expkit tune``: Optuna studies whose trials are stored runs, resumed, pruned, parallel."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from cli_helpers import (
    EXPKIT,
    child_env,
    error_lines,
    fresh_python,
    run_expkit,
    stored_runs,
    stored_runs_so_far,
    write_project,
)
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from expkit.nodes import ExitCode
from expkit_plugins.tune.study import _alive

EXP = """\
import os
import time
from pathlib import Path

import expkit

@expkit.config
def cfg():
    x = 0.0
    y = 0.0
    seconds = 0.0  # how long a trial takes
    fail_above = 100.0  # a trial with x above this raises

def exp_quad(x, y, seconds, fail_above):
    print(f"trial in {os.getpid()}")
    if x > fail_above:
        raise ValueError(f"x={x} is too large")
    if seconds:
        time.sleep(seconds)
    while Path("hold").exists():  # a test holds the trial here
        time.sleep(0.02)
    return (x - 1) ** 2 + 0.01 * (y + 2) ** 2

def exp_scores(x):
    return {"acc": 1 - (x - 0.3) ** 2, "loss": (x - 0.7) ** 2}

def exp_kernel(kernel="rbf"):
    return {"rbf": 0.5, "linear": 1.0}[kernel]

def exp_curve(k, _run):
    # trial k logs k at every step: the ones above the median are pruned at their first step
    for step in range(20):
        _run.log_scalar("loss", float(k) + step / 100)
        time.sleep(0.01)
    return k
"""

QUAD = ("tune", "exp_quad.py::exp_quad", "--sweep", "x=uniform(-4,4)", "--sweep", "y=uniform(-4,4)")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "proj", {"exp_quad.py": EXP})


def _study(project: Path, name: str = "exp_quad.py::exp_quad") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(project / "runs" / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _runs(project: Path) -> list[dict]:
    return stored_runs(project / "runs")


def _tune(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_expkit(*args, cwd=project, timeout=120)


def test_a_study_finds_the_minimum_of_the_stored_results(project: Path) -> None:
    proc = _tune(project, *QUAD, "--trials", "8", "--sampler", "random", "--seed", "1")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    runs = _runs(project)
    assert [r["meta"]["study"] for r in runs] == [
        {"name": "exp_quad.py::exp_quad", "trial": n} for n in range(8)
    ]
    assert all(r["status"] == "COMPLETED" for r in runs)
    best_run = min(runs, key=lambda r: r["result"])
    study = _study(project)
    assert study.best_value == best_run["result"]
    assert study.best_trial.params == {k: best_run["config"][k] for k in ("x", "y")}
    assert str(study.best_trial.user_attrs["run_id"]) == best_run["_dir"]
    # Every trial's value is its run's result.
    values = {t.number: t.value for t in study.trials}
    assert values == {r["meta"]["study"]["trial"]: r["result"] for r in runs}
    best = study.best_trial
    assert f"best trial {best.number} (lowest result): " in proc.stdout
    assert f"result={best_run['result']:.6g}  run {best_run['_dir']}\n" in proc.stdout
    assert f"rerun it: expkit rerun {best_run['_dir']}\n" in proc.stdout
    assert "study 'exp_quad.py::exp_quad': 8 of 8 trials (8 completed), 8 in this session" in (
        proc.stdout
    )


def test_the_cmaes_sampler_chooses_the_trials_after_the_first(project: Path) -> None:
    proc = _tune(project, *QUAD, "--trials", "10", "--sampler", "cmaes", "--seed", "3")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert len(_runs(project)) == 10
    study = _study(project)
    chosen = [t.number for t in study.trials if any(k.startswith("cma:") for k in t.system_attrs)]
    assert chosen == list(range(1, 10))  # the first point is drawn at random, as Optuna's


def test_the_same_command_goes_on_to_more_trials(project: Path) -> None:
    first = _tune(project, *QUAD, "--trials", "3", "--seed", "2")
    assert first.returncode == ExitCode.OK, first.stdout + first.stderr
    again = _tune(project, *QUAD, "--trials", "5", "--seed", "2")
    assert again.returncode == ExitCode.OK, again.stdout + again.stderr
    assert "3 of 5 trials done before" in again.stdout
    assert "[2/2]" in again.stdout
    runs = _runs(project)
    assert sorted(r["meta"]["study"]["trial"] for r in runs) == [0, 1, 2, 3, 4]
    # The sampler's seed moves on with the study: no point is tried twice.
    assert len({(r["config"]["x"], r["config"]["y"]) for r in runs}) == 5
    done = _tune(project, *QUAD, "--trials", "5", "--seed", "2")
    assert done.returncode == ExitCode.OK
    assert len(_runs(project)) == 5
    assert "5 of 5 trials done before" in done.stdout


def test_maximize_a_key_of_a_dict_result(project: Path) -> None:
    args = ("tune", "exp_quad.py::exp_scores", "--sweep", "x=linspace(0,1,5)")
    proc = _tune(
        project, *args, "--sampler", "grid", "--trials", "9", "--maximize", "--objective", "acc"
    )
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    runs = _runs(project)
    # The grid has 5 points: each once, however many trials were asked for.
    assert sorted(r["config"]["x"] for r in runs) == [0.0, 0.25, 0.5, 0.75, 1.0]
    best = max(runs, key=lambda r: r["result"]["acc"])
    assert best["config"]["x"] == 0.25
    study = _study(project, "exp_quad.py::exp_scores")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.best_value == best["result"]["acc"]
    assert f"best trial {study.best_trial.number} (highest acc): x=0.25  acc=" in proc.stdout


def test_a_result_with_no_number_stops_the_search_and_says_what_to_give(project: Path) -> None:
    args = ("tune", "exp_quad.py::exp_scores", "--sweep", "x=uniform(0,1)", "--trials", "5")
    proc = _tune(project, *args)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert len(_runs(project)) == 1  # the mistake is said after the first trial, not the fifth
    assert re.search(
        r"^ERROR: trial 0 \(run 1\) returned \{'acc': .*\}, no number to tune; give "
        r"--objective KEY, one of: acc, loss$",
        proc.stdout,
        re.M,
    )
    trial = _study(project, "exp_quad.py::exp_scores").trials[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["expkit_uncounted"] == "no number"


def test_the_objective_is_the_last_value_of_a_metric(project: Path) -> None:
    args = ("tune", "exp_quad.py::exp_curve", "--sweep", "k=0,3,1", "--sampler", "grid")
    proc = _tune(project, *args, "--trials", "3", "--objective", "loss", "--pruner", "none")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    study = _study(project, "exp_quad.py::exp_curve")
    assert sorted(t.value for t in study.trials) == [0.19, 1.19, 3.19]
    assert study.best_trial.params == {"k": 0}


def test_choice_of_bare_words_is_the_space_of_a_study(project: Path) -> None:
    args = ("tune", "exp_quad.py::exp_kernel", "--sweep", "kernel=choice(rbf,linear)")
    proc = _tune(project, *args, "--trials", "6", "--sampler", "random", "--seed", "1")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    kernels = [r["config"]["kernel"] for r in _runs(project)]
    assert len(kernels) == 6 and set(kernels) == {"rbf", "linear"}
    assert "best trial" in proc.stdout and "kernel=rbf  result=0.5" in proc.stdout


def test_a_grid_keeps_values_that_compare_equal_apart(project: Path) -> None:
    # 0 == 0.0 == False, to Python and to Optuna; `expkit run` makes them 3 points, so does tune.
    args = ("tune", "exp_quad.py::exp_curve", "--sweep", "k=0,0.0,False", "--sampler", "grid")
    proc = _tune(project, *args, "--trials", "5", "--objective", "loss", "--pruner", "none")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert sorted(repr(r["config"]["k"]) for r in _runs(project)) == ["0", "0.0", "False"]
    for number, text in enumerate(["0", "0.0", "False"]):
        assert f"exp_curve[trial={number}-k={text}]  COMPLETED" in proc.stdout
    assert "3 of 5 trials (3 completed), 3 in this session" in proc.stdout
    again = _tune(project, *args, "--trials", "5", "--objective", "loss", "--pruner", "none")
    assert again.returncode == ExitCode.OK, again.stdout + again.stderr
    assert len(_runs(project)) == 3  # the grid is done: each value ran once


def test_a_failing_trial_is_failed_and_the_study_goes_on(project: Path) -> None:
    args = (*QUAD, "--trials", "8", "--sampler", "random", "--seed", "3", "-o", "fail_above=0")
    proc = _tune(project, *args)
    assert proc.returncode == ExitCode.RUNS_FAILED, proc.stdout + proc.stderr
    runs = _runs(project)
    failed = [r for r in runs if r["status"] == "FAILED"]
    assert len(runs) == 8 and failed
    assert all(r["config"]["x"] > 0 for r in failed)
    assert "ValueError: x=" in proc.stdout
    states = {t.number: t.state for t in _study(project).trials}
    for run in runs:
        expected = TrialState.FAIL if run["status"] == "FAILED" else TrialState.COMPLETE
        assert states[run["meta"]["study"]["trial"]] == expected
    assert f"8 of 8 trials ({8 - len(failed)} completed, {len(failed)} failed)" in proc.stdout


def test_pruned_trials_end_early_and_runs_list_shows_them(project: Path) -> None:
    args = ("tune", "exp_quad.py::exp_curve", "--sweep", "k=range(8)", "--sampler", "grid")
    proc = _tune(project, *args, "--trials", "8", "--objective", "loss")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    runs = {r["config"]["k"]: r for r in _runs(project)}
    # The median pruner lets its first 5 trials run; the others are worse than their median.
    assert {k: r["status"] for k, r in runs.items()} == {
        **dict.fromkeys(range(5), "COMPLETED"),
        **dict.fromkeys(range(5, 8), "PRUNED"),
    }
    metrics = json.loads((project / "runs" / runs[6]["_dir"] / "metrics.json").read_text())
    assert metrics["loss"]["values"] == [6.0]  # stopped at the point that condemned it
    states = [t.state for t in _study(project, "exp_quad.py::exp_curve").trials]
    assert states.count(TrialState.PRUNED) == 3
    listing = run_expkit("runs", "list", "--status", "PRUNED", cwd=project)
    assert listing.returncode == ExitCode.OK, listing.stderr
    assert sorted(re.findall(r"^(\d+)\s+PRUNED", listing.stdout, re.M)) == sorted(
        runs[k]["_dir"] for k in (5, 6, 7)
    )
    assert "5 completed, 3 pruned" in proc.stdout


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["here", "n2"])
def test_a_pruned_trial_is_no_failure_for_exitfirst(project: Path, workers: list[str]) -> None:
    args = ("tune", "exp_quad.py::exp_curve", "--sweep", "k=range(12)", "--sampler", "grid")
    proc = _tune(project, *args, "--trials", "12", "--objective", "loss", "-x", *workers)
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    statuses = [r["status"] for r in _runs(project)]
    assert len(statuses) == 12 and "PRUNED" in statuses  # -x went on past the pruned ones
    assert "stopping after" not in proc.stdout


def test_importance_weighs_each_parameter(project: Path) -> None:
    proc = _tune(project, *QUAD, "--trials", "12", "--sampler", "random", "--seed", "4")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    shown = run_expkit("tune", "--importance", "--study", "exp_quad.py::exp_quad", cwd=project)
    assert shown.returncode == ExitCode.OK, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == (
        "parameter importance (fANOVA) in study 'exp_quad.py::exp_quad', 12 completed trials:"
    )
    weights = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert set(weights) == {"x", "y"} and weights["x"] > 0.9 > weights["y"]
    assert sum(weights.values()) == pytest.approx(1.0, abs=0.002)
    missing = run_expkit("tune", "--importance", "--study", "nope", cwd=project)
    assert missing.returncode == ExitCode.USAGE_ERROR
    assert error_lines(missing.stderr) == [
        f"ERROR: no study 'nope' in {project / 'runs' / 'optuna.journal'}; "
        "the studies there: 'exp_quad.py::exp_quad'"
    ]


@pytest.mark.parametrize(
    ("store", "missing"),
    [
        ("nonexist", "there is no nonexist/optuna.journal"),
        ("sqlite:///runs.db", "there is no database file runs.db"),
        ("mongodb://127.0.0.1:9/db", "there is no {project}/.expkit/optuna-"),
    ],
    ids=["folder", "sqlite", "other"],
)
def test_importance_of_a_store_without_a_study_makes_none(
    project: Path, store: str, missing: str
) -> None:
    proc = run_expkit("tune", "--importance", "--store", store, "--study", "x", cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"ERROR: no study 'x': {missing.format(project=project)}"), line
    assert line.endswith(
        f", so nothing was tuned with --store {store}; give the --store of the study's runs"
    )
    # Only reading: no folder, journal file or database was made.
    assert sorted(p.name for p in project.iterdir()) == ["exp_quad.py", "pyproject.toml"]


@pytest.mark.slow
def test_two_workers_take_the_next_trial_as_soon_as_they_are_free(project: Path) -> None:
    # The first trial (x=3) takes 1.5 s, the others 0.1 s: the other worker does not wait
    # for it, it runs trial after trial meanwhile.
    (project / "exp_quad.py").write_text(
        EXP.replace("if seconds:", "seconds = 1.5 if x == 3 else 0.1\n    if seconds:"),
        encoding="utf-8",
    )
    args = ("tune", "exp_quad.py::exp_quad", "--sweep", "x=3,0,1,2,4,5,6,7", "--sampler", "grid")
    proc = _tune(project, *args, "--trials", "8", "-n", "2")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    runs = _runs(project)
    assert sorted(r["meta"]["study"]["trial"] for r in runs) == list(range(8))  # none twice
    assert sorted(r["config"]["x"] for r in runs) == list(range(8))
    assert len({re.search(r"trial in (\d+)", r["cout"]).group(1) for r in runs}) == 2
    (slow,) = [r for r in runs if r["config"]["x"] == 3]
    meanwhile = [r for r in runs if slow["start_time"] < r["stop_time"] < slow["stop_time"]]
    assert len(meanwhile) >= 5, [r["config"]["x"] for r in meanwhile]


def _wait_for(what: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _count(project: Path, status: str) -> int:
    return sum(r["status"] == status for r in stored_runs_so_far(project / "runs"))


WORKERS = pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["in-process", "n2"])


@pytest.mark.slow
@WORKERS
def test_the_driver_killed_loses_no_finished_trial_and_counts_none_twice(
    project: Path, workers: tuple
) -> None:
    args = (*QUAD, "--trials", "6", "--sampler", "random", "--seed", "5", *workers)
    slots = 2 if workers else 1
    cmd = [EXPKIT, *args, "-o", "seconds=0.2"]
    proc = subprocess.Popen(cmd, cwd=project, env=child_env(), stdout=subprocess.DEVNULL)
    _wait_for(lambda: _count(project, "COMPLETED") >= 2)
    (project / "hold").touch()  # the trials running now, and the next, wait in it
    _wait_for(lambda: _count(project, "RUNNING") == slots)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    held = {r["meta"]["study"]["trial"] for r in _runs(project) if r["status"] == "RUNNING"}
    assert len(held) == slots
    done = _count(project, "COMPLETED")
    stored = len(_runs(project))
    again = subprocess.Popen(cmd, cwd=project, env=child_env(), stdout=subprocess.PIPE, text=True)
    if workers:
        # The killed driver's workers go on with their trials: the next session waits for
        # them and tells the study how they ended.
        for _ in range(slots):
            line = again.stdout.readline()  # type: ignore[union-attr]
            while not line.startswith("waiting for trial"):
                assert line, "no 'waiting for trial' line"
                line = again.stdout.readline()  # type: ignore[union-attr]
    (project / "hold").unlink()
    out, _ = again.communicate(timeout=60)
    assert again.returncode == ExitCode.OK, out
    runs = _runs(project)
    # The header counts after the held trials are settled: finished by the orphans (-n), or
    # not counted (their runs died with the driver); the end counts this session's alone.
    before = done + slots if workers else done
    assert f": {before} of 6 trials done before\n" in out
    assert f"6 of 6 trials (6 completed), {len(runs) - stored} in this session\n" in out
    completed = [r for r in runs if r["status"] == "COMPLETED"]
    by_trial = {r["meta"]["study"]["trial"]: r for r in completed}
    assert len(by_trial) == len(completed) == 6  # no trial stored twice as COMPLETED
    lost = [r for r in runs if r["status"] != "COMPLETED"]
    study = _study(project)
    counted = [t for t in study.trials if "expkit_uncounted" not in t.user_attrs]
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted)
    assert {t.number: t.value for t in counted} == {n: r["result"] for n, r in by_trial.items()}
    assert study.best_value == min(r["result"] for r in completed)
    if workers:
        assert lost == [] and held <= set(by_trial)  # finished by the orphans, told once
        # Their trials stored, the orphans see their driver gone and end: none is left
        # waiting forever on a socket that a sibling still holds open.
        orphans = {study.trials[n].user_attrs["expkit"]["worker"] for n in held}
        _wait_for(lambda: not any(_alive(worker) for worker in orphans))
    else:
        # The run died with its driver: marked INTERRUPTED, its trial does not count.
        assert [(r["meta"]["study"]["trial"], r["status"]) for r in lost] == [
            (t, "INTERRUPTED") for t in held
        ]
        assert study.trials[held.pop()].user_attrs["expkit_uncounted"] == "interrupted"


@pytest.mark.slow
@WORKERS
def test_ctrl_c_interrupts_the_running_trials_and_the_same_command_resumes(
    project: Path, workers: tuple
) -> None:
    args = (*QUAD, "--trials", "4", "--sampler", "random", "--seed", "6", *workers)
    slots = 2 if workers else 1
    (project / "hold").touch()
    proc = subprocess.Popen(
        [EXPKIT, *args], cwd=project, env=child_env(), stdout=subprocess.PIPE, text=True
    )
    _wait_for(lambda: _count(project, "RUNNING") == slots)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, out
    assert [r["status"] for r in _runs(project)] == ["INTERRUPTED"] * slots
    assert "interrupted: the same command goes on with the study" in out
    (project / "hold").unlink()
    again = _tune(project, *args)
    assert again.returncode == ExitCode.OK, again.stdout + again.stderr
    assert "0 of 4 trials done before" in again.stdout
    statuses = [r["status"] for r in _runs(project)]
    assert statuses == ["INTERRUPTED"] * slots + ["COMPLETED"] * 4
    study = _study(project)
    for trial in study.trials[:slots]:
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["expkit_uncounted"] == "interrupted"


@pytest.mark.slow
def test_on_dask_with_pruning(project: Path) -> None:
    args = ("tune", "exp_quad.py::exp_curve", "--sweep", "k=range(7)", "--sampler", "grid")
    proc = _tune(
        project, *args, "--trials", "7", "--objective", "loss", "--dask", "local", "-n", "1"
    )
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    runs = {r["config"]["k"]: r["status"] for r in _runs(project)}
    assert runs == {**dict.fromkeys(range(5), "COMPLETED"), 5: "PRUNED", 6: "PRUNED"}


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
            start_new_session=True,  # its own group: the end takes its children too
        )  # fmt: skip


@pytest.fixture
def scheduler_file(tmp_path: Path) -> Iterator[Path]:
    """A Dask scheduler and one worker (one thread) as processes on 127.0.0.1."""
    pytest.importorskip("distributed")
    from distributed import Client

    dask, file = str(Path(sys.executable).with_name("dask")), tmp_path / "scheduler.json"
    procs = [
        _start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                "--scheduler-file", str(file)], tmp_path / "scheduler.log")
    ]  # fmt: skip
    try:
        _wait_for(file.exists, timeout=30)
        procs.append(
            _start([dask, "worker", "--scheduler-file", str(file), "--nworkers", "1",
                    "--nthreads", "1", "--no-dashboard", "--local-directory", str(tmp_path)],
                   tmp_path / "worker.log")
        )  # fmt: skip
        with Client(scheduler_file=str(file), timeout="30s") as client:
            client.wait_for_workers(1, timeout=30)
        yield file
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.slow
def test_pruning_on_a_scheduler_leaves_no_metadata_on_it(
    project: Path, scheduler_file: Path
) -> None:
    from distributed import Client

    args = ("tune", "exp_quad.py::exp_curve", "--sweep", "k=range(7)", "--sampler", "grid")
    proc = _tune(
        project, *args, "--trials", "7", "--objective", "loss", "--dask", str(scheduler_file)
    )
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    assert "5 completed, 2 pruned" in proc.stdout
    with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
        # The scheduler forgets the driver's tasks soon after the driver has gone.
        deadline = time.monotonic() + 10
        while client.get_metadata([]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get_metadata([]) == {}


def test_timeout_starts_no_trial_after_it_and_the_study_goes_on_later(project: Path) -> None:
    args = (*QUAD, "--trials", "50", "--sampler", "random", "-o", "seconds=0.3")
    proc = _tune(project, *args, "--timeout", "0.5")
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    first = len(_runs(project))
    assert 1 <= first <= 3
    assert "--timeout reached: no trial started after 0.5 s" in proc.stdout
    again = _tune(project, *args, "--timeout", "0.5")
    assert f"{first} of 50 trials done before" in again.stdout
    assert len(_runs(project)) > first


def test_the_study_of_a_sql_store_is_in_its_database(project: Path) -> None:
    url = f"sqlite:///{project / 'runs.db'}"
    proc = _tune(project, *QUAD, "--trials", "3", "--store", url)
    assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="exp_quad.py::exp_quad", storage=url)
    assert len(study.trials) == 3
    assert f"rerun it: expkit rerun {study.best_trial.user_attrs['run_id']} --store {url}" in (
        proc.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (*QUAD, "--trials", "3", "--sampler", "grid"),
            "--sampler grid takes lists of values: --sweep x=uniform(...) draws them; give a "
            "comma list, range(), linspace() or logspace()",
        ),
        (QUAD, "say how many trials the study is to have: --trials N"),
        (
            (*QUAD, "--trials", "2", "--minimize", "--maximize"),
            "give --minimize or --maximize, not both",
        ),
        (
            (*QUAD, "--trials", "2", "-o", "x=1"),
            "x is both fixed with -o and tuned with --sweep; drop one",
        ),
        (
            ("tune", "exp_quad.py::exp_quad", "--sweep", "z=uniform(0,1)", "--trials", "2"),
            "--sweep z=...: no function of exp_quad.py::exp_quad takes 'z'; its entries: "
            "x, y, seconds, fail_above (-f tunes it anyway)",
        ),
        ((*QUAD, "--trials", "2", "-u"), "expkit tune stores every trial: drop -u"),
        (
            (*QUAD, "--trials", "2", "--sample-seed", "1"),
            "--sample-seed is for random sweeps of 'expkit run'; --seed N seeds tune's sampler",
        ),
        (
            (*QUAD, "--trials", "2", "--collect-only"),
            "--collect-only is for 'expkit run'; tune runs one experiment's trials",
        ),
    ],
)
def test_usage_errors_say_what_to_do(project: Path, args: tuple, message: str) -> None:
    proc = run_expkit(*args, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert error_lines(proc.stderr)[0].startswith(f"ERROR: {message}")
    assert not (project / "runs").exists() or not _runs(project)


def test_another_search_space_needs_another_study(project: Path) -> None:
    assert _tune(project, *QUAD, "--trials", "1").returncode == ExitCode.OK
    args = ("tune", "exp_quad.py::exp_quad", "--sweep", "x=uniform(-1,1)", "--trials", "2")
    proc = run_expkit(*args, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR
    assert error_lines(proc.stderr) == [
        f"ERROR: study 'exp_quad.py::exp_quad' in {project / 'runs' / 'optuna.journal'} was "
        "made by another search: --sweep x=uniform(-4,4) --sweep y=uniform(-4,4); this "
        "command asks for --sweep x=uniform(-1,1): give the same options, or another "
        "--study NAME"
    ]
    other = _tune(project, *args, "--study", "narrow")
    assert other.returncode == ExitCode.OK, other.stderr
    studies = [r["meta"]["study"] for r in _runs(project)]
    assert studies[1:] == [{"name": "narrow", "trial": 0}, {"name": "narrow", "trial": 1}]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            "x=uniform(0,1e400)",
            "'1e400' holds a number beyond the largest float (it would be inf, which JSON "
            "cannot store); give a number below 1.8e308",
        ),
        (
            "x=uniform(-1e308,1e308)",
            "uniform() from -1e+308 to 1e+308 spans more than the largest float (1.8e308); "
            "give a narrower range",
        ),
        (
            "x=logspace(0,400,3)",
            "logspace() gives 10**400, beyond the largest float; give exponents up to 308",
        ),
    ],
)
def test_a_space_beyond_the_largest_float_is_refused_before_the_study(
    project: Path, sweep: str, message: str
) -> None:
    args = ("tune", "exp_quad.py::exp_quad", "--sweep", sweep, "--trials", "1")
    proc = run_expkit(*args, cwd=project)
    assert proc.returncode == ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert error_lines(proc.stderr) == [f"ERROR: malformed --sweep {sweep!r}: {message}"]
    assert not (project / "runs").exists()  # no run, no study


def test_a_mistyped_objective_does_not_lock_the_study_name(project: Path) -> None:
    typo = _tune(project, *QUAD, "--trials", "3", "--objective", "acc")
    assert typo.returncode == ExitCode.USAGE_ERROR, typo.stdout + typo.stderr
    assert "has no number as 'acc'" in typo.stdout
    # The corrected command takes the study over: its one trial did not count.
    fixed = _tune(project, *QUAD, "--trials", "3")
    assert fixed.returncode == ExitCode.OK, fixed.stdout + fixed.stderr
    assert (
        "study 'exp_quad.py::exp_quad': no trial of its earlier search (--sweep "
        "x=uniform(-4,4) --sweep y=uniform(-4,4) --objective acc) counts; it takes this "
        "command's search\n"
    ) in fixed.stdout
    assert "3 of 3 trials (3 completed), 3 in this session" in fixed.stdout
    runs = _runs(project)
    assert len(runs) == 4  # the mistaken trial's run is kept
    assert [r["meta"]["study"]["trial"] for r in runs] == [0, 1, 2, 3]
    study = _study(project)
    assert study.user_attrs["expkit"]["objective"] is None
    # Now that trials count, the name holds this search.
    again = run_expkit(*QUAD, "--trials", "4", "--objective", "acc", cwd=project)
    assert again.returncode == ExitCode.USAGE_ERROR
    assert error_lines(again.stderr)[0].startswith(
        "ERROR: study 'exp_quad.py::exp_quad' in "
        f"{project / 'runs' / 'optuna.journal'} was made by another search: --sweep "
        "x=uniform(-4,4) --sweep y=uniform(-4,4); this command asks for --sweep "
        "x=uniform(-4,4) --sweep y=uniform(-4,4) --objective acc"
    )
    assert len(_runs(project)) == 4


def test_without_optuna_tune_names_the_extra_and_nothing_else_imports_it(
    project: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker" / "optuna"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named optuna')\n")
    env = child_env(PYTHONPATH=str(blocker.parent))
    proc = run_expkit(*QUAD, "--trials", "2", cwd=project, env=env)
    assert proc.returncode == ExitCode.USAGE_ERROR
    assert error_lines(proc.stderr) == [
        "ERROR: expkit tune needs Optuna: pip install 'expkit[tune]'"
    ]
    ran = run_expkit("run", "exp_quad.py::exp_quad", cwd=project, env=env)
    assert ran.returncode == ExitCode.OK, ran.stderr
    code = "import sys, expkit, expkit_plugins.tune; print('optuna' in sys.modules)"
    assert fresh_python("-c", code).strip() == "False"
