"""A damaged run never stops the commands that read a store: each is reported in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import run_expkit, write_project

EXPERIMENT = """
import expkit


@expkit.config
def cfg():
    C = 1.0


def _train(C, _run):
    for step in range(3):
        _run.log_scalar("loss", C / (step + 1))
    return C * 2


def exp_a1(C, _run):
    return _train(C, _run)


def exp_a2(C, _run):
    return _train(C, _run)


def exp_a3(C, _run):
    return _train(C, _run)


def exp_a4(C, _run):
    return _train(C, _run)


def exp_a5(C, _run):
    return _train(C, _run)


def exp_a6(C, _run):
    return _train(C, _run)
"""
TRUNCATED = '{"status": "COMPL'


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose file store holds runs 1 to 6, made once for the module."""
    root = write_project(tmp_path_factory.mktemp("damaged"), {"exp_a.py": EXPERIMENT})
    done = run_expkit("run", "exp_a.py", "-q", cwd=root)  # six experiments: runs 1 to 6
    assert done.returncode == 0, done.stdout + done.stderr
    return root


@pytest.fixture
def project(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the project, runs 2 to 4 damaged in three ways (5 and 6 intact)."""
    import shutil

    root = tmp_path / "project"
    shutil.copytree(pristine, root)
    runs = root / "runs"
    assert (runs / "_index" / "runs.jsonl").exists()  # the damage is after indexing
    (runs / "2" / "run.json").write_text(TRUNCATED)  # a crash mid-write, a full disk
    (runs / "3" / "config.json").write_text("[1, 2]")  # wrongly typed
    (runs / "4" / "run.json").write_text('{"experiment": "x", "status": 7, "meta": [1]}')
    return root


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_list_skips_a_truncated_run_with_one_line_and_shows_the_rest(project: Path) -> None:
    done = run_expkit("runs", "list", cwd=project)
    assert done.returncode == 0, done.stderr
    shown = {line.split()[0] for line in lines(done.stdout)[1:-1]}
    assert shown == {"1", "3", "4", "5", "6"}  # 2 is unreadable: not listed as COMPLETED
    warnings = [line for line in lines(done.stderr) if "run 2" in line]
    assert len(warnings) == 1 and "run.json is not valid JSON" in warnings[0]
    assert "Traceback" not in done.stderr


def test_a_wrongly_typed_run_is_listed_as_far_as_it_can_be_read(project: Path) -> None:
    done = run_expkit("runs", "list", "--json", cwd=project)
    assert done.returncode == 0, done.stderr
    by_id = {str(row["id"]): row for row in json.loads(done.stdout)}
    assert by_id["3"]["config"] == {} and by_id["3"]["status"] == "COMPLETED"
    assert by_id["4"]["status"] == "UNKNOWN" and by_id["4"]["meta"] == {}


def test_show_and_diff_of_a_truncated_run_say_so_in_one_line(project: Path) -> None:
    for args in (("show", "2"), ("diff", "1", "2")):
        done = run_expkit("runs", *args, cwd=project)
        assert done.returncode == 1
        assert lines(done.stderr) == [lines(done.stderr)[-1]]
        assert "runs/2/run.json is not valid JSON" in done.stderr
    shown = run_expkit("runs", "show", "3", cwd=project)
    assert shown.returncode == 0 and "status:     COMPLETED" in shown.stdout


def test_export_and_sync_report_each_damaged_run_and_go_on(project: Path) -> None:
    exported = run_expkit("runs", "export", cwd=project)
    assert exported.returncode == 0, exported.stderr
    assert {str(json.loads(line)["id"]) for line in lines(exported.stdout)} == {
        "1", "3", "4", "5", "6"
    }  # fmt: skip
    synced = run_expkit("sync", "runs", str(project / "copy"), cwd=project)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "5 copied" in synced.stdout
    assert len([line for line in lines(synced.stderr) if "run 2" in line]) == 1
    assert "Traceback" not in synced.stderr


def test_a_torn_metrics_log_falls_back_to_what_is_readable(project: Path) -> None:
    log = project / "runs" / "5" / "metrics.jsonl"
    good = log.read_text()
    log.write_text('{"loss": {"steps": [9], "timesta\n' + good + '{"loss": {"st')
    done = run_expkit("runs", "show", "5", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "loss: 3 values" in done.stdout  # the damaged first and torn last batch left out
    assert "line 1 is damaged" in done.stderr


def test_a_truncated_tinydb_file_is_one_line_naming_it_for_every_command(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", {"exp_a.py": EXPERIMENT})
    url = f"tinydb://{root / 'db'}"
    done = run_expkit("run", "exp_a.py::exp_a1", "--store", url, "-q", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    db = root / "db" / "metadata.json"
    db.write_text(db.read_text()[:40])  # a crash mid-write, a full disk
    for args in (
        ("runs", "list", "--store", url),
        ("runs", "show", "1", "--store", url),
        ("runs", "export", "--store", url),
        ("sync", url, str(root / "copy")),
    ):
        done = run_expkit(*args, cwd=root)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        [line] = lines(done.stderr)
        assert line.startswith(f"ERROR: {db}: not a TinyDB JSON file ("), args
