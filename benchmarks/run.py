"""expkit against Sacred 0.8.7, side by side: the workloads P1-P6 of issue #5.

Usage: ``python benchmarks/run.py [--quick] [--only P1,P3] [--repeat N]``

Every measurement is one fresh child process; the two systems alternate (A B A B ...), the
median of the repeats is reported with the ratio expkit/Sacred. The table goes to stdout,
``results.md`` and ``results.json``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SYSTEMS = ("expkit", "sacred")
WORKLOADS = ("P1", "P2", "P3", "P4", "P5", "P6", "P7")

FULL_SIZES = {
    "calls": 200_000,
    "scalars": 200_000,
    "scalars_big": 2_000_000,
    "files": 1_000,
    "file_runs": 5_000,
    "tinydb_runs": 2_000,
    "lines": 100_000,
    "list_runs": 10_000,
}
QUICK_SIZES = {
    "calls": 20_000,
    "scalars": 20_000,
    "scalars_big": 200_000,
    "files": 50,
    "file_runs": 200,
    "tinydb_runs": 100,
    "lines": 5_000,
    "list_runs": 300,
}
SMALL_STORE = 10  # runs in the "small" store of P5

# The experiments: one text per workload, the same for both systems but for PKG.
EXPERIMENTS = {
    "exp_noop.py": '''\
"""A no-op experiment with a two-entry config."""
from PKG import Experiment

ex = Experiment("noop")


@ex.config
def cfg():
    a = 1
    b = "two"


@ex.main
def main(a, b):
    return a


if __name__ == "__main__":
    ex.run_commandline()
''',
    "exp_inject.py": '''\
"""A captured function with three injected entries, timed against a plain call."""
import json
import time

from PKG import Experiment

ex = Experiment("inject")


@ex.config
def cfg():
    calls = 1000
    a = 1
    b = 2.5
    c = "three"


@ex.capture
def captured(a, b, c):
    return a


def plain(a, b, c):
    return a


@ex.main
def main(calls, a, b, c):
    start = time.perf_counter()
    for _ in range(calls):
        plain(a, b, c)
    middle = time.perf_counter()
    for _ in range(calls):
        captured()
    end = time.perf_counter()
    print("BENCH", json.dumps({"plain": middle - start, "captured": end - middle}))


if __name__ == "__main__":
    ex.run_commandline()
''',
    "exp_metrics.py": '''\
"""Many scalar metrics logged from main."""
from PKG import Experiment

ex = Experiment("metrics")


@ex.config
def cfg():
    n = 1000


@ex.main
def main(n, _run):
    for i in range(n):
        _run.log_scalar("loss", 1.0 / (i + 1), i)
    return n


if __name__ == "__main__":
    ex.run_commandline()
''',
    "exp_print.py": '''\
"""Many short lines printed from main."""
from PKG import Experiment

ex = Experiment("print")


@ex.config
def cfg():
    lines = 1000


@ex.main
def main(lines):
    for i in range(lines):
        print("line", i)


if __name__ == "__main__":
    ex.run_commandline()
''',
}

BARE_PRINT = """\
import sys

for i in range(int(sys.argv[1])):
    print("line", i)
"""

# P4: one module experiment per file, and the equivalent pytest test file.
MODULE_EXPERIMENT = """\
import expkit


@expkit.config
def cfg():
    lr = 0.01  # learning rate
    epochs = 3


def exp_{n}(lr, epochs):
    return lr * epochs
"""
PYTEST_FILE = """\
import pytest


@pytest.fixture
def cfg():
    return {{"lr": 0.01, "epochs": 3}}


def test_{n}(cfg):
    assert cfg["lr"] * cfg["epochs"]
"""


# -- running children ------------------------------------------------------------------------


def _spawn(
    argv: list[str], cwd: Path, logs: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``argv`` in a fresh process: wall and CPU seconds, peak memory, exit code."""
    out, err = logs / "child.out", logs / "child.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**_child_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        # os.wait4 instead of proc.wait(): it gives this one child's resource usage.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "rc": proc.returncode,
        "stdout": out.read_text(errors="replace"),
        "stderr": err.read_text(errors="replace"),
    }


# Interpreter switches that the children do not inherit: they run with Python's defaults.
# Sacred comes from pip with its .pyc files, while an editable expkit under
# PYTHONDONTWRITEBYTECODE would recompile itself at every start; PYTHONUNBUFFERED makes
# every print several writes, which P6 measures separately.
_DEFAULTED = (
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PYTHONDEVMODE",
    "PYTHONMALLOC",
    "PYTHONTRACEMALLOC",
    "PYTHONPROFILEIMPORTTIME",
)


