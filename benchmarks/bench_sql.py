"""expkit's SQL store against its peers on SQLite, side by side in one invocation.

Usage: ``python benchmarks/bench_sql.py [--quick] [--repeat N] [--output DIR] [--keep]``

S1, S2: Sacred 0.8.7's ``SqlObserver`` against expkit's ``SqlObserver`` (the SQL store),
the same script with only its imports changed: a whole no-op run, and a run logging
200,000 scalars (Sacred's SqlObserver stores no metrics). M1: MLflow's SQLite tracking
store against expkit's for 200,000 metric points, whole processes. L1: finding the runs
with ``C > 5`` among 10,000 (``mlflow.search_runs`` against ``expkit runs list``). L2:
``expkit runs list`` over 100,000 runs. Every measurement is a fresh process; peers take
turns with expkit; medians and ratios go to ``results_sql.md`` and ``results_sql.json``.
A peer that is not installed is reported as such (``tox -e bench-sql`` installs them).
The child processes, samples and machine details are handled as in ``run.py``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import run
from run import _interleave, _job, _machine, _median, _row, _script, _snapshot, _table

TABLE_LIMIT = 200  # the runs a table of `expkit runs list` shows (expkit_plugins.runs)

HERE = Path(__file__).resolve().parent
FULL_SIZES = {"points": 200_000, "list_runs": 10_000, "big_list": 100_000}
QUICK_SIZES = {"points": 2_000, "list_runs": 300, "big_list": 1_000}
BATCH = 1_000  # MLflow's log_batch takes at most 1,000 metrics a call


def _with_sql(text: str) -> str:
    """An experiment of ``run.py`` with Sacred's ``SqlObserver`` on ``runs.db`` added."""
    text = text.replace(
        "from PKG import Experiment\n",
        "from PKG import Experiment\nfrom PKG.observers import SqlObserver\n",
    )
    head, sep, rest = text.partition("\nex = Experiment(")
    line, newline, rest = rest.partition("\n")
    return (
        f'{head}{sep}{line}\nex.observers.append(SqlObserver("sqlite:///runs.db")){newline}{rest}'
    )


# One text per experiment; only the package differs between Sacred and expkit. The first
# two are run.py's P1 and P3 experiments.
EXPERIMENTS = {
    "exp_noop.py": _with_sql(run.EXPERIMENTS["exp_noop.py"]),
    "exp_metrics.py": _with_sql(run.EXPERIMENTS["exp_metrics.py"]),
    "exp_fit.py": """\
from PKG import Experiment
from PKG.observers import SqlObserver

ex = Experiment("fit")
ex.observers.append(SqlObserver("sqlite:///runs.db"))


@ex.config
def cfg():
    C = 0
    kernel = "rbf"


@ex.main
def main(C, kernel, _run):
    _run.log_scalar("C", C)
    return C / 10


if __name__ == "__main__":
    ex.run_commandline()
""",
}
# MLflow's fastest way to record many points: log_batch in batches of 1,000.
MLFLOW_POINTS = """\
import sys
import time

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

n = int(sys.argv[1])
mlflow.set_tracking_uri("sqlite:///mlflow.db")
client = MlflowClient()
with mlflow.start_run() as run:
    now = int(time.time() * 1000)
    for first in range(0, n, BATCH):
        points = [Metric("loss", 1.0 / (step + 1), now, step)
                  for step in range(first, min(first + BATCH, n))]
        client.log_batch(run.info.run_id, metrics=points)
"""
MLFLOW_TEMPLATE_RUN = """\
import mlflow

mlflow.set_tracking_uri("sqlite:///mlflow.db")
with mlflow.start_run():
    mlflow.log_param("kernel", "rbf")
    mlflow.log_metric("C", 0.0)
"""
MLFLOW_SEARCH = """\
import mlflow

mlflow.set_tracking_uri("sqlite:///mlflow.db")
found = mlflow.search_runs(experiment_ids=["0"], filter_string="metrics.C > 5")
print("FOUND", len(found))
"""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _folder(bench: dict, name: str, experiments: bool = False, system: str = "expkit") -> Path:
    """A new folder under the work folder, with the experiments of ``system`` if asked."""
    folder = bench["work"] / name
    folder.mkdir(parents=True)
    if experiments:
        for file, text in EXPERIMENTS.items():
            (folder / file).write_text(text.replace("PKG", system))
    return folder


def _count(db: Path, query: str) -> int | None:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(query).fetchone()[0]
    except sqlite3.Error:
        return None


# -- S1, S2, M1: recording ----------------------------------------------------------------------


