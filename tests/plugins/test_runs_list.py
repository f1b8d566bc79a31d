"""``expkit runs list`` on a store of five experiments (file, TinyDB, MongoDB): a table that
fits the terminal, chosen columns, sorting of mixed kinds, filters on metrics and info."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from cli_helpers import EXPKIT, child_env, run_in_terminal
from mixed_store import LONG_PATH, record_mixed

import expkit


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("mixed") / "runs")
    record_mixed(url)
    return url


@pytest.fixture(scope="module")
def mixed_tinydb(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"tinydb://{tmp_path_factory.mktemp('mixed') / 'db'}"
    record_mixed(url)
    return url


@pytest.fixture(scope="module")
def mixed_sql(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path_factory.mktemp('mixed') / 'runs.db'}"
    record_mixed(url)
    return url


@pytest.fixture
def mixed_mongo(mongo_url: str) -> str:
    record_mixed(mongo_url)
    return mongo_url


@pytest.fixture(params=["file", "tinydb", "mongo", "sql"])
def mixed(request: pytest.FixtureRequest) -> str:
    """The URL of a store holding the 12 runs of mixed_store.record_mixed (the SQL store
    selects runs itself: what it cannot answer, metrics and info, stays with the core)."""
    return request.getfixturevalue(f"mixed_{request.param}")


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no project root of the checkout's
    monkeypatch.delenv("COLUMNS", raising=False)


def run_list(
    url: str, *args: str, capsys: pytest.CaptureFixture, columns: int | None = None
) -> tuple[int, list[str], str]:
    if columns is not None:
        os.environ["COLUMNS"] = str(columns)
    try:
        code = expkit.main(["runs", "list", "--store", url, *args])
    finally:
        os.environ.pop("COLUMNS", None)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def cells(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


# --- width -------------------------------------------------------------------------------------


def test_mixed_experiments_fit_80_columns_with_the_config_that_differs_per_experiment(
    mixed: str, capsys: pytest.CaptureFixture
) -> None:
    code, lines, _ = run_list(mixed, capsys=capsys, columns=80)
    assert code == 0
    header, *rows, footer = lines
    assert all(len(line) <= 80 for line in [header, *rows]), "\n".join(lines)
    assert cells(header) == ["id", "experiment", "status", "result", "config"]
    assert len(rows) == 12
    by_experiment: dict[str, list[str]] = {}
    for row in rows:
        by_experiment.setdefault(cells(row)[1], []).append(cells(row)[-1])
    # Each run shows the entries that differ among the runs of its own experiment only.
    assert sorted(by_experiment["exp_knn.py::exp_knn"]) == ["k=15", "k=3"]
    svm = by_experiment["exp_svm.py::exp_svm"]
    assert all(label.startswith("C=") for label in svm) and not any("seed" in s for s in svm)
    assert "path" not in "".join(svm)  # the same in every svm run
    assert footer.endswith("; not shown: duration, start_time (see --wide)")
    assert footer.startswith("12 runs in ")


def test_a_wide_terminal_shows_times_and_whole_labels(
    mixed: str, capsys: pytest.CaptureFixture
) -> None:
    _, lines, _ = run_list(mixed, capsys=capsys, columns=200)
    header, *rows, footer = lines
    assert cells(header) == [
        "id", "experiment", "status", "start_time", "duration", "result", "config"
    ]  # fmt: skip
    assert "layers=[128, 128, 64] lr=0.01" in "\n".join(rows)
    assert "not shown" not in footer


def test_one_experiment_gets_a_column_per_differing_entry(
    mixed: str, capsys: pytest.CaptureFixture
) -> None:
    _, lines, _ = run_list(mixed, "--experiment", "exp_svm.py", capsys=capsys, columns=80)
    header, *rows, footer = lines
    assert cells(header) == [
        "id",
        "status",
        "start_time",
        "duration",
        "result",
        "C",
        "gamma",
        "kernel",
    ]
    assert [cells(r)[-3:] for r in rows] == [
        ["10", "0.1", "rbf"],
        ["4", "0.7", "linear"],
        ["0.5", "0.7", "rbf"],
    ]
    assert footer.startswith("3 runs of exp_svm.py::exp_svm in ")


def test_narrow_terminal_drops_columns_and_says_which(
    mixed: str, capsys: pytest.CaptureFixture
) -> None:
    _, lines, _ = run_list(mixed, "--experiment", "exp_svm*", capsys=capsys, columns=40)
    header, *rows, footer = lines
    assert all(len(line) <= 40 for line in [header, *rows]), "\n".join(lines)
    assert cells(header)[:2] == ["id", "status"]
    assert "not shown: duration, start_time" in footer


def test_wide_shows_every_entry_whole(mixed: str, capsys: pytest.CaptureFixture) -> None:
    _, lines, _ = run_list(mixed, "--experiment", "exp_svm*", "--wide", capsys=capsys, columns=80)
    header = cells(lines[0])
    assert {"experiment", "seed", "dataset.name", "dataset.path", "C"} <= set(header)
    assert LONG_PATH in lines[1]
    assert len(lines[1]) > 80


def test_long_values_are_shortened_in_the_middle(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from expkit import Experiment
    from expkit_plugins.file_store import FileStorageObserver

    ex = Experiment("paths")
    ex.add_config(path="x")
    ex.main(lambda path: len(path))
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))
    for path in ("/a/short.csv", LONG_PATH):
        ex.run(config_updates={"path": path}, options={"--capture": "sys"})
    _, lines, _ = run_list(str(tmp_path / "runs"), capsys=capsys, columns=200)
    shown = cells(lines[1])[-1]
    assert len(shown) == 24 and shown.startswith("/data/data") and shown.endswith("licated.csv")
    assert "…" in shown or "..." in shown


def test_columns_env_is_honoured_and_a_terminal_too(mixed_file: str, tmp_path: Path) -> None:
    env = child_env(COLUMNS="60")
    proc = subprocess.run(
        [EXPKIT, "runs", "list", "--store", mixed_file], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()[:-1]) <= 60
    # Without COLUMNS, on a pseudo-terminal 50 columns wide.
    code, out = run_in_terminal("runs", "list", "--store", mixed_file, cwd=tmp_path, columns=50)
    assert code == 0
    lines = out.replace("\r\n", "\n").splitlines()
    assert len(lines) == 14, out
    assert max(len(line) for line in lines[:-1]) <= 50, out
    assert lines[0].split()[:2] == ["id", "experiment"]


# --- chosen columns, metrics and info ----------------------------------------------------------


def test_columns_choose_config_metrics_and_info(mixed: str, capsys: pytest.CaptureFixture) -> None:
    args = (
        "--experiment",
        "exp_forest*",
        "--columns",
        "criterion,metrics.oob_error,info.best.depth",
    )
    _, lines, _ = run_list(mixed, *args, capsys=capsys, columns=80)
    assert cells(lines[0]) == ["id", "criterion", "metrics.oob_error", "info.best.depth"]
    assert sorted(cells(row)[1:] for row in lines[1:-1]) == [
        ["entropy", "0.03", "8"],
        ["gini", "0.03", "12"],
    ]


def test_filters_on_the_last_value_of_a_metric_and_on_info(
    mixed: str, capsys: pytest.CaptureFixture
) -> None:
    # svm logs loss 1/(C*20) last: C=0.5 -> 0.1, C=4 -> 0.0125, C=10 -> 0.005
    code, lines, _ = run_list(mixed, "metrics.loss<0.05", "--json", capsys=capsys)
    listed = json.loads("\n".join(lines))
    assert code == 0
    assert sorted(r["config"]["C"] for r in listed) == [4.0, 10.0]
    _, lines, _ = run_list(mixed, "info.best.depth<10", "--json", capsys=capsys)
    assert [r["config"]["max_depth"] for r in json.loads("\n".join(lines))] == [8]
    _, lines, _ = run_list(mixed, "metrics.loss>0.3", "--columns", "metrics.loss", capsys=capsys)
    assert sorted(cells(row)[1] for row in lines[1:-1]) == ["0.4004", "0.404"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["loss>1"], "wrong filter: loss>1: 'loss' is not a key of any of the 12 runs "
         "(did you mean 'metrics.loss'?)"),
        (["info.best.C>1"], "wrong filter: info.best.C>1: 'info.best.C' is not a key of any of "
         "the 12 runs (did you mean 'info.best.score' or 'info.best.depth'?)"),
        (["--sort", "gama"], "cannot sort by 'gama': 'gama' is not a key of any of the 12 runs "
         "(did you mean 'gamma'?)"),
        (["--columns", "kernl"], "--columns: 'kernl' is not a key of any of the 12 runs "
         "(did you mean 'kernel'?)"),
    ],
)  # fmt: skip
def test_a_key_no_run_has_says_so(
    mixed_file: str, args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    code, lines, err = run_list(mixed_file, *args, capsys=capsys)
    assert code == 4
    assert err == f"ERROR: {message}\n"
    assert lines == []


def test_a_key_some_runs_have_is_no_error(mixed_file: str, capsys: pytest.CaptureFixture) -> None:
    code, lines, _ = run_list(mixed_file, "k>100", capsys=capsys)
    assert (code, lines) == (0, [f"no runs in {mixed_file} match"])


# --- sorting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("descending", [False, True])
def test_sorting_a_column_of_mixed_kinds_keeps_the_kinds_in_order(
    mixed: str, descending: bool, capsys: pytest.CaptureFixture
) -> None:
    args = ["--sort", "result", "--columns", "result"] + (["--descending"] if descending else [])
    _, lines, _ = run_list(mixed, *args, capsys=capsys, columns=200)
    results = [cells(row)[1] for row in lines[1:-1]]
    numbers = [float(r) for r in results[:7]]
    assert numbers == sorted(numbers, reverse=descending)
    texts = results[7:9]
    assert all(t.startswith("accuracy=") for t in texts)
    assert texts == sorted(texts, reverse=descending)
    assert all(r.startswith('{"accuracy"') for r in results[9:11])
    assert results[11:] == ["null"]  # the failed run: no result, last either way


# --- many runs ---------------------------------------------------------------------------------


def test_a_table_of_many_runs_shows_the_newest_and_says_how_to_see_more(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import datetime

    from expkit.pluginmanager import create_plugin_manager
    from expkit.store import open_store
    from expkit_plugins.runs import TABLE_LIMIT

    url = f"sqlite:///{tmp_path / 'many.db'}"
    observer = open_store(create_plugin_manager(), url)
    start = datetime.datetime(2024, 5, 1)
    for n in range(TABLE_LIMIT + 5):
        at = start + datetime.timedelta(minutes=n)
        observer.started_event({"name": "many", "sources": []}, "main", {}, at, {"n": n}, {}, None)
        observer.completed_event(at, n)
    code, lines, _ = run_list(url, capsys=capsys)
    assert code == 0
    _, *rows, footer = lines
    assert len(rows) == TABLE_LIMIT and cells(rows[0])[0] == str(TABLE_LIMIT + 5)  # newest first
    assert footer.startswith(f"the {TABLE_LIMIT} newest runs of many in ")
    assert footer.endswith("more with --all or --limit N")
    _, lines, _ = run_list(url, "--all", capsys=capsys)
    assert len(lines) == TABLE_LIMIT + 7 and lines[-1].startswith(f"{TABLE_LIMIT + 5} runs of")
    _, lines, _ = run_list(url, "--json", capsys=capsys)
    assert len(json.loads("\n".join(lines))) == TABLE_LIMIT + 5  # JSON is for programs: all


def test_entries_equal_in_python_but_stored_differently_get_a_column(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    ex = Experiment("kinds")
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))

    @ex.config
    def cfg():
        same = 0.5  # noqa: F841
        zero = 0.0  # noqa: F841
        one = 1  # noqa: F841
        ones = [1]  # noqa: F841

    @ex.main
    def main() -> None:
        pass

    ex.run(options={"--capture": "no"})
    ex.run(config_updates={"zero": -0.0, "one": 1.0, "ones": [1.0]}, options={"--capture": "no"})
    _, lines, _ = run_list(str(tmp_path / "runs"), capsys=capsys, columns=200)
    assert cells(lines[0])[-3:] == ["one", "ones", "zero"]  # not "same"
    assert [cells(r)[-3:] for r in lines[1:3]] == [["1", "[1.0]", "-0"], ["1", "[1]", "0"]]
