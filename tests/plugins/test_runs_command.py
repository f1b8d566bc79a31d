"""``expkit runs SUBCOMMAND`` over real stores: file, TinyDB and MongoDB."""

from __future__ import annotations

import datetime
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from cli_helpers import EXPKIT, child_env, run_expkit, run_in_terminal

import expkit
from expkit_plugins.file_store import FileStorageObserver

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0)
T1 = datetime.datetime(2024, 5, 1, 12, 5, 0)


def store_run(
    store: Path,
    base: Path,
    config: dict,
    result: object,
    *,
    source: str = "x = 1\n",
    status: str = "COMPLETED",
    start: datetime.datetime = T0,
) -> str:
    """Record one run in the file store at ``store`` through its observer events."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "exp.py").write_text(source)
    obs = FileStorageObserver(store)
    ex_info = {
        "name": "demo",
        "base_dir": str(base),
        "sources": [["exp.py", "md5"]],
        "dependencies": ["numpy==1.0"],
        "repositories": [],
        "mainfile": "exp.py",
    }
    run_id = obs.started_event(ex_info, "main", {"hostname": "h"}, start, config, {}, None)
    stamp = start + datetime.timedelta(seconds=2)
    points = {"name": "acc", "steps": [0, 1], "values": [0.5, 0.75], "timestamps": [stamp] * 2}
    obs.log_metrics({"acc": points}, {})
    obs.heartbeat_event({}, f"training {config}\n", stamp, None)
    if status == "COMPLETED":
        obs.completed_event(stamp, result)
    return run_id


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.expkit]\n")
    runs = tmp_path / "runs"
    store_run(runs, tmp_path / "a", {"C": 1, "kernel": "rbf"}, 0.9)
    store_run(runs, tmp_path / "b", {"C": 2, "kernel": "rbf"}, 0.95, source="x = 2\n", start=T1)
    return runs


HOUR = datetime.timedelta(hours=1)


def runs(*args: str) -> int:
    return expkit.main(["runs", *args])


def test_list_shows_the_runs_and_only_the_config_entries_that_differ(
    store: Path, capsys: pytest.CaptureFixture
) -> None:
    assert runs("list") == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    # One experiment: named in the last line, not in a column.
    assert header.split() == ["id", "status", "start_time", "duration", "result", "C"]
    assert rows[0].split()[:2] == ["2", "COMPLETED"] and rows[0].split()[-1] == "2"
    assert "kernel" not in out
    assert rows[-1] == f"2 runs of demo in {store}"


def test_list_filters_by_config(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert runs("list", "C>1", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["config"]["C"]) for r in listed] == [("2", 2)]


def test_a_running_run_without_heartbeat_for_long_is_probably_dead(
    store: Path, capsys: pytest.CaptureFixture
) -> None:
    store_run(store, store.parent / "c", {"C": 3}, None, status="RUNNING")
    assert runs("list", "--status", "RUNNING") == 0
    assert "PROBABLY_DEAD" in capsys.readouterr().out


@pytest.mark.parametrize(("beat", "dead"), [("", True), ("beat_interval = 3600\n", False)])
def test_the_status_filter_and_the_table_judge_a_silent_run_alike(
    store: Path, capsys: pytest.CaptureFixture, beat: str, dead: bool
) -> None:
    (store.parent / "pyproject.toml").write_text("[tool.expkit]\n" + beat)
    silent = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    store_run(store, store.parent / "c", {"C": 3}, None, status="RUNNING", start=silent - HOUR / 2)
    assert runs("list", "--status", "PROBABLY_DEAD", "--json") == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == (["3"] if dead else [])
    assert runs("list", "--status", "RUNNING", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in shown] == ["PROBABLY_DEAD" if dead else "RUNNING"]


@pytest.mark.parametrize(
    ("option", "order", "first_c"), [((), "C", 0), (("--descending",), "descending C", 204)]
)
def test_a_sorted_table_of_many_runs_says_it_shows_the_first_in_that_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    option: tuple[str, ...],
    order: str,
    first_c: int,
) -> None:
    from expkit_plugins.runs import TABLE_LIMIT

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.expkit]\n")
    # C grows with the start time: by C, the oldest runs come first, not the newest.
    for n in range(TABLE_LIMIT + 5):
        start = T0 + datetime.timedelta(minutes=n)
        store_run(tmp_path / "runs", tmp_path / "exp", {"C": n}, None, start=start)
    assert runs("list", "--sort", "C", *option, "--columns", "C") == 0
    _, *rows, footer = capsys.readouterr().out.splitlines()
    assert len(rows) == TABLE_LIMIT and rows[0].split()[1] == str(first_c)
    shown = f"the first {TABLE_LIMIT} runs by {order} of demo in {tmp_path / 'runs'}"
    assert footer == f"{shown}; more with --all or --limit N"


def test_show_prints_everything_recorded(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert runs("show", "1") == 0
    out = capsys.readouterr().out
    for expected in ("C = 1", "result:     0.9", "numpy==1.0", "acc: 2 values, last 0.75"):
        assert expected in out
    assert out.rstrip().endswith("training {'C': 1, 'kernel': 'rbf'}")


def test_show_of_an_unknown_run_is_one_line(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert runs("show", "99") == 4
    assert capsys.readouterr().err == f"ERROR: no run '99' in the store {store}\n"


def test_diff_shows_config_result_and_source_lines(
    store: Path, capsys: pytest.CaptureFixture
) -> None:
    assert runs("diff", "1", "2") == 0
    out = capsys.readouterr().out.splitlines()
    assert "  -x = 1" in out and "  +x = 2" in out
    assert out[-1] == "same: experiment, metrics, dependencies, host, git"
    assert runs("diff", "1", "2", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"] == {"C": {"1": 1, "2": 2}}
    assert report["result"] == [0.9, 0.95]
    assert "+x = 2" in report["sources"]["exp.py"]["2"]


def test_rm_without_an_answer_deletes_nothing(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert runs("rm", "1") == 4
    assert "pass --yes" in capsys.readouterr().err
    assert (store / "1").is_dir()
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert runs("rm", "1") == 0
    assert (store / "1").is_dir()


def test_rm_deletes_after_yes(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert runs("rm", "1") == 0
    assert runs("rm", "2", "--yes") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "deleted 1 run(s): 2"
    assert runs("list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_export_writes_one_whole_run_per_line(store: Path, tmp_path: Path) -> None:
    assert runs("export", "--output", str(tmp_path / "all.jsonl")) == 0
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    exported = sorted((json.loads(line) for line in lines), key=lambda r: r["id"])
    assert [r["result"] for r in exported] == [0.9, 0.95]
    assert exported[0]["metrics"]["acc"]["values"] == [0.5, 0.75]
    assert exported[0]["captured_out"].startswith("training")


def test_rm_of_a_live_run_needs_force(store: Path, capsys: pytest.CaptureFixture) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    live = store_run(store, store.parent / "c", {"C": 3}, None, status="RUNNING", start=now)
    assert runs("rm", live, "--yes") == 4
    assert capsys.readouterr().err == (
        f"ERROR: run {live} is still running (its heartbeat is recent): stop it first, "
        "or delete it anyway with --force\n"
    )
    assert (store / live).is_dir()
    assert runs("rm", live, "--yes", "--force") == 0
    assert not (store / live).exists()


def test_rm_of_a_run_named_twice_deletes_it_once(
    store: Path, capsys: pytest.CaptureFixture
) -> None:
    assert runs("rm", "2", "2", "--yes") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "deleted 1 run(s): 2"
    assert (store / "1").is_dir() and not (store / "2").exists()


@pytest.mark.parametrize("where", ["missing/all.jsonl", "."], ids=["no-folder", "a-folder"])
def test_export_to_a_path_that_cannot_be_written_is_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    path = str(tmp_path / where)
    assert runs("export", "--output", path) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR: -o {path}: cannot write there: ") and err.count("\n") == 1


def test_an_unknown_subcommand_is_a_usage_error(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert runs("lst") == 4
    assert "one of list, show, diff, rm, export, metrics, artifact" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../outside.py", "/etc/passwd", "a/../../b.py"])
def test_a_stored_source_named_outside_the_base_dir_is_refused(name: str) -> None:
    from expkit.errors import UsageError
    from expkit.records import RunRecord
    from expkit_plugins.runs import read_sources

    class NeverRead:
        def read_source(self, run_id, source):
            raise AssertionError(f"read {source!r} although its name is refused")

    sources = {"sources": [[name, "0"]]}
    record = RunRecord(1, "file://x", "exp", "COMPLETED", experiment_info=sources)
    with pytest.raises(UsageError, match="outside its base dir"):
        read_sources(NeverRead(), record)


# --- on a store of five experiments: diff, show, metrics, artifact -----------------------------


def _recorded(url: str, folder: Path) -> str:
    from mixed_store import record_mixed

    record_mixed(url, artifact_dir=folder / "artifacts")
    return url


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("mixed")
    return _recorded(str(folder / "runs"), folder)


@pytest.fixture(scope="module")
def mixed_tinydb(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("mixed")
    return _recorded(f"tinydb://{folder / 'db'}", folder)


@pytest.fixture(scope="module")
def mixed_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("sqlalchemy")
    folder = tmp_path_factory.mktemp("mixed")
    return _recorded(f"sqlite:///{folder / 'runs.db'}", folder)


@pytest.fixture
def mixed_mongo(mongo_url: str, tmp_path: Path) -> str:
    return _recorded(mongo_url, tmp_path)


@pytest.fixture
def mixed_s3(s3_url: str, tmp_path: Path) -> str:
    return _recorded(s3_url, tmp_path)


@pytest.fixture(params=["file", "tinydb", "mongo", "sqlite", "s3"])
def mixed(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store of every kind holding mixed_store's 12 runs; the first svm run has model.bin."""
    monkeypatch.chdir(tmp_path)
    return request.getfixturevalue(f"mixed_{request.param}")


