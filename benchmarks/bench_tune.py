"""``expkit tune`` side by side with Hydra's Optuna sweeper and with a plain Optuna loop.

Usage: ``python benchmarks/bench_tune.py [--repeat R] [--hydra-python PATH] [--quick]
[--output DIR]``.
``tox -e bench-tune-hydra,bench-tune`` makes both environments: Hydra's Optuna sweeper pins
``optuna<3``, so Hydra lives in an environment of its own (``bench-tune-hydra``) and this
script runs it through that environment's interpreter.

Workloads, the median of ``--repeat`` runs:

- T1: 40 trials of one parameter ``x`` drawn uniformly from [-5, 5] by Optuna's random
  sampler (seed 1); trial k (its number, from 0) sleeps ``DURATIONS[k]``, 40 times drawn
  once from [0.1, 1] s (seed 1), and returns ``(x - 1) ** 2``; 4 parallel workers. The
  tools draw different ``x`` (Hydra's Optuna is older), so the sleeps follow the trial
  number: every tool sleeps the same 40 times. expkit: ``expkit tune ... -n 4`` into a file
  store, every trial stored and told. Hydra 1.3.8: ``--multirun`` with its Optuna sweeper
  (``n_jobs=4``) and its joblib launcher (``n_jobs=4``). Plain Optuna:
  ``study.optimize(objective, n_trials=40, n_jobs=4)`` in one process, in memory. Each
  row is a whole process from start to exit; *busy* is the time the trials slept over
  4 x the wall time. Beside them, the best any scheduler could do with those sleeps: the
  longest-first packing on 4 workers, and the strict lower bound max(sum / 4, longest).
  Target: expkit's wall time <= 0.4 x Hydra's (reachable only if the lower bound is).
- T2: what a trial costs beyond Optuna's own loop: a trial that returns at once, one after
  another, 20 and then 120 trials in fresh processes; the cost of a trial is the difference
  over the 100 more. expkit: ``expkit tune`` in one process into a file store, the study in
  its journal file. Plain Optuna: ``study.optimize`` of the same objective, in memory and in
  a journal file. Target: expkit's cost a trial minus plain Optuna's <= 20 ms.

Results go to ``benchmarks/results_tune.md`` and ``results_tune.json`` (with ``--quick``, to
``benchmarks/_work/``). The child processes and the machine's details are handled as in
``run.py``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_sweeps import _completed
from run import _machine, _spawn, _versions

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TRIALS, WORKERS = 40, 4
# What trial k sleeps, in every tool: drawn once from a seed, so every run does the same work.
_draw = random.Random(1)
DURATIONS = tuple(round(0.1 + 0.9 * _draw.random(), 3) for _ in range(TRIALS))

SLEEP = f"""\
import time

DURATIONS = {DURATIONS!r}


def sleep_for(k):
    \"\"\"Sleep as long as trial k of every tool does, and note it.\"\"\"
    time.sleep(DURATIONS[k])
    with open("slept.log", "a") as log:
        log.write(f"{{k}} {{DURATIONS[k]}}\\n")
"""

EXPKIT_APP = """\
import expkit
from sleep import sleep_for


@expkit.config
def cfg():
    x = 0.0


def exp_sleep(x, _run):
    sleep_for(_run.meta_info["study"]["trial"])
    return (x - 1) ** 2


def exp_noop(x):
    return (x - 1) ** 2
"""

HYDRA_APP = """\
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from sleep import sleep_for


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    os.chdir(cfg.here)  # Hydra 1.3 starts each job in its own folder
    sleep_for(HydraConfig.get().job.num)  # the sweeper numbers its jobs as its trials
    return (float(cfg.x) - 1) ** 2


if __name__ == "__main__":
    main()
"""

HYDRA_CONFIG = f"""\
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: random
  - override hydra/launcher: joblib
  - _self_

x: 0.0
here: .

hydra:
  sweeper:
    direction: minimize
    study_name: bench
    n_trials: {TRIALS}
    n_jobs: {WORKERS}
    sampler:
      seed: 1
    params:
      x: interval(-5, 5)
  launcher:
    n_jobs: {WORKERS}
