"""``expkit ui`` over a store of many runs, and MLflow's UI over as many, side by side.

Usage::

    python benchmarks/bench_ui.py [--runs 10000] [--points 1000000] [--store URL]
                                  [--mlflow] [--repeat 20] [--output DIR]

Without ``--store`` a file store of ``--runs`` runs is made (one real run, copied with its
config and result varied, as benchmarks/run.py's P5 does); ``--store URL`` measures any
other store instead (``sqlite:///runs.db`` once the SQL store is there), filled by you.
What is measured, each against the real ``expkit ui`` in a child process:

* ``/api/runs`` first page (50 runs): the first request (the store is read) and the
  median of ``--repeat`` more (served from the listing kept for two seconds, re-read in
  the background);
* the runs table shown in headless Chromium: from navigation to 50 rows on screen;
* a run of ``--points`` metric points charted: from navigation to the chart drawn, the
  first time (the reader loads the run: once after the table was shown, twice more in a
  fresh server; the median) and again;
* with ``--mlflow`` (``tox -e bench-ui``): ``mlflow server`` over its SQLite store with
  the same number of runs: its runs search (50 runs, as its UI asks) and its runs table in
  the browser.

Results go to ``results_ui.json`` and ``results_ui.md`` beside this file (or ``--output``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXPKIT = str(Path(sys.executable).with_name("expkit"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TARGETS = {
    "api_first_page_warm": 0.050,
    "table_shown": 1.0,
    "chart_shown_first": 1.0,
    "chart_shown_again": 1.0,
}
FIRST_VIEWS = 3  # the first chart of a run, each time in a fresh server: the median


def make_file_store(folder: Path, runs: int) -> str:
    """A file store of ``runs`` runs of one experiment, config and result varied."""
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    shutil.rmtree(folder, ignore_errors=True)
    ex = Experiment("bench")
    ex.observers.append(FileStorageObserver(folder))
    ex.add_config(lr=0.1, layers=3, optimizer="adam")

    @ex.main
    def main(lr, layers, _run):
        for step in range(100):
            _run.log_scalar("loss", lr / (step + 1), step)
        return lr * layers

    ex.run(options={"--capture": "no"})
    first = folder / "1"
    for i in range(2, runs + 1):
        target = folder / str(i)
        shutil.copytree(first, target)
        config = json.loads((target / "config.json").read_text())
        config.update(lr=i / runs, layers=i % 7, optimizer=("adam", "sgd")[i % 2])
        (target / "config.json").write_text(json.dumps(config))
        entry = json.loads((target / "run.json").read_text())
        entry["result"] = config["lr"] * config["layers"]
        (target / "run.json").write_text(json.dumps(entry))
    return str(folder)


def make_big_run(folder: Path, points: int) -> str:
    """A file store holding one run that logged ``points`` values of one metric."""
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    shutil.rmtree(folder, ignore_errors=True)
    ex = Experiment("long")
    ex.observers.append(FileStorageObserver(folder))

    @ex.main
    def main(_run):
        for i in range(points):
            _run.log_scalar("signal", math.sin(i / 1000) + (i % 97) / 97, i)

    ex.run(options={"--capture": "no"})
    return str(folder)


class Server:
    """A child process serving HTTP; started by ``argv``, ready when ``url`` answers."""

    def __init__(self, argv: list[str], url: str, cwd: Path, env: dict | None = None) -> None:
        self.argv, self.url, self.cwd, self.env = argv, url, cwd, env
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def __enter__(self) -> Server:
        begin = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=5).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.argv[0]} did not start") from None
                time.sleep(0.1)
        self.started = time.perf_counter() - begin
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A page of headless Chromium (Debian's), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_request(url: str, data: bytes | None = None) -> tuple[float, bytes]:
    request = urllib.request.Request(url, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    begin = time.perf_counter()
    body = urllib.request.urlopen(request, timeout=120).read()
    return time.perf_counter() - begin, body


def _expkit_ui(store: str, big_store: str, work: Path) -> tuple[Server, str]:
    """``expkit ui`` over both stores on a free port (to enter), and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [EXPKIT, "ui", "--store", store, "--store", big_store, "--port", str(port)]
    return Server(argv, url + "/static/style.css?", work), url