def ids_of(url: str, experiment: str, **kwargs: object) -> list[str]:
    from expkit.runs import runs as find

    return [
        str(r.id)
        for r in find(url, experiment=experiment, sort="start_time", descending=False, **kwargs)
    ]


def test_diff_tells_a_missing_key_from_null_and_flags_other_experiments(
    mixed: str, capsys: pytest.CaptureFixture
) -> None:
    forest_default, forest_deep = ids_of(mixed, "exp_forest*")
    knn = ids_of(mixed, "exp_knn*")[0]
    assert runs("diff", forest_default, forest_deep, knn, "--store", mixed) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("different experiments: ")
    assert "exp_forest.py::exp_forest" in out[1] and "exp_knn.py::exp_knn" in out[1]
    max_depth = next(line for line in out if line.strip().startswith("max_depth"))
    assert max_depth.split() == ["max_depth", "null", "8", "(missing)"]
    assert runs("diff", forest_default, forest_deep, knn, "--store", mixed, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["max_depth"] == {forest_default: None, forest_deep: 8}
    assert report["config"]["k"] == {knn: 3}
    assert report["experiment"][knn] == "exp_knn.py::exp_knn"


def test_diff_compares_metrics_last_min_max_and_the_first_step_that_differs(
    mixed: str, capsys: pytest.CaptureFixture
) -> None:
    small, _, large = ids_of(mixed, "exp_svm*")  # C = 0.5 and C = 10
    assert runs("diff", small, large, "--store", mixed, "--json") == 0
    loss = json.loads(capsys.readouterr().out)["metrics"]["loss"]
    assert loss["runs"][small] == {"points": 20, "last": 0.1, "min": 0.1, "max": 2.0}
    assert loss["runs"][large]["last"] == pytest.approx(0.005)
    assert loss["first_differing_step"] == {large: 0}
    assert runs("diff", small, large, "--store", mixed) == 0
    out = capsys.readouterr().out.splitlines()
    start = out.index("metrics:")
    assert out[start + 2].split()[:4] == ["loss", "last", "0.1", "0.005"]
    assert out[start + 6].split() == ["differs", "at", "step", "0"]
    # Two runs of the same config log the same series: no metrics section then.
    first, second = ids_of(mixed, "exp_forest*")
    assert runs("diff", first, second, "--store", mixed) == 0
    assert "metrics" in capsys.readouterr().out.splitlines()[-1]  # "same: ..., metrics, ..."


def test_show_draws_a_sparkline_of_each_metric(mixed: str, capsys: pytest.CaptureFixture) -> None:
    small = ids_of(mixed, "exp_svm*")[0]
    assert runs("show", small, "--store", mixed) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(line for line in out if line.startswith("  loss:"))
    assert line.startswith("  loss: 20 values, last 0.1, min 0.1, max 2  ")
    spark = line.rsplit("  ", 1)[1]
    assert len(spark) == 20 and spark[0] == "█" and spark[-1] == "▁"


def test_sparkline_averages_long_series_into_its_width() -> None:
    from expkit_plugins.runs import sparkline

    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline(list(range(1000)), width=10) == "▁▂▃▃▄▅▆▆▇█"
    assert sparkline([1, "x", 1]) == "▁ ▁"
    assert sparkline([]) == ""


def test_an_infinite_metric_value_is_drawn_at_the_end_of_the_scale() -> None:
    from expkit_plugins.runs import sparkline

    inf = float("inf")
    assert sparkline([0, 1, inf, 2, -inf]) == "▁▅██▁"
    assert sparkline([inf, inf]) == "██"
    assert sparkline([inf, -inf], width=1) == ""  # averaged: no number left


def test_show_and_metrics_of_a_run_that_logged_inf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    obs = FileStorageObserver(tmp_path / "runs")
    ex_info = {"name": "demo", "base_dir": str(tmp_path), "sources": [], "dependencies": []}
    run_id = obs.started_event(ex_info, "main", {}, T0, {}, {}, None)
    points = {
        "name": "loss",
        "steps": [0, 1],
        "values": [1.0, float("inf")],
        "timestamps": [T0] * 2,
    }
    obs.log_metrics({"loss": points}, {})
    obs.completed_event(T0, None)
    assert runs("show", str(run_id), "--store", "runs") == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  loss:")]
    assert line.startswith("  loss: 2 values, last inf, min 1, max inf  ")
    assert runs("metrics", str(run_id), "--store", "runs") == 0
    assert "inf" in capsys.readouterr().out


def test_metrics_prints_every_step_and_csv(mixed: str, capsys: pytest.CaptureFixture) -> None:
    import csv
    import io

    mlp = ids_of(mixed, "exp_mlp*")[0]
    assert runs("metrics", mlp, "--store", mixed) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("loss (5 values)  ")
    assert out[1].split() == ["step", "value", "time"]
    assert [line.split()[:2] for line in out[2:]] == [
        ["0", "2.002"], ["1", "1.001"], ["2", "0.667333"], ["3", "0.5005"], ["4", "0.4004"]
    ]  # fmt: skip
    assert runs("metrics", mlp, "loss", "--csv", "--store", mixed) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["metric"], int(r["step"]), float(r["value"])) for r in rows][:2] == [
        ("loss", 0, 2.002),
        ("loss", 1, 1.001),
    ]
    assert len(rows) == 5 and all(r["timestamp"].startswith("20") for r in rows)