def run_recording(bench: dict) -> list[dict]:
    """A whole no-op run and a run of many scalars, Sacred's and MLflow's stores beside."""
    py, n = sys.executable, bench["sizes"]["points"]
    systems = ["expkit"] + (["sacred"] if bench["peers"]["sacred"] else [])
    dirs = {s: _folder(bench, s, experiments=True, system=s) for s in systems}
    jobs = []
    for system in systems:
        db = dirs[system] / "runs.db"

        def stored(sample: dict, db: Path = db, system: str = system) -> None:
            if system == "expkit":  # the points of the last run, each once
                sample["points"] = _count(
                    db, "SELECT count(*) FROM metrics WHERE run_id = (SELECT max(id) FROM runs)"
                )

        jobs.append(_job(f"noop/{system}", [py, "exp_noop.py"], dirs[system]))
        jobs.append(
            _job(
                f"scalars/{system}",
                [py, "exp_metrics.py", "with", f"n={n}"],
                dirs[system],
                after=stored,
            )
        )
    if bench["peers"]["mlflow"]:
        folder = _folder(bench, "mlflow")
        (folder / "exp_mlflow.py").write_text(MLFLOW_POINTS.replace("BATCH", str(BATCH)))

        def logged(sample: dict) -> None:
            sample["points"] = _count(
                folder / "mlflow.db",
                "SELECT count(*) FROM metrics WHERE run_uuid = "
                "(SELECT run_uuid FROM runs ORDER BY start_time DESC LIMIT 1)",
            )

        argv = [py, "exp_mlflow.py", str(n)]
        _interleave(
            [_job("warm-up/mlflow", [py, "exp_mlflow.py", "10"], folder)],
            1,
            {**bench, "samples": {}},
        )  # makes MLflow's tables
        jobs.append(_job("points/mlflow", argv, folder, after=logged))
    # Untimed: every store's tables exist before the first sample, as for a user's second run.
    _interleave(
        [_job(f"warm-up/{s}", [py, "exp_noop.py"], dirs[s]) for s in systems],
        1,
        {**bench, "samples": {}},
    )
    _interleave(jobs, bench["repeat"], bench)
    _check_points(bench, "scalars/expkit", n)
    _check_points(bench, "points/mlflow", n)
    absent = {"sacred": "not installed"} if not bench["peers"]["sacred"] else {}
    rows = [
        _pair(
            bench,
            "S1",
            "S1 whole no-op run into SQLite (`python exp_noop.py`)",
            "noop",
            "sacred",
            0.2,
            "≤ 0.2 x Sacred's SqlObserver",
            absent,
        ),
        _pair(
            bench,
            "S2",
            f"S2 whole run logging {n:,} scalars into SQLite (Sacred's "
            "SqlObserver stores no metrics: its time is for none of them)",
            "scalars",
            "sacred",
            None,
            "",
            absent,
        ),
    ]
    mlflow = _median(bench, "points/mlflow")
    row = _row(
        "M1",
        f"M1 whole run recording {n:,} metric points into SQLite "
        f"(baseline: MLflow, `log_batch` of {BATCH:,})",
        "s",
        {"expkit": _median(bench, "scalars/expkit"), "sacred": mlflow},
        1 / 30,
        target="expkit ≥ 30 x faster",
        cpu={
            "expkit": _median(bench, "scalars/expkit", "cpu"),
            "sacred": _median(bench, "points/mlflow", "cpu"),
        },
    )
    rate = _row(
        "M1-rate",
        "M1 metric points recorded per second of the whole run",
        "",
        {"expkit": _rate(n, row["expkit"]), "sacred": _rate(n, mlflow)},
    )
    if not bench["peers"]["mlflow"]:
        row["sacred"] = rate["sacred"] = "not installed"
    return [*rows, row, rate]


def _pair(
    bench: dict,
    ident: str,
    workload: str,
    label: str,
    peer: str,
    limit: float | None,
    target: str,
    absent: dict,
) -> dict:
    wall = {
        "expkit": _median(bench, f"{label}/expkit"),
        "sacred": _median(bench, f"{label}/{peer}"),
    }
    cpu = {
        "expkit": _median(bench, f"{label}/expkit", "cpu"),
        "sacred": _median(bench, f"{label}/{peer}", "cpu"),
    }
    row = _row(ident, workload, "s", wall, limit, target=target, cpu=cpu)
    if peer in absent:
        row["sacred"] = absent[peer]
    return row


def _rate(points: int, seconds: float | None) -> str | None:
    return f"{points / seconds:,.0f} points/s" if seconds else None


def _check_points(bench: dict, label: str, expected: int) -> None:
    counts = {s.get("points") for s in bench["samples"].get(label, [])}
    if counts and counts != {expected}:
        bench["failures"].append(
            f"{label}: stored {sorted(counts, key=str)} points, not {expected}"
        )


# -- L1, L2: listing ----------------------------------------------------------------------------