def measure_expkit(store: str, big_store: str, repeat: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ui, url = _expkit_ui(store, big_store, work)
    with ui as server:
        out["server_start"] = server.started
        first, body = timed_request(url + "/api/runs?limit=50")
        out["api_first_page_cold"] = first
        out["runs_listed"] = json.loads(body)["total"]
        samples = []
        for _ in range(repeat):
            time.sleep(0.1)
            samples.append(timed_request(url + "/api/runs?limit=50")[0])
        out["api_first_page_warm"] = statistics.median(samples)
        out["api_first_page_max"] = max(samples)
        sorted_samples = [
            timed_request(url + "/api/runs?limit=50&sort=lr&desc=0&where=layers>2")[0]
            for _ in range(5)
        ]
        out["api_filtered_sorted"] = statistics.median(sorted_samples)
        with browser_page() as page:
            shown = []
            for _ in range(3):
                begin = time.perf_counter()
                page.goto(url + "/")
                page.wait_for_function(
                    "() => document.querySelectorAll('#runs tbody tr[data-id]').length === 50"
                )
                shown.append(time.perf_counter() - begin)
            out["table_shown"] = statistics.median(shown)
            charted = [_charted(page, url) for _ in range(3)]
            out["chart_points_drawn"] = page.evaluate(
                "window.expkitRun.panels[0].plot.data[0].length"
            )
            firsts = [charted[0]]
            for _ in range(FIRST_VIEWS - 1):  # each in a new server: the run not read yet
                fresh, fresh_url = _expkit_ui(store, big_store, work)
                with fresh:
                    firsts.append(_charted(page, fresh_url))
            out["chart_shown_first"] = statistics.median(firsts)
            out["chart_shown_first_samples"] = firsts
            out["chart_shown_again"] = statistics.median(charted[1:])
    return out


def _charted(page: Any, url: str) -> float:
    """Seconds from navigating to the big run's page to its chart drawn."""
    begin = time.perf_counter()
    page.goto(url + "/runs/1?store=1")
    page.wait_for_function(
        "() => window.expkitRun && window.expkitRun.panels[0].plot"
        " && window.expkitRun.panels[0].plot.data[0].length > 0",
        timeout=120_000,
    )
    return time.perf_counter() - begin


def make_mlflow_store(db: Path, runs: int) -> str:
    """An MLflow SQLite store of ``runs`` runs with params and a result metric each.

    Ten runs are made through MLflow's client; the rest are copies of the first, made in
    its own tables with their own ids, names and values (its client creates about 10 runs
    a second here, 15 minutes for 10,000).
    """
    import sqlite3
    import uuid

    import mlflow
    from mlflow.entities import Metric, Param

    db.unlink(missing_ok=True)
    uri = f"sqlite:///{db}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench")
    now = int(time.time() * 1000)
    made = []
    for i in range(1, min(runs, 10) + 1):
        run = client.create_run(experiment, run_name=f"run-{i:05d}", start_time=now + i)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("result", i / runs * (i % 7), now, 0)],
            params=[Param("lr", str(i / runs)), Param("layers", str(i % 7))],
        )
        client.set_terminated(run.info.run_id)
        made.append(run.info.run_id)
    with sqlite3.connect(db) as con:
        first = made[0]
        for i in range(len(made) + 1, runs + 1):
            new = uuid.uuid4().hex
            overrides = {"run_uuid": new, "name": f"run-{i:05d}", "start_time": now + i}
            _copy_rows(con, "runs", "run_uuid", first, overrides)
            _copy_rows(
                con,
                "tags",
                "run_uuid",
                first,
                {"run_uuid": new},
                "key",
                "mlflow.runName",
                f"run-{i:05d}",
            )
            for table in ("params",):
                for key, value in (("lr", str(i / runs)), ("layers", str(i % 7))):
                    con.execute(
                        f"INSERT INTO {table} (key, value, run_uuid) VALUES (?, ?, ?)",
                        (key, value, new),
                    )
            for table in ("metrics", "latest_metrics"):
                _copy_rows(
                    con, table, "run_uuid", first, {"run_uuid": new, "value": i / runs * (i % 7)}
                )
    return uri