def _child_env() -> dict[str, str]:
    """This environment without the interpreter switches in ``_DEFAULTED``."""
    return {k: v for k, v in os.environ.items() if k not in _DEFAULTED}


def _job(
    label: str,
    argv: list[str],
    cwd: Path,
    before: Callable[[], None] | None = None,
    after: Callable[[dict], None] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One command to measure; ``before`` and ``after`` run untimed around every sample."""
    return {"label": label, "argv": argv, "cwd": cwd, "before": before, "after": after, "env": env}


def _interleave(jobs: list[dict], repeat: int, bench: dict) -> None:
    """Run every job ``repeat`` times, round-robin, keeping each sample under its label."""
    for _ in range(repeat):
        for job in jobs:
            if job["before"]:
                job["before"]()
            sample = _spawn(job["argv"], job["cwd"], bench["logs"], job["env"])
            if sample["rc"] != 0:
                tail = (sample["stderr"].strip().splitlines() or ["(no output)"])[-1]
                bench["failures"].append(f"{job['label']}: exit {sample['rc']}: {tail}")
            elif job["after"]:
                job["after"](sample)
            del sample["stdout"], sample["stderr"]
            bench["samples"].setdefault(job["label"], []).append(sample)
            print(".", end="", flush=True)


def _median(bench: dict, label: str, key: str = "wall") -> float | None:
    """The median of ``key`` over the successful samples of ``label``."""
    values = [s[key] for s in bench["samples"].get(label, []) if s["rc"] == 0 and key in s]
    return statistics.median(values) if values else None


def _script(name: str) -> list[str]:
    """The argv prefix of an installed console script, without any shell shim in between."""
    path = Path(sysconfig.get_path("scripts")) / name
    if path.is_file():
        return [str(path)]
    module = {
        "expkit": "from expkit import console_main as m",
        "pytest": "from pytest import main as m",
    }
    return [sys.executable, "-c", f"import sys; {module[name]}; sys.exit(m())"]


# -- workloads -------------------------------------------------------------------------------


def _write_experiments(work: Path) -> dict[str, Path]:
    """The experiment files, once per system in its own folder; the folders by system."""
    folders = {}
    for system in SYSTEMS:
        folder = work / system
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in EXPERIMENTS.items():
            (folder / name).write_text(text.replace("from PKG import", f"from {system} import"))
        folders[system] = folder
    return folders


def _row(
    ident: str,
    workload: str,
    unit: str,
    values: dict[str, Any],
    limit: float | None = None,
    judge: str = "ratio",
    target: str = "",
    cpu: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A table row; ``judge`` says whether the target bounds the ratio or expkit's own value.

    ``cpu`` holds the medians of CPU seconds, for a second ratio that the load of the machine
    disturbs less than wall-clock time.
    """
    expkit, sacred = values.get("expkit"), values.get("sacred")
    ratio, cpu_ratio = _ratio(values), _ratio(cpu or {})
    judged = ratio if judge == "ratio" else expkit
    met = None
    if limit is not None and isinstance(judged, float):
        met = judged <= limit
    if limit is not None and not target:
        target = f"≤ {limit:g} x baseline" if judge == "ratio" else f"≤ {limit:g}"
    return {
        "id": ident,
        "workload": workload,
        "unit": unit,
        "expkit": expkit,
        "sacred": sacred,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "target": target,
        "limit": limit,
        "judge": judge,
        "met": met,
    }


def _ratio(values: dict[str, Any]) -> float | None:
    expkit, sacred = values.get("expkit"), values.get("sacred")
    if isinstance(expkit, float) and isinstance(sacred, float) and sacred > 0:
        return expkit / sacred
    return None


def _both(
    bench: dict, label: str, key: str = "wall", baseline: str = "sacred"
) -> dict[str, float | None]:
    """The medians of ``key`` for ``label`` under expkit and under the baseline."""
    return {
        "expkit": _median(bench, f"{label}/expkit", key),
        "sacred": _median(bench, f"{label}/{baseline}", key),
    }


def _timed(
    bench: dict,
    ident: str,
    workload: str,
    label: str,
    limit: float | None = None,
    baseline: str = "sacred",
) -> dict[str, Any]:
    """A row of wall-clock medians, with the CPU-time ratio beside."""
    wall, cpu = _both(bench, label, "wall", baseline), _both(bench, label, "cpu", baseline)
    return _row(ident, workload, "s", wall, limit, cpu=cpu)


def run_p1(bench: dict) -> list[dict]:
    """Start-up: the no-op experiment, ``expkit run``, the imports, and bare Python."""
    py, dirs = sys.executable, bench["dirs"]
    jobs = [_job("floor", [py, "-c", "pass"], bench["work"])]
    for system in SYSTEMS:
        jobs.append(_job(f"import/{system}", [py, "-c", f"import {system}"], dirs[system]))
        jobs.append(_job(f"noop/{system}", [py, "exp_noop.py"], dirs[system]))
    run_argv = [*_script("expkit"), "run", "exp_noop.py", "-u"]
    jobs.append(_job("expkit-run/expkit", run_argv, dirs["expkit"]))
    _interleave(jobs, bench["repeat"], bench)
    floor = _median(bench, "floor")
    floor_row = _row(
        "P1-floor", "P1 floor: `python -c pass`", "s", {"expkit": floor, "sacred": floor}
    )
    floor_row["ratio"] = None  # the same measurement in both columns
    # `expkit run` has no Sacred counterpart: it is set beside Sacred's `python exp_noop.py`.
    run_row = _row(
        "P1-run",
        "P1 `expkit run exp_noop.py -u` (baseline: Sacred's `python exp_noop.py`)",
        "s",
        {"expkit": _median(bench, "expkit-run/expkit"), "sacred": _median(bench, "noop/sacred")},
        cpu={
            "expkit": _median(bench, "expkit-run/expkit", "cpu"),
            "sacred": _median(bench, "noop/sacred", "cpu"),
        },
    )
    return [
        floor_row,
        _timed(bench, "P1-import", "P1 `import expkit` / `import sacred`", "import", 0.3),
        _timed(bench, "P1-noop", "P1 `python exp_noop.py`", "noop", 0.3),
        run_row,
    ]


def run_p2(bench: dict) -> list[dict]:
    """Injection: overhead of a captured call over a plain one, timed inside main."""
    calls = bench["sizes"]["calls"]

    def keep_timing(sample: dict) -> None:
        line = next(ln for ln in sample["stdout"].splitlines() if ln.startswith("BENCH "))
        timing = json.loads(line[len("BENCH ") :])
        sample["overhead_ns"] = (timing["captured"] - timing["plain"]) / calls * 1e9

    argv = [sys.executable, "exp_inject.py", "-u", "with", f"calls={calls}"]
    jobs = [
        _job(f"inject/{system}", argv, bench["dirs"][system], after=keep_timing)
        for system in SYSTEMS
    ]
    _interleave(jobs, bench["repeat"], bench)
    values = _both(bench, "inject", "overhead_ns")
    return [_row("P2", f"P2 overhead per captured call ({calls:,} calls)", "ns", values, 0.1)]


def run_p3(bench: dict) -> list[dict]:
    """Metrics: many ``log_scalar`` calls with a file store, whole-process time and memory."""
    rows = []
    small, big = bench["sizes"]["scalars"], bench["sizes"]["scalars_big"]
    for n in (small, big):
        jobs = []
        for system in SYSTEMS:
            store = bench["work"] / f"p3-store-{system}"
            argv = [sys.executable, "exp_metrics.py", "-F", str(store), "with", f"n={n}"]
            reset = _remover(store)
            jobs.append(_job(f"metrics-{n}/{system}", argv, bench["dirs"][system], before=reset))
        _interleave(jobs, bench["repeat"], bench)
    label_small, label_big = f"metrics-{small}", f"metrics-{big}"
    limit = 11.0 * big / small / 10
    rows.append(_timed(bench, "P3-time", f"P3 whole run, {small:,} scalars", label_small, 0.25))
    memory = _both(bench, f"metrics-{small}", "maxrss_mb")
    rows.append(_row("P3-memory", f"P3 peak memory, {small:,} scalars", "MB", memory, 1.0))
    rows.append(_timed(bench, "P3-big", f"P3 whole run, {big:,} scalars", label_big))
    memory_big = _both(bench, f"metrics-{big}", "maxrss_mb")
    rows.append(_row("P3-big-memory", f"P3 peak memory, {big:,} scalars", "MB", memory_big))
    rows.append(
        _row(
            "P3-linear",
            f"P3 time {big:,} / time {small:,} scalars",
            "x",
            _growth(bench, label_small, label_big),
            limit,
            judge="expkit",
            target=f"expkit ≤ {limit:g}",
        )
    )
    workload = f"P3 CPU time {big:,} / CPU time {small:,} scalars"
    rows.append(_row("P3-linear-cpu", workload, "x", _growth(bench, label_small, label_big, "cpu")))
    return rows


def _growth(bench: dict, small: str, big: str, key: str = "wall") -> dict[str, float]:
    """Per system, the median of ``key`` for ``big`` over that for ``small``."""
    low, high = _both(bench, small, key), _both(bench, big, key)
    return {s: high[s] / low[s] for s in SYSTEMS if high[s] and low[s]}


def _remover(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path, ignore_errors=True)


def run_p4(bench: dict) -> list[dict]:
    """Collection: ``expkit --collect-only -q`` against ``pytest --collect-only -q``."""
    n = bench["sizes"]["files"]
    exp_dir, test_dir = bench["work"] / "p4-expkit", bench["work"] / "p4-pytest"
    for folder in (exp_dir, test_dir):
        folder.mkdir(exist_ok=True)
    for i in range(n):
        (exp_dir / f"exp_{i:04d}.py").write_text(MODULE_EXPERIMENT.format(n=f"{i:04d}"))
        (test_dir / f"test_{i:04d}.py").write_text(PYTEST_FILE.format(n=f"{i:04d}"))
    # An empty pytest.ini keeps pytest from adopting the settings of any project above.
    (test_dir / "pytest.ini").write_text("[pytest]\n")

    def count_ids(sample: dict) -> None:
        sample["collected"] = sum("::" in line for line in sample["stdout"].splitlines())

    jobs = [
        _job(
            "collect/expkit", [*_script("expkit"), "--collect-only", "-q"], exp_dir, after=count_ids
        ),
        _job(
            "collect/pytest",
            [*_script("pytest"), "--collect-only", "-q"],
            test_dir,
            after=count_ids,
        ),
    ]
    # Untimed first pass: both write their bytecode caches, as after any earlier run.
    _interleave(jobs, 1, {**bench, "samples": {}})
    _interleave(jobs, bench["repeat"], bench)
    for label in ("collect/expkit", "collect/pytest"):
        counts = {s.get("collected") for s in bench["samples"].get(label, [])}
        if counts != {n}:
            bench["failures"].append(f"{label}: listed {sorted(counts, key=str)} ids, not {n}")
    workload = f"P4 `--collect-only -q` over {n:,} files (baseline: pytest)"
    return [_timed(bench, "P4", workload, "collect", 1.0, baseline="pytest")]


def run_p5(bench: dict) -> list[dict]:
    """Store growth: the time of one more run into a small and a big store."""
    rows = []
    kinds = [("file", "-F", bench["sizes"]["file_runs"])]
    missing = _tinydb_missing()
    if missing:
        print(f"\nP5 TinyDB: not available ({missing})")
        rows.append(_row("P5-tinydb", f"P5 TinyDB store: not available ({missing})", "", {}))
    else:
        kinds.append(("tinydb", "-t", bench["sizes"]["tinydb_runs"]))
    for kind, flag, big in kinds:
        jobs = []
        for system in SYSTEMS:
            for size in (SMALL_STORE, big):
                store = bench["work"] / f"p5-{kind}-{system}-{size}"
                restore = _fill_store(kind, flag, store, size, bench["dirs"][system], bench)
                argv = [sys.executable, "exp_noop.py", flag, str(store)]
                label = f"store-{kind}-{size}/{system}"
                jobs.append(_job(label, argv, bench["dirs"][system], after=_skip(restore)))
        _interleave(jobs, bench["repeat"], bench)
        small, large = f"store-{kind}-{SMALL_STORE}", f"store-{kind}-{big}"
        limit = 1.2 if kind == "file" else 5.0
        name = "file store" if kind == "file" else "TinyDB store"
        rows += [
            _timed(bench, f"P5-{kind}-small", f"P5 {name}: one run into {SMALL_STORE} runs", small),
            _timed(bench, f"P5-{kind}-big", f"P5 {name}: one run into {big:,} runs", large),
            _row(
                f"P5-{kind}",
                f"P5 {name}: time at {big:,} / time at {SMALL_STORE} runs",
                "x",
                _growth(bench, small, large),
                limit,
                judge="expkit",
                target=f"expkit ≤ {limit:g}",
            ),
        ]
    return rows


def _skip(fn: Callable[[], None]) -> Callable[[dict], None]:
    return lambda sample: fn()


def _tinydb_missing() -> str:
    """Why the TinyDB part of P5 cannot run, or '' when both systems have a TinyDB store."""
    for module in ("hashfs", "tinydb_serialization"):
        if importlib.util.find_spec(module) is None:
            return f"Sacred's TinyDbObserver needs `{module}`"
    check = "from expkit.observers import TinyDbObserver"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    return "" if done.returncode == 0 else "expkit.observers has no TinyDbObserver"


def _fill_store(
    kind: str, flag: str, store: Path, size: int, folder: Path, bench: dict
) -> Callable[[], None]:
    """Store one real run at ``store``, copy it up to ``size`` runs; return a reset function."""
    shutil.rmtree(store, ignore_errors=True)
    done = _spawn([sys.executable, "exp_noop.py", flag, str(store)], folder, bench["logs"])
    if done["rc"] != 0:
        tail = (done["stderr"].strip().splitlines() or ["(no output)"])[-1]
        bench["failures"].append(f"P5: the first run into {store.name} failed: {tail}")
        return lambda: None
    if kind == "file":
        first = store / "1"
        for i in range(2, size + 1):
            shutil.copytree(first, store / str(i))
        kept = set(os.listdir(store))

        def drop_new_runs() -> None:
            for name in set(os.listdir(store)) - kept:
                shutil.rmtree(store / name)

        return drop_new_runs
    db = store / "metadata.json"
    data = json.loads(db.read_text())
    (key, document), *_ = data["runs"].items()
    for i in range(int(key) + 1, size + 1):
        data["runs"][str(i)] = {**document, "_id": f"{i:032x}"}
    db.write_text(json.dumps(data))
    pristine = store.with_name(store.name + ".pristine.json")
    shutil.copyfile(db, pristine)
    return lambda: shutil.copyfile(pristine, db)


def run_p6(bench: dict) -> list[dict]:
    """Output capture: many printed lines with capture fd, sys and no, and bare Python."""
    lines = bench["sizes"]["lines"]
    (bench["work"] / "bare_print.py").write_text(BARE_PRINT)
    jobs = [_job("bare", [sys.executable, "bare_print.py", str(lines)], bench["work"])]

    def counter(store: Path) -> Callable[[dict], None]:
        def count(sample: dict) -> None:
            printed = len(re.findall(r"^line \d+$", sample["stdout"], re.MULTILINE))
            runs = [p for p in store.iterdir() if not p.name.startswith("_")]
            cout = runs[0] / "cout.txt" if len(runs) == 1 else None
            text = cout.read_text(errors="replace") if cout and cout.is_file() else ""
            sample["printed"] = printed
            sample["captured"] = len(re.findall(r"^line \d+$", text, re.MULTILINE))

        return count

    # `no` right before `fd`, so that each `fd` sample has a neighbour to subtract. The
    # `-u` variants run with PYTHONUNBUFFERED=1 (common in containers): a write per piece.
    unbuffered = {"PYTHONUNBUFFERED": "1"}
    for variant in ("no", "fd", "sys", "no-u", "fd-u"):
        mode, env = variant.removesuffix("-u"), unbuffered if variant.endswith("-u") else None
        for system in SYSTEMS:
            store = bench["work"] / f"p6-store-{system}"
            argv = [sys.executable, "exp_print.py", "-F", str(store), "-C", mode]
            argv += ["with", f"lines={lines}"]
            label, folder = f"capture-{variant}/{system}", bench["dirs"][system]
            jobs.append(_job(label, argv, folder, _remover(store), counter(store), env))
    _interleave(jobs, bench["repeat"], bench)
    bare = _median(bench, "bare")
    workload = f"P6 bare Python printing {lines:,} lines"
    rows = [_row("P6-bare", workload, "s", {"expkit": bare, "sacred": bare})]
    rows[0]["ratio"] = None  # the same measurement in both columns
    for mode in ("fd", "sys", "no"):
        workload = f"P6 {lines:,} lines, capture `{mode}`"
        rows.append(_timed(bench, f"P6-{mode}", workload, f"capture-{mode}"))
    # Against a baseline extra of zero or less no ratio is computed, and nothing judged.
    extra, cpu = _extra(bench, "wall"), _extra(bench, "cpu")
    rows.append(_row("P6-extra", "P6 extra time of `fd` over `no`", "s", extra, 0.3, cpu=cpu))
    # Both systems run unbuffered here. The same bound is shown, but the target is
    # the buffered row above.
    extra, cpu = _extra(bench, "wall", "-u"), _extra(bench, "cpu", "-u")
    workload = "P6 extra time of `fd` over `no`, with PYTHONUNBUFFERED=1 (both systems)"
    rows.append(_row("P6-extra-unbuffered", workload, "s", extra, 0.3, cpu=cpu))
    complete = {}
    for system in SYSTEMS:
        samples = {
            mode: [s for s in bench["samples"].get(f"capture-{mode}/{system}", []) if s["rc"] == 0]
            for mode in ("fd", "sys", "no", "fd-u", "no-u")
        }
        counts = [s["captured"] for mode in ("fd", "sys", "fd-u") for s in samples[mode]]
        printed = [s["printed"] for mode in samples for s in samples[mode]]
        whole = bool(counts) and all(n == lines for n in counts + printed)
        complete[system] = f"{'yes' if whole else 'NO'} (cout.txt {min(counts, default=0):,} min)"
    row = _row(
        "P6-complete", "P6 captured text complete (`fd`, `sys`, `fd` unbuffered)", "", complete
    )
    row.update(target="complete", judge="expkit", met=complete["expkit"].startswith("yes"))
    rows.append(row)
    return rows


def _extra(bench: dict, key: str, suffix: str = "") -> dict[str, float]:
    """What capturing with ``fd`` adds to capturing nothing, per system.

    The median of the differences between neighbouring ``fd`` and ``no`` samples: a change
    in the machine's load between repeats cancels out.
    """
    extra = {}
    for system in SYSTEMS:
        pairs = zip(
            bench["samples"].get(f"capture-fd{suffix}/{system}", []),
            bench["samples"].get(f"capture-no{suffix}/{system}", []),
        )
        differences = [fd[key] - no[key] for fd, no in pairs if fd["rc"] == no["rc"] == 0]
        if differences:
            extra[system] = statistics.median(differences)
    return extra


def _warm_up(bench: dict) -> None:
    """Start each system once, untimed, so that every measurement runs from cached bytecode."""
    jobs = [
        _job(f"warm-up/{s}", [sys.executable, "exp_noop.py"], bench["dirs"][s]) for s in SYSTEMS
    ]
    jobs.append(
        _job(
            "warm-up/run", [*_script("expkit"), "run", "exp_noop.py", "-u"], bench["dirs"]["expkit"]
        )
    )
    _interleave(jobs, 1, {**bench, "samples": {}})


_CLOSING = ("run", "runs", "run(s)")


def run_p7(bench: dict) -> list[dict]:
    """Listing (issue #6): ``expkit runs list`` over a file store of many runs; expkit only."""
    n = bench["sizes"]["list_runs"]
    store = bench["work"] / "p7-runs"
    _fill_store("file", "-F", store, n, bench["dirs"]["expkit"], bench)
    argv = [*_script("expkit"), "runs", "list", "--store", str(store)]

    def count_rows(sample: dict) -> None:
        rows = [line.split() for line in sample["stdout"].splitlines()]
        # Table rows start with the run's id; the closing line is "N run(s) of ... in STORE".
        sample["listed"] = sum(
            1 for r in rows if len(r) > 1 and r[0].isdigit() and r[1] not in _CLOSING
        )

    first = _job("list-first/expkit", argv, bench["work"], after=count_rows)
    again = _job("list/expkit", argv, bench["work"], after=count_rows)
    # --all: every run in the table (the default shows the newest 200).
    every = _job("list-all/expkit", [*argv, "--all"], bench["work"], after=count_rows)
    _interleave([first], 1, bench)  # builds the index from the run folders
    _interleave([again, every], bench["repeat"], bench)
    for label, shown in (
        ("list-first/expkit", min(n, 200)),
        ("list/expkit", min(n, 200)),
        ("list-all/expkit", n),
    ):
        counts = {s.get("listed") for s in bench["samples"].get(label, [])}
        if counts != {shown}:
            bench["failures"].append(
                f"P7 {label}: listed {sorted(counts, key=str)} runs, not {shown}"
            )
    return [
        _row(
            "P7-first",
            f"P7 `expkit runs list` over {n:,} runs, first time (index built from the folders)",
            "s",
            {"expkit": _median(bench, "list-first/expkit")},
        ),
        _row(
            "P7",
            f"P7 `expkit runs list` over {n:,} runs (index kept; the newest 200 shown)",
            "s",
            {"expkit": _median(bench, "list/expkit")},
            1.0,
            judge="expkit",
            target="expkit ≤ 1 s",
        ),
        _row(
            "P7-all",
            f"P7 `expkit runs list --all` over {n:,} runs, every one in the table",
            "s",
            {"expkit": _median(bench, "list-all/expkit")},
        ),
    ]


RUNNERS = {
    "P1": run_p1,
    "P2": run_p2,
    "P3": run_p3,
    "P4": run_p4,
    "P5": run_p5,
    "P6": run_p6,
    "P7": run_p7,
}


# -- profiles of missed targets --------------------------------------------------------------


def _profiles(rows: list[dict], bench: dict) -> list[tuple[str, str]]:
    """For each missed target, expkit's profile: ``-X importtime`` or cProfile; (title, text)."""
    missed = {row["id"] for row in rows if row["met"] is False}
    folder, sizes, work, out = bench["dirs"]["expkit"], bench["sizes"], bench["work"], []
    if missed & {"P1-import", "P1-noop"}:
        argv = [sys.executable, "-X", "importtime", "-c", "import expkit"]
        done = _spawn(argv, folder, bench["logs"])
        out.append(("`python -X importtime -c 'import expkit'`", _importtime(done["stderr"])))
    metrics = ["exp_metrics.py", "-F", "p-store", "with", f"n={sizes['scalars']}"]
    commands = {
        "P1-noop": ["exp_noop.py"],
        "P2": ["exp_inject.py", "-u", "with", f"calls={sizes['calls']}"],
        "P3-time": metrics,
        "P3-memory": metrics,
        "P3-linear": metrics,
        "P4": [*_script("expkit"), "--collect-only", "-q"],
        "P5-file": ["exp_noop.py", "-F", str(work / f"p5-file-expkit-{sizes['file_runs']}")],
        "P5-tinydb": ["exp_noop.py", "-t", str(work / f"p5-tinydb-expkit-{sizes['tinydb_runs']}")],
        "P6-extra": [
            "exp_print.py",
            "-F",
            "p-store",
            "-C",
            "fd",
            "with",
            f"lines={sizes['lines']}",
        ],
    }
    targets: dict[tuple[str, ...], list[str]] = {}
    for ident in sorted(missed & commands.keys()):
        targets.setdefault(tuple(commands[ident]), []).append(ident)
    for argv, idents in targets.items():
        if len(argv) > 1 and argv[1] == "-c":
            continue  # no console script file to profile
        cwd = work / "p4-expkit" if idents == ["P4"] else folder
        stats_file = bench["logs"] / f"{idents[0]}.prof"
        _spawn([sys.executable, "-m", "cProfile", "-o", str(stats_file), *argv], cwd, bench["logs"])
        shutil.rmtree(folder / "p-store", ignore_errors=True)
        if stats_file.is_file():
            shown = " ".join(["python", *(Path(a).name if "/" in a else a for a in argv)])
            out.append((f"cProfile of `{shown}` ({', '.join(idents)})", _top(stats_file, work)))
    return out


def _importtime(stderr: str, top: int = 15) -> str:
    """The modules with the most import time, own and cumulative, from ``-X importtime``."""
    entries = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match:
            own, total, indent, name = match.groups()
            entries.append((int(total), int(own), len(indent) // 2, name))
    whole = max((e[0] for e in entries), default=0)
    lines = [f"whole import: {whole / 1000:.1f} ms", "cumulative ms  own ms  module"]
    for total, own, depth, name in sorted(entries, reverse=True)[:top]:
        lines.append(f"{total / 1000:13.1f}  {own / 1000:6.1f}  {'  ' * depth}{name}")
    return "\n".join(lines)


def _top(stats_file: Path, work: Path, top: int = 25) -> str:
    """The functions with the most cumulative time, then the most own time, paths shortened."""
    parts = []
    for order, count in (("cumulative", top), ("tottime", top // 2)):
        buffer = io.StringIO()
        pstats.Stats(str(stats_file), stream=buffer).sort_stats(order).print_stats(count)
        text = buffer.getvalue()
        for prefix in (
            sysconfig.get_path("purelib") + "/",
            str(work / "code") + "/",
            str(HERE.parent) + "/",
            sys.prefix + "/",
        ):
            text = text.replace(prefix, "")
        if not parts:
            total = re.search(r"in ([\d.]+) seconds", text)
            parts.append(f"total {total.group(1) if total else '?'} s (under cProfile)")
        parts.append("by cumulative time:" if order == "cumulative" else "by own time:")
        parts.append(text[text.find("   ncalls") :].rstrip() if "   ncalls" in text else text)
    return "\n".join(parts)


# -- output ----------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count()}


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    # pandas: Sacred imports it at start when it is installed.
    for dist in ("expkit", "sacred", "numpy", "pandas", "pytest", "tinydb", "pluggy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    commit = subprocess.run(
        ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    if commit.returncode == 0:
        status = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "expkit", "plugins"],
            capture_output=True,
            text=True,
        )
        changed = " + uncommitted changes" if status.stdout.strip() else ""
        versions["expkit commit"] = commit.stdout.strip() + changed
    return versions


def _snapshot(work: Path) -> str:
    """Copy expkit's packages into ``work`` and make every child import them from there.

    Edits made to the work tree during a run do not leak into it. ``PYTHONPATH`` comes before
    an editable install's finder, and the ``expkit`` entry points name ``expkit_plugins``
    modules, which resolve to the copy too. Returns a digest of the copied sources.
    """
    digest, code = hashlib.md5(), work / "code"
    for folder, package in (("expkit", "expkit"), ("plugins", "expkit_plugins")):
        source = HERE.parent / folder
        shutil.copytree(source, code / package, ignore=shutil.ignore_patterns("__pycache__"))
        for path in sorted((code / package).rglob("*.py")):
            digest.update(path.read_bytes())
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(code), os.environ.get("PYTHONPATH")])
    )
    return digest.hexdigest()[:12]


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if unit == "ns":
        return f"{value:,.0f} ns"
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def _table(rows: list[dict]) -> str:
    lines = [
        "| workload | expkit | Sacred (or baseline) | ratio | CPU-time ratio | target | met? |",
        "|---|---:|---:|---:|---:|---|:---:|",
    ]
    for row in rows:
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}"
        cpu_ratio = "—" if row["cpu_ratio"] is None else f"{row['cpu_ratio']:.2f}"
        met = {True: "yes", False: "**NO**", None: "—"}[row["met"]]
        cells = [
            row["workload"],
            _fmt(row["expkit"], row["unit"]),
            _fmt(row["sacred"], row["unit"]),
            ratio,
            cpu_ratio,
            row["target"] or "—",
            met,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(report: dict) -> str:
    """results.md: the run, the machine, the table, analysis.md and the profiles."""
    machine, versions, profiles = report["machine"], report["versions"], report["profiles"]
    parts = [
        "# expkit against Sacred 0.8.7: benchmark results",
        "",
        f"Written by `python benchmarks/run.py{report['argv']}` on {report['date']}"
        f" ({report['mode']} sizes, median of {report['repeat']} repeats, each in a fresh"
        " process). Wall-clock times; ratio = expkit / baseline; the CPU-time ratio (user + system"
        " time of the child and its children) is less disturbed by other load on the machine."
        " See README.md for what each workload does.",
        "",
        f"- machine: {machine['platform']}, {machine['cpu']}, {machine['cores']} cores",
        f"- load average when the run started: {report['load']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        _table(report["rows"]),
        "",
    ]
    if report["failures"]:
        parts += ["## Failed measurements", "", *[f"- {f}" for f in report["failures"]], ""]
    analysis = HERE / "analysis.md"
    if report["mode"] == "full" and analysis.is_file():
        parts += [analysis.read_text().rstrip(), ""]
    if profiles:
        parts += ["## Profiles of the missed targets (this run)", ""]
        for title, text in profiles:
            parts += [f"### {title}", "", "```text", text, "```", ""]
    return "\n".join(parts)


# -- main ------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="expkit against Sacred 0.8.7 (issue #5).")
    parser.add_argument("--quick", action="store_true", help="every workload once, small sizes")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. P1,P3")
    parser.add_argument("--repeat", type=int, help="repeats per measurement (default 5, quick 1)")
    parser.add_argument("--output", type=Path, help="where results.md/.json go")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-profile", action="store_true", help="skip profiling missed targets")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite results.md from results.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected workloads and write the results; 2 without Sacred, 1 on failures."""
    args = _parse(argv)
    output = args.output or (HERE / "_work" if args.quick else HERE)
    if args.render:
        try:
            report = json.loads((output / "results.json").read_text())
        except (OSError, ValueError) as exc:
            print(f"benchmarks: --render: cannot read {output / 'results.json'}: {exc}")
            return 4
        (output / "results.md").write_text(_markdown(report))
        return 0
    if importlib.util.find_spec("sacred") is None:
        print("benchmarks: sacred is not importable; install it with `pip install sacred==0.8.7`")
        return 2
    only = [w.strip().upper() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        print(f"benchmarks: --only: unknown workload {', '.join(unknown)} (known: P1-P7)")
        return 4
    repeat = args.repeat or (1 if args.quick else 5)
    if repeat < 1:
        print(f"benchmarks: --repeat must be at least 1, not {repeat}")
        return 4
    output.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="expkit-bench-"))
    (work / "logs").mkdir()
    bench = {
        "work": work,
        "logs": work / "logs",
        "repeat": repeat,
        "sizes": QUICK_SIZES if args.quick else FULL_SIZES,
        "samples": {},
        "failures": [],
    }
    bench["dirs"] = _write_experiments(work)
    saved_path = os.environ.get("PYTHONPATH")
    digest = _snapshot(work)
    report = {
        "argv": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "repeat": repeat,
        "sizes": bench["sizes"],
        "machine": _machine(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": {**_versions(), "expkit sources md5": digest},
    }
    started, rows = time.perf_counter(), []
    try:
        print("warm-up ", end="", flush=True)
        _warm_up(bench)
        print()
        for name in only:
            print(f"{name} ", end="", flush=True)
            began = time.perf_counter()
            rows += RUNNERS[name](bench)
            print(f" {time.perf_counter() - began:.0f} s")
        profiles = [] if args.quick or args.no_profile else _profiles(rows, bench)
    finally:
        os.environ.pop("PYTHONPATH")
        if saved_path is not None:
            os.environ["PYTHONPATH"] = saved_path
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.update(
        rows=rows,
        failures=bench["failures"],
        seconds=round(time.perf_counter() - started, 1),
        profiles=profiles,
        samples=bench["samples"],
    )
    print()
    print(_table(rows))
    for failure in bench["failures"]:
        print(f"FAILED {failure}")
    (output / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (output / "results.md").write_text(_markdown(report))
    print(f"\nwritten: {output / 'results.md'}, {output / 'results.json'} ({report['seconds']} s)")
    return 1 if bench["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