def test_metrics_of_an_unknown_name_says_which_there_are(
    mixed: str, capsys: pytest.CaptureFixture
) -> None:
    mlp = ids_of(mixed, "exp_mlp*")[0]
    assert runs("metrics", mlp, "los", "--store", mixed) == 4
    err = capsys.readouterr().err
    assert (
        err == f"ERROR: run {mlp} has no metric 'los' (did you mean 'loss'?); its metrics: loss\n"
    )


def test_artifact_to_a_file_and_to_standard_output(
    mixed: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    svm = ids_of(mixed, "exp_svm*")[0]
    target = tmp_path / "got.bin"
    assert runs("artifact", svm, "model.bin", "-o", str(target), "--store", mixed) == 0
    assert target.read_bytes() == bytes(range(256))
    assert capsys.readouterr().out == (
        f"wrote artifact model.bin of run {svm} to {target} (256 bytes)\n"
    )
    proc = subprocess.run(
        [EXPKIT, "runs", "artifact", svm, "model.bin", "--store", mixed],
        capture_output=True, cwd=tmp_path, env=child_env(),
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, bytes(range(256)))
    assert runs("artifact", svm, "model.pkl", "--store", mixed) == 4
    assert capsys.readouterr().err == (
        f"ERROR: run {svm} has no artifact 'model.pkl' (did you mean 'model.bin'?); "
        "its artifacts: model.bin\n"
    )


def test_a_binary_artifact_is_not_written_to_a_terminal(mixed_file: str, tmp_path: Path) -> None:
    svm = ids_of(mixed_file, "exp_svm*")[0]
    args = ("runs", "artifact", svm, "model.bin", "--store", mixed_file)
    code, out = run_in_terminal(*args, cwd=tmp_path)
    assert code == 4
    assert "\x00" not in out


def test_tinydb_runs_are_named_by_a_prefix_on_the_command_line(
    mixed_tinydb: str, capsys: pytest.CaptureFixture
) -> None:
    url = mixed_tinydb
    knn = ids_of(url, "exp_knn*")[0]
    assert len(knn) == 32
    assert runs("list", "--experiment", "exp_knn*", "--store", url) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert knn[:8] in listed  # shown short
    assert runs("show", knn[:8], "--store", url) == 0
    assert capsys.readouterr().out.startswith(f"run {knn} of exp_knn.py::exp_knn in ")


def test_o_is_refused_where_it_means_nothing(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert runs("list", "-o", "C=1") == 4
    assert capsys.readouterr().err == (
        "ERROR: expkit runs list takes no -o (it sets config entries of expkit run)\n"
    )


# --- help --------------------------------------------------------------------------------------


def test_runs_help_lists_every_subcommand_with_its_options(store: Path) -> None:
    proc = run_expkit("runs", "--help", cwd=store.parent)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for synopsis in ("list [FILTER ...]", "show ID", "diff ID ID [ID ...]", "rm ID [ID ...]",
                     "export [FILTER ...]", "metrics ID [NAME]", "artifact ID NAME"):  # fmt: skip
        assert re.search(rf"^  {re.escape(synopsis)} ", out, re.M), synopsis
    for option in ("--columns", "--wide", "--csv", "--yes", "--output", "--sort"):
        assert option in out
    assert "metrics.loss<0.1" in out  # the filter grammar


@pytest.mark.parametrize(
    ("sub", "has", "lacks"),
    [
        ("list", ["--columns KEYS", "--wide", "A FILTER is KEY OP VALUE"], ["--csv", "--yes"]),
        ("metrics", ["--csv", "--json"], ["--columns", "--yes"]),
        ("artifact", ["--output FILE"], ["--csv"]),
    ],
)
def test_each_subcommand_has_its_own_help(
    store: Path, sub: str, has: list[str], lacks: list[str]
) -> None:
    proc = run_expkit("runs", sub, "--help", cwd=store.parent)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"usage: expkit runs {sub} ")
    assert all(text in proc.stdout for text in has), proc.stdout
    assert not any(text in proc.stdout for text in lacks), proc.stdout
    assert "--store URL" in proc.stdout


def test_output_cut_short_by_a_pipe_is_no_error(tmp_path: Path) -> None:
    from expkit import Experiment
    from expkit_plugins.file_store import FileStorageObserver

    ex = Experiment("long")
    ex.observers.append(FileStorageObserver(tmp_path / "runs"))

    @ex.main
    def main(_run):
        for step in range(20000):
            _run.log_scalar("loss", 1 / (step + 1))

    ex.run(options={"--capture": "sys"})
    proc = subprocess.Popen(
        [EXPKIT, "runs", "metrics", "1", "--csv", "--store", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=child_env(),
    )  # fmt: skip
    assert proc.stdout.readline() == b"metric,step,value,timestamp\n"
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()