def _copy_rows(con: Any, table: str, key: str, source: str, overrides: dict, *rename: str) -> None:
    """Copy ``table``'s rows of ``key == source`` with ``overrides``; ``rename`` is
    (column, old value, new value) for one row's own value."""
    columns = [row[1] for row in con.execute(f"PRAGMA table_info({table})")]
    for row in con.execute(
        f"SELECT {', '.join(columns)} FROM {table} WHERE {key} = ?", (source,)
    ).fetchall():
        values = dict(zip(columns, row))
        values.update(overrides)
        if rename and values.get(rename[0]) == rename[1]:
            values["value"] = rename[2]
        marks = ", ".join("?" for _ in columns)
        con.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
            [values[c] for c in columns],
        )


def measure_mlflow(db: Path, runs: int, repeat: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    begin = time.perf_counter()
    uri = make_mlflow_store(db, runs)
    out["store_made"] = time.perf_counter() - begin
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    argv = [mlflow, "server", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1"]
    with Server(argv, url, work) as server:
        out["server_start"] = server.started
        search = json.dumps({"experiment_ids": ["1"], "max_results": 50}).encode()
        endpoint = url + "/ajax-api/2.0/mlflow/runs/search"
        out["api_first_page_cold"] = timed_request(endpoint, search)[0]
        out["api_first_page_warm"] = statistics.median(
            timed_request(endpoint, search)[0] for _ in range(repeat)
        )
        with browser_page() as page:
            shown = []
            for _ in range(3):
                begin = time.perf_counter()
                # MLflow 3 opens on its GenAI overview; the runs table is the training view.
                page.goto(f"{url}/#/experiments/1/runs?workflowType=machine_learning")
                page.get_by_text(f"run-{runs:05d}").first.wait_for(timeout=120_000)
                shown.append(time.perf_counter() - begin)
            out["table_shown"] = statistics.median(shown)
    return out


def markdown(report: dict[str, Any]) -> str:
    e, m = report["expkit"], report.get("mlflow") or {}
    rows = [
        ("server start", "server_start", None),
        ("`/api/runs` first page, first request (store read)", "api_first_page_cold", None),
        ("`/api/runs` first page (median)", "api_first_page_warm", "api_first_page_warm"),
        ("`/api/runs` filtered and sorted (median)", "api_filtered_sorted", None),
        ("runs table shown in the browser", "table_shown", "table_shown"),
        (
            f"{report['points']:,} points charted, first time (median of {FIRST_VIEWS} servers)",
            "chart_shown_first",
            "chart_shown_first",
        ),
        (f"{report['points']:,} points charted, again", "chart_shown_again", "chart_shown_again"),
    ]
    lines = [
        f"# expkit ui benchmark: {report['runs']:,} runs ({report['store_kind']})",
        "",
        f"{report['machine']}; medians; seconds. Target: expkit ≤ the target column.",
        "",
        "| measurement | expkit ui | MLflow UI (SQLite) | target |",
        "|---|---|---|---|",
    ]
    for label, key, target in rows:
        ours = e.get(key)
        theirs = m.get(key)
        goal = TARGETS.get(target or "")
        lines.append(
            f"| {label} | {_fmt(ours)} | {_fmt(theirs)} | {'' if goal is None else f'≤ {goal}'} |"
        )
    lines += [
        "",
        f"Points drawn for the {report['points']:,}-point series: {e.get('chart_points_drawn')}.",
        "First views of that chart, each the run's first reading: "
        + ", ".join(_fmt(v) for v in e.get("chart_shown_first_samples") or ())
        + ".",
    ]
    if report.get("mlflow_error"):
        lines.append(f"MLflow not measured: {report['mlflow_error']}")
    elif m:
        lines.append(
            f"MLflow's store of {report['runs']:,} runs took {m['store_made']:.0f} s to make."
        )
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--store", default=None, help="measure this store URL (filled by you)")
    parser.add_argument("--mlflow", action="store_true", help="measure MLflow's UI too")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--output", type=Path, default=HERE)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    try:
        store = args.store or make_file_store(work / "runs", args.runs)
        big = make_big_run(work / "big", args.points)
        report: dict[str, Any] = {
            "runs": args.runs,
            "points": args.points,
            "store_kind": "given store" if args.store else "file store",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}",
            "expkit": measure_expkit(store, big, args.repeat, work),
        }
        if args.mlflow:
            try:
                report["mlflow"] = measure_mlflow(work / "mlflow.db", args.runs, 5, work)
            except Exception as exc:  # not installable or not starting: said in the results
                report["mlflow_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results_ui.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.output / "results_ui.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