"""

PLAIN = """\
import sys

import optuna
from sleep import sleep_for

optuna.logging.set_verbosity(optuna.logging.WARNING)
trials, jobs, where, sleeping = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]


def objective(trial):
    x = trial.suggest_float("x", -5, 5)
    if sleeping == "sleep":
        sleep_for(trial.number)
    return (x - 1) ** 2


storage = None
if where == "journal":
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend("plain.journal"))
study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=1))
study.optimize(objective, n_trials=trials, n_jobs=jobs)
assert len(study.trials) == trials
"""


def _timed(argv: list[str], cwd: Path) -> float:
    """The wall time of ``argv`` run in ``cwd``; a failure is a RuntimeError with its output."""
    sample = _spawn(argv, cwd, cwd / "logs")
    if sample["rc"] != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({sample['rc']}):\n{sample['stdout'][-1500:]}"
            f"{sample['stderr'][-1500:]}"
        )
    return sample["wall"]


def _fresh(work: Path) -> None:
    for name in ("runs", "multirun", "outputs", "slept.log", "plain.journal"):
        path = work / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _slept(work: Path) -> tuple[list[int], float]:
    """The trial numbers that slept, and the seconds they slept in all."""
    pairs = [line.split() for line in (work / "slept.log").read_text().splitlines()]
    return sorted(int(k) for k, _ in pairs), sum(float(s) for _, s in pairs)


def _every_trial_stored(work: Path) -> None:
    done = _completed(work / "runs")
    if done != TRIALS:
        raise RuntimeError(f"{done} of {TRIALS} trials stored as COMPLETED")


def _packed(durations: tuple[float, ...], workers: int) -> float:
    """The wall time of the longest-first packing of ``durations`` on ``workers``."""
    loads = [0.0] * workers
    for seconds in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += seconds
    return max(loads)


def _lower_bound(durations: tuple[float, ...], workers: int) -> float:
    """No schedule of ``durations`` on ``workers`` ends sooner: max(sum / workers, longest)."""
    return max(sum(durations) / workers, max(durations))


def _t1_row(name: str, argv: list[str], work: Path, repeat: int, check: object = None) -> dict:
    samples, busy = [], []
    for _ in range(repeat):
        _fresh(work)
        wall = _timed(argv, work)
        numbers, slept = _slept(work)
        if numbers != list(range(TRIALS)):
            # Then the tools would not have slept the same times.
            raise RuntimeError(f"{name}: trials {numbers} ran, not 0-{TRIALS - 1} once each")
        if callable(check):
            check()
        samples.append(wall)
        busy.append(slept / (WORKERS * wall))
    row = {"name": name, "samples": samples, "median": statistics.median(samples)}
    row["busy"] = statistics.median(busy)
    print(f"T1 {name:<44} {row['median']:7.2f} s  busy {row['busy']:.0%}  {samples}", flush=True)
    return row


def _t2_row(name: str, argv_for: object, work: Path, repeat: int, small: int, big: int) -> dict:
    costs, walls = [], []
    for _ in range(repeat):
        _fresh(work)
        short = _timed(argv_for(small), work)
        _fresh(work)
        long = _timed(argv_for(big), work)
        costs.append((long - short) / (big - small))
        walls.append(long)
    row = {"name": name, "cost_samples": costs, "cost": statistics.median(costs)}
    row["best"] = min(costs)  # the least disturbed by other work on the machine
    row["wall"] = statistics.median(walls)
    print(f"T2 {name:<44} {row['cost'] * 1000:7.2f} ms a trial  {costs}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hydra-python", default=None, help="the interpreter Hydra is in")
    parser.add_argument("--quick", action="store_true", help="every row once, T2 small")
    parser.add_argument("--output", type=Path, default=None, help="where the results go")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    small, big = (10, 40) if args.quick else (20, 120)
    output = args.output or (HERE / "_work" if args.quick else HERE)
    output.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="expkit-bench-tune-"))
    (work / "logs").mkdir()
    (work / "pyproject.toml").write_text("[tool.expkit]\n")
    (work / "sleep.py").write_text(SLEEP)
    (work / "exp_tune.py").write_text(EXPKIT_APP)
    (work / "app.py").write_text(HYDRA_APP)
    (work / "config.yaml").write_text(HYDRA_CONFIG)
    (work / "plain.py").write_text(PLAIN)
    expkit, python = str(BIN / "expkit"), sys.executable
    print(f"in {work}; load average {os.getloadavg()}", flush=True)
    bounds = {
        "durations": DURATIONS,
        "sum": sum(DURATIONS),
        "packed": _packed(DURATIONS, WORKERS),
        "lower_bound": _lower_bound(DURATIONS, WORKERS),
    }
    print(
        f"T1 sleeps {bounds['sum']:.2f} s in all; longest-first packing on {WORKERS} workers "
        f"{bounds['packed']:.2f} s, lower bound {bounds['lower_bound']:.2f} s",
        flush=True,
    )

    def tune(name: str, trials: int, *extra: str) -> list[str]:
        space = ("--sweep", "x=uniform(-5,5)", "--sampler", "random", "--seed", "1")
        return [
            expkit,
            "tune",
            f"exp_tune.py::{name}",
            *space,
            "--trials",
            str(trials),
            "-q",
            *extra,
        ]

    _timed([expkit, "--collect-only", "-q", "exp_tune.py"], work)  # warm the caches once
    t1 = [
        _t1_row(
            f"expkit tune -n {WORKERS}",
            tune("exp_sleep", TRIALS, "-n", str(WORKERS)),
            work,
            repeat,
            lambda: _every_trial_stored(work),
        ),
        _t1_row(
            f"plain Optuna, study.optimize(n_jobs={WORKERS})",
            [python, "plain.py", str(TRIALS), str(WORKERS), "memory", "sleep"],
            work,
            repeat,
        ),
    ]
    hydra = None
    if args.hydra_python and Path(args.hydra_python).exists():
        hydra_argv = [args.hydra_python, "app.py", "--multirun", f"hydra.sweep.dir={work}/multirun"]
        try:
            hydra = _t1_row(
                f"Hydra Optuna sweeper, joblib n_jobs={WORKERS}",
                [*hydra_argv, f"here={work}"],
                work,
                repeat,
            )
            t1.append(hydra)
        except RuntimeError as exc:
            print(f"Hydra: not available ({str(exc).splitlines()[0]})")
    else:
        print(
            "Hydra: not measured (give --hydra-python, or run tox -e bench-tune-hydra,bench-tune)"
        )
    t2 = [
        _t2_row(
            "expkit tune, one process, file store",
            lambda n: tune("exp_noop", n),
            work,
            repeat,
            small,
            big,
        )
    ]
    for where in ("memory", "journal"):
        t2.append(
            _t2_row(
                f"plain Optuna study.optimize, {where}",
                lambda n, where=where: [python, "plain.py", str(n), "1", where, "noop"],
                work,
                repeat,
                small,
                big,
            )
        )
    checks = []
    by_name = {row["name"]: row for row in t1}
    ours = by_name[f"expkit tune -n {WORKERS}"]["median"]
    if hydra is not None:
        ratio = ours / hydra["median"]
        checks.append(("T1 expkit wall / Hydra wall", f"{ratio:.2f}", "<= 0.4", ratio <= 0.4))
        best = bounds["lower_bound"] / hydra["median"]
        checks.append(
            ("T1 lower bound / Hydra wall", f"{best:.2f}", "<= 0.4 (reachable)", best <= 0.4)
        )
    plain = by_name[f"plain Optuna, study.optimize(n_jobs={WORKERS})"]["median"]
    per_trial = (ours - plain) * WORKERS / TRIALS * 1000
    checks.append(
        (
            "T1 expkit - plain Optuna, worker ms a trial (start-up included)",
            f"{per_trial:.0f}",
            "",
            None,
        )
    )
    cost = {row["name"]: row["cost"] for row in t2}
    expkit_cost = cost["expkit tune, one process, file store"]
    for where in ("memory", "journal"):
        extra = (expkit_cost - cost[f"plain Optuna study.optimize, {where}"]) * 1000
        checks.append(
            (f"T2 ms a trial beyond plain Optuna ({where})", f"{extra:.1f}", "<= 20", extra <= 20)
        )
    least = {row["name"]: row["best"] for row in t2}
    extra = (
        least["expkit tune, one process, file store"]
        - least["plain Optuna study.optimize, journal"]
    ) * 1000
    checks.append(("T2 the same, least of the samples (journal)", f"{extra:.1f}", "", None))
    _write(output, t1, t2, checks, repeat, args.hydra_python, bounds)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _tune_versions(hydra_python: str | None) -> dict[str, str]:
    """run.py's versions (those installed), Optuna's, and those of Hydra's environment."""
    found = {k: v for k, v in _versions().items() if v != "not installed"}
    try:
        found["optuna"] = importlib.metadata.version("optuna")
    except importlib.metadata.PackageNotFoundError:
        found["optuna"] = "not installed"
    if hydra_python and Path(hydra_python).exists():
        code = (
            "import importlib.metadata as m;"
            "print(' '.join(f'{d}={m.version(d)}' for d in "
            "('hydra-core','hydra-optuna-sweeper','hydra-joblib-launcher','optuna')))"
        )
        out = subprocess.run([hydra_python, "-c", code], capture_output=True, text=True).stdout
        for pair in out.split():
            dist, _, version = pair.partition("=")
            found[f"{dist} (Hydra's env)" if dist == "optuna" else dist] = version
    return found