def _fill_expkit(bench: dict, name: str, n: int) -> Path:
    """A folder whose ``runs.db`` holds ``n`` runs of exp_fit.py, ``C`` = 0..9 in turn.

    One real run is recorded, then copied by SQL (recording 100,000 runs would take long
    and measure nothing listed here).
    """
    folder = _folder(bench, name, experiments=True)
    _interleave(
        [_job(f"fill/{name}", [sys.executable, "exp_fit.py"], folder)], 1, {**bench, "samples": {}}
    )
    with sqlite3.connect(folder / "runs.db") as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)") if r[1] != "id"]
        picked = ", ".join("json_set(config, '$.C', ?)" if c == "config" else c for c in columns)
        conn.executemany(
            f"INSERT INTO runs ({', '.join(columns)}) SELECT {picked} FROM runs WHERE id = 1",
            [(i % 10,) for i in range(1, n)],
        )
        conn.execute(
            "INSERT INTO sources (run_id, name, md5) SELECT r.id, s.name, s.md5 "
            "FROM runs r, sources s WHERE s.run_id = 1 AND r.id > 1"
        )
    return folder


def _fill_mlflow(bench: dict, name: str, n: int) -> Path:
    """A folder whose ``mlflow.db`` holds ``n`` runs with a param and a metric ``C`` = 0..9.

    One run goes through MLflow's API (about 25 runs a second), then its rows are copied
    under new run ids by SQL, ``C`` set in both metric tables.
    """
    folder = _folder(bench, name)
    (folder / "template.py").write_text(MLFLOW_TEMPLATE_RUN)
    _interleave(
        [_job(f"fill/{name}", [sys.executable, "template.py"], folder)], 1, {**bench, "samples": {}}
    )
    with sqlite3.connect(folder / "mlflow.db") as conn:
        [(template,)] = conn.execute("SELECT run_uuid FROM runs").fetchall()
        runs = [{"run_uuid": uuid.uuid4().hex, "value": float(i % 10)} for i in range(1, n)]
        for table in ("runs", "params", "tags", "metrics", "latest_metrics"):
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            changed = {"run_uuid", "value"} if table.endswith("metrics") else {"run_uuid"}
            picked = ", ".join(f":{c}" if c in changed else c for c in columns)
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT {picked} FROM {table} "
                f"WHERE run_uuid = '{template}'",
                runs,
            )
    return folder


def _listed(sample: dict) -> None:
    """The number of runs ``expkit runs list`` printed, from its closing line."""
    last = (sample["stdout"].strip().splitlines() or [""])[-1].split()
    if last[:1] == ["the"]:  # "the 200 newest runs of ...": a table shows the newest
        last = last[1:]
    sample["listed"] = int(last[0]) if last and last[0].isdigit() else None


def _found(sample: dict) -> None:
    for line in sample["stdout"].splitlines():
        if line.startswith("FOUND "):
            sample["listed"] = int(line.split()[1])


def _check_listed(bench: dict, label: str, expected: int) -> None:
    counts = {s.get("listed") for s in bench["samples"].get(label, [])}
    if counts and counts != {expected}:
        bench["failures"].append(f"{label}: found {sorted(counts, key=str)} runs, not {expected}")


def run_listing(bench: dict) -> list[dict]:
    """Filtering 10,000 runs beside MLflow; listing 100,000 runs, expkit alone."""
    n, big = bench["sizes"]["list_runs"], bench["sizes"]["big_list"]
    expected = sum(1 for i in range(n) if i % 10 > 5)
    expkit = [*_script("expkit"), "runs", "list"]
    jobs = [
        _job(
            "filter/expkit",
            [*expkit, "C>5", "--all", "--store", "sqlite:///runs.db"],  # all, as MLflow gives
            _fill_expkit(bench, "list-expkit", n),
            after=_listed,
        ),
    ]
    if bench["peers"]["mlflow"]:
        folder = _fill_mlflow(bench, "list-mlflow", n)
        (folder / "search.py").write_text(MLFLOW_SEARCH)
        jobs.append(_job("filter/mlflow", [sys.executable, "search.py"], folder, after=_found))
    biggest = _fill_expkit(bench, "list-big", big)
    jobs.append(
        _job("big/expkit", [*expkit, "--store", "sqlite:///runs.db"], biggest, after=_listed)
    )
    jobs.append(
        _job(
            "big-all/expkit",
            [*expkit, "--all", "--store", "sqlite:///runs.db"],
            biggest,
            after=_listed,
        )
    )
    jobs.append(
        _job(
            "big-filter/expkit",
            [*expkit, "C>5", "--limit", "20", "--store", "sqlite:///runs.db"],
            biggest,
            after=_listed,
        )
    )
    _interleave(jobs, bench["repeat"], bench)
    _check_listed(bench, "filter/expkit", expected)
    _check_listed(bench, "filter/mlflow", expected)
    _check_listed(bench, "big/expkit", min(big, TABLE_LIMIT))
    _check_listed(bench, "big-all/expkit", big)
    _check_listed(bench, "big-filter/expkit", 20)
    absent = {} if bench["peers"]["mlflow"] else {"mlflow": "not installed"}
    filter_row = _pair(
        bench,
        "L1",
        f"L1 runs with C > 5 among {n:,} in SQLite: `expkit runs list 'C>5' --all` "
        "(baseline: MLflow, `mlflow.search_runs(filter_string='metrics.C > 5')`)",
        "filter",
        "mlflow",
        1 / 30,
        "expkit ≥ 30 x faster",
        absent,
    )
    return [
        filter_row,
        _row(
            "L2",
            f"L2 `expkit runs list` over {big:,} runs in SQLite (the table of the newest "
            f"{TABLE_LIMIT})",
            "s",
            {"expkit": _median(bench, "big/expkit")},
            0.5,
            judge="expkit",
            target="expkit < 0.5 s",
        ),
        _row(
            "L2-all",
            f"L2 `expkit runs list --all` over {big:,} runs, every one printed",
            "s",
            {"expkit": _median(bench, "big-all/expkit")},
            judge="expkit",
            target="reported",
        ),
        _row(
            "L2-filter",
            f"L2 `expkit runs list 'C>5' --limit 20` over {big:,} runs",
            "s",
            {"expkit": _median(bench, "big-filter/expkit")},
            0.5,
            judge="expkit",
            target="expkit < 0.5 s",
        ),
    ]


