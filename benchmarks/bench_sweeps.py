"""Sweeps side by side: expkit ``-n 2`` against Hydra's ``--multirun``, and expkit on Dask.

Usage: ``python benchmarks/bench_sweeps.py [--points N] [--repeat R] [--output DIR]``
(``tox -e bench-sweeps`` installs Hydra 1.3.8 and its joblib launcher beside expkit).

Workloads, each a fresh process timed from start to exit, the median of ``--repeat`` runs:

- S1: N points of a no-op experiment. expkit: ``expkit run exp_noop.py --sweep
  'x=range(N)' -n 2`` into a file store, every point checked COMPLETED in the store
  afterwards. Hydra: ``python app.py --multirun '+x=range(0,N)'`` with its basic launcher,
  and with its joblib launcher (``n_jobs=2``); Hydra records no result. Target: expkit's
  wall time <= 0.15 x the faster Hydra.
- S2: the same N points with ``--dask local -n 2`` (a LocalCluster started by expkit), and
  plain Dask (a LocalCluster of 2 workers and N no-op futures) for comparison; the figure
  is wall time / N, start-up included. Target: expkit <= 30 ms a point.

Results go to ``benchmarks/results_sweeps.md`` and ``results_sweeps.json``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

EXPKIT_APP = '''\
def exp_noop(x=0):
    """A point that does nothing: what is measured is the sweep machinery."""
    return x
'''

HYDRA_APP = """\
import hydra


@hydra.main(version_base=None)
def main(cfg):
    return cfg.x


if __name__ == "__main__":
    main()
"""

DASK_ALONE = """\
import sys

from distributed import Client, LocalCluster


def noop(x):
    return x


if __name__ == "__main__":
    n = int(sys.argv[1])
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            results = client.gather([client.submit(noop, i, pure=False) for i in range(n)])
    assert results == list(range(n))
"""

JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")

# Interpreter switches the children do not inherit (as benchmarks/run.py does).
_DEFAULTED = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONDEVMODE", "PYTHONMALLOC")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _DEFAULTED}


def _timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return seconds


def _completed(store: Path) -> int:
    count = 0
    for folder in store.iterdir():
        if folder.name.isdigit():
            run = json.loads((folder / "run.json").read_text())
            count += run["status"] == "COMPLETED"
    return count


def _measure(name: str, make: callable, repeat: int, check: callable | None = None) -> dict:
    samples = []
    for _ in range(repeat):
        argv, cwd = make()
        samples.append(_timed(argv, cwd))
        if check is not None:
            check()
    median = statistics.median(samples)
    print(f"{name:<36} {median:8.2f} s  ({', '.join(f'{s:.2f}' for s in samples)})", flush=True)
    return {"name": name, "samples": samples, "median": median}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the expkit rows")
    parser.add_argument("--hydra-repeat", type=int, default=1, help="repeats of the Hydra rows")
    parser.add_argument("--output", type=Path, default=HERE)
    args = parser.parse_args(argv)
    n = args.points
    work = Path(tempfile.mkdtemp(prefix="expkit-bench-sweeps-"))
    (work / "pyproject.toml").write_text("[tool.expkit]\n")
    (work / "exp_noop.py").write_text(EXPKIT_APP)
    (work / "app.py").write_text(HYDRA_APP)
    (work / "dask_alone.py").write_text(DASK_ALONE)
    expkit = str(BIN / "expkit")
    python = sys.executable
    store = work / "runs"

    def fresh_store() -> None:
        shutil.rmtree(store, ignore_errors=True)

    def every_point_stored() -> None:
        done = _completed(store)
        if done != n:
            raise RuntimeError(f"{done} of {n} points stored as COMPLETED")

    def expkit_run(*extra: str) -> callable:
        def make() -> tuple[list[str], Path]:
            fresh_store()
            sweep = ["run", "exp_noop.py", "--sweep", f"x=range({n})", "-q", "--store", "runs"]
            return [expkit, *sweep, *extra], work

        return make

    def hydra(*extra: str) -> callable:
        def make() -> tuple[list[str], Path]:
            shutil.rmtree(work / "multirun", ignore_errors=True)
            sweep = [python, "app.py", "--multirun", f"+x=range(0,{n})"]
            return [*sweep, f"hydra.sweep.dir={work / 'multirun'}", *extra], work

        return make

    rows = []
    print(f"{n} points, in {work}")
    _timed([expkit, "--collect-only", "-q", "exp_noop.py"], work)  # warm the caches once
    rows.append(_measure("expkit -n 2", expkit_run("-n", "2"), args.repeat, every_point_stored))
    rows.append(_measure("expkit serial", expkit_run(), args.repeat, every_point_stored))
    hydra_rows = []
    for name, extra in (
        ("hydra --multirun (basic launcher)", ()),
        (
            "hydra --multirun (joblib, n_jobs=2)",
            ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
        ),
    ):
        try:
            hydra_rows.append(_measure(name, hydra(*extra), args.hydra_repeat))
        except (RuntimeError, FileNotFoundError) as exc:
            print(f"{name}: not available ({str(exc).splitlines()[0]})")
    rows += hydra_rows
    rows.append(
        _measure(
            "expkit --dask local -n 2",
            expkit_run("--dask", "local", "-n", "2"),
            args.repeat,
            every_point_stored,
        )
    )
    rows.append(
        _measure(
            "dask alone (LocalCluster, 2 workers)",
            lambda: ([python, "dask_alone.py", str(n)], work),
            args.repeat,
        )
    )
    by_name = {r["name"]: r["median"] for r in rows}
    checks = []
    if hydra_rows:
        faster = min(r["median"] for r in hydra_rows)
        ratio = by_name["expkit -n 2"] / faster
        checks.append(("S1 expkit -n 2 / faster Hydra", f"{ratio:.3f}", "<= 0.15", ratio <= 0.15))
    per_point = by_name["expkit --dask local -n 2"] / n * 1000
    checks.append(("S2 expkit on Dask, ms a point", f"{per_point:.1f}", "<= 30", per_point <= 30))
    alone = by_name["dask alone (LocalCluster, 2 workers)"] / n * 1000
    checks.append(("S2 Dask alone, ms a point", f"{alone:.1f}", "(reference)", None))
    _write(args.output, n, rows, checks)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("expkit", "hydra-core", "hydra-joblib-launcher", "distributed", "joblib"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _write(folder: Path, n: int, rows: list[dict], checks: list[tuple]) -> None:
    versions = _versions()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Sweeps: expkit against Hydra's --multirun, and on Dask",
        "",
        f"{n} points of a no-op experiment, each row a whole process from start to exit "
        "(median of the samples); see bench_sweeps.py.",
        "",
        "| what | median (s) | s a point | samples (s) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        samples = ", ".join(f"{s:.2f}" for s in row["samples"])
        lines.append(
            f"| {row['name']} | {row['median']:.2f} | {row['median'] / n:.4f} | {samples} |"
        )
    lines += ["", "| check | measured | target | met |", "|---|---|---|---|"]
    for name, value, target, met in checks:
        shown = "" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {value} | {target} | {shown} |")
    lines += [
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores; "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; {when}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    (folder / "results_sweeps.md").write_text("\n".join(lines))
    data = {"points": n, "rows": rows, "checks": checks, "versions": versions, "date": when}
    (folder / "results_sweeps.json").write_text(json.dumps(data, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