def _write(
    folder: Path,
    t1: list[dict],
    t2: list[dict],
    checks: list,
    repeat: int,
    hydra: str | None,
    bounds: dict,
) -> None:
    versions, machine = _tune_versions(hydra), _machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Hyperparameter search: expkit tune, Hydra's Optuna sweeper, plain Optuna",
        "",
        f"T1: {TRIALS} trials of 0.1-1 s on {WORKERS} workers, trial k of every tool sleeping "
        f"the same DURATIONS[k] ({bounds['sum']:.2f} s in all); each row a whole process from "
        f"start to exit (median of {repeat}); busy: time the trials slept / ({WORKERS} x wall). "
        "See bench_tune.py.",
        "",
        "| what | wall (s) | busy | samples (s) |",
        "|---|---|---|---|",
    ]
    for row in t1:
        samples = ", ".join(f"{s:.2f}" for s in row["samples"])
        lines.append(f"| {row['name']} | {row['median']:.2f} | {row['busy']:.0%} | {samples} |")
    for name, key in (
        (f"longest-first packing of the sleeps on {WORKERS} workers (no start-up)", "packed"),
        (f"lower bound: max(sum / {WORKERS}, longest sleep)", "lower_bound"),
    ):
        busy = bounds["sum"] / (WORKERS * bounds[key])
        lines.append(f"| {name} | {bounds[key]:.2f} | {busy:.0%} | computed |")
    lines += [
        "",
        "T2: the cost of one more trial that does nothing, one after another (the difference "
        "between processes of few and many trials).",
        "",
        "| what | ms a trial (median) | least | samples (ms) |",
        "|---|---|---|---|",
    ]
    for row in t2:
        samples = ", ".join(f"{s * 1000:.1f}" for s in row["cost_samples"])
        lines.append(
            f"| {row['name']} | {row['cost'] * 1000:.1f} | {row['best'] * 1000:.1f} | {samples} |"
        )
    lines += ["", "| check | measured | target | met |", "|---|---|---|---|"]
    for name, value, target, met in checks:
        shown = "" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {value} | {target} | {shown} |")
    lines += [
        "",
        f"Machine: {machine['platform']}, {machine['cpu']}, {machine['cores']} cores, shared "
        "with other work; "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; {when}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    (folder / "results_tune.md").write_text("\n".join(lines))
    data = {"t1": t1, "t1_bounds": bounds, "t2": t2, "checks": checks}
    data.update(machine=machine, versions=versions, date=when)
    (folder / "results_tune.json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
