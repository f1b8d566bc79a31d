"""``expkit runs list|show|diff|rm|export`` over a real file store."""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import pytest

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