# -- output ---------------------------------------------------------------------------------------


def _versions(peers: dict[str, bool]) -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for dist in ("expkit", "sqlalchemy", "sacred", "mlflow"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["sqlite"] = sqlite3.sqlite_version
    return versions


def _markdown(report: dict) -> str:
    machine = report["machine"]
    parts = [
        "# expkit's SQL store against Sacred's SqlObserver and MLflow's SQLite store",
        "",
        f"Written by `python benchmarks/bench_sql.py{report['argv']}` on {report['date']}"
        f" ({report['mode']} sizes, median of {report['repeat']} repeats, each in a fresh"
        " process). Wall-clock times; ratio = expkit / baseline (below 1: expkit is faster);"
        " the CPU-time ratio is less disturbed by other load on the machine. The baseline"
        " column holds Sacred 0.8.7 for S1-S2 and MLflow for M1 and L1.",
        "",
        f"- machine: {machine['platform']}, {machine['cpu']}, {machine['cores']} cores",
        f"- load average when the run started: {report['load']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        _table(report["rows"]).replace("Sacred (or baseline)", "baseline"),
        "",
    ]
    if report["failures"]:
        parts += ["## Failed measurements", "", *[f"- {f}" for f in report["failures"]], ""]
    notes = HERE / "analysis_sql.md"
    if report["mode"] == "full" and notes.is_file():
        parts += [notes.read_text().rstrip(), ""]
    return "\n".join(parts)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_sql.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeat", type=int, default=None, help="samples per command")
    parser.add_argument("--output", type=Path, default=None, help="where the results go")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every workload and write the results; 1 when a measurement failed, 2 without
    SQLAlchemy (expkit's SQL store needs it), 4 for a bad option."""
    args = _parse(argv)
    if not _installed("sqlalchemy"):
        print("bench_sql: SQLAlchemy is not importable; install expkit[sql]")
        return 2
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        print(f"bench_sql: --repeat must be at least 1, not {repeat}")
        return 4
    output = args.output or (HERE / "_work" if args.quick else HERE)
    output.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="expkit-bench-sql-"))
    (work / "logs").mkdir()
    peers = {"sacred": _installed("sacred"), "mlflow": _installed("mlflow")}
    bench = {
        "work": work,
        "logs": work / "logs",
        "repeat": repeat,
        "sizes": QUICK_SIZES if args.quick else FULL_SIZES,
        "samples": {},
        "failures": [],
        "peers": peers,
    }
    saved_path = os.environ.get("PYTHONPATH")
    report = {
        "argv": "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "repeat": repeat,
        "sizes": bench["sizes"],
        "machine": _machine(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": {**_versions(peers), "expkit sources md5": _snapshot(work)},
    }
    started, rows = time.perf_counter(), []
    try:
        for name, runner in (("recording", run_recording), ("listing", run_listing)):
            print(f"{name} ", end="", flush=True)
            began = time.perf_counter()
            rows += runner(bench)
            print(f" {time.perf_counter() - began:.0f} s")
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
        samples=bench["samples"],
    )
    print()
    print(_table(rows))
    for failure in bench["failures"]:
        print(f"FAILED {failure}")
    (output / "results_sql.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (output / "results_sql.md").write_text(_markdown(report))
    print(f"\nwritten: {output / 'results_sql.md'} ({report['seconds']} s)")
    return 1 if bench["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
