"""``expkit sync SPOOL STORE_URL``: spooled runs delivered to a store, as a user runs it."""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import block_folder, child_env, run_expkit

import expkit
from expkit.delivery import GuardedStore, SpooledRun
from expkit_plugins.file_store import FileStorageObserver, read_run

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, 0)
T1 = datetime.datetime(2024, 5, 1, 12, 0, 3, 140000)


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Work in ``tmp_path``, with the spool in ``tmp_path/spool``."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def sync(*args: str) -> int:
    return expkit.main(["sync", *args])


def spool_run(runs: Path, tag: str, url: str = "runs", resource: Path | None = None) -> Path:
    """Spool a whole run for the file store at ``runs`` (which is in the way); its folder."""
    runs.parent.mkdir(parents=True, exist_ok=True)
    if not runs.is_symlink():
        block_folder(runs)
    guard = GuardedStore(FileStorageObserver(runs), url)
    ex_info = {"name": "demo", "base_dir": str(runs.parent), "sources": [], "mainfile": None}
    guard.call(
        "started_event",
        {
            "ex_info": ex_info,
            "command": "main",
            "host_info": {},
            "start_time": T0,
            "config": {"tag": tag},
            "meta_info": {},
            "_id": None,
        },
    )
    if resource is not None:
        guard.call("resource_event", {"filename": str(resource)})
    points = {"name": "acc", "steps": [0, 1], "values": [0.5, 0.75], "timestamps": [T1, T1]}
    guard.call("log_metrics", {"metrics_by_name": {"acc": points}, "info": {}})
    guard.call(
        "heartbeat_event",
        {"info": {}, "captured_out": f"training {tag}\n", "beat_time": T1, "result": None},
    )
    guard.call("completed_event", {"stop_time": T1, "result": tag})
    guard.finish()
    assert guard.spooled is not None
    return guard.spooled.folder  # type: ignore[union-attr]


def assert_delivered(runs: Path, run_id: str, tag: str) -> None:
    record = read_run(runs, run_id)
    assert (record["status"], record["result"], record["config"]) == (
        "COMPLETED",
        tag,
        {"tag": tag},
    )
    assert record["metrics"]["acc"]["values"] == [0.5, 0.75]
    assert (runs / run_id / "cout.txt").read_text() == f"training {tag}\n"


def by_tag(runs: Path) -> dict[str, str]:
    return {
        read_run(runs, p.name)["config"]["tag"]: p.name for p in runs.iterdir() if p.name.isdigit()
    }


# --- mistakes --------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["spool"], ["spool", "runs", "more"]])
def test_sync_takes_a_spool_folder_and_a_store_url(
    here: Path, args: list[str], capsys: pytest.CaptureFixture
) -> None:
    (here / "spool").mkdir()
    assert sync(*args) == 4
    err = capsys.readouterr().err
    assert err == ("ERROR: expkit sync takes two arguments: expkit sync SPOOL_FOLDER STORE_URL\n")


def test_a_missing_spool_folder_is_a_usage_error(here: Path, capsys: pytest.CaptureFixture) -> None:
    assert sync("no_such_spool", "runs") == 4
    assert capsys.readouterr().err == "ERROR: no spool folder no_such_spool\n"
    assert not (here / "runs").exists()


def test_a_store_url_nobody_claims_is_a_usage_error_naming_the_known_schemes(
    here: Path, capsys: pytest.CaptureFixture
) -> None:
    spool_run(here / "runs", "a")
    assert sync(str(here / "spool"), "nosuch://where") == 4
    err = capsys.readouterr().err
    assert err.startswith("ERROR: no store plugin handles 'nosuch://where'")
    for scheme in ("file://", "tinydb://", "mongodb://"):
        assert scheme in err
    assert len(err.splitlines()) == 1
    assert len(list((here / "spool").glob("*/*/meta.json"))) == 1


def test_nothing_spooled_is_fine(here: Path, capsys: pytest.CaptureFixture) -> None:
    (here / "spool").mkdir()
    assert sync("spool", "runs") == 0
    assert capsys.readouterr().out == "nothing spooled in spool\n"


# --- delivering ------------------------------------------------------------------------------


def test_every_spooled_run_is_delivered_and_then_forgotten(
    here: Path, capsys: pytest.CaptureFixture
) -> None:
    first = spool_run(here / "runs", "first")
    second = spool_run(here / "runs", "second")
    (here / "runs").unlink()
    assert sync("spool", "runs") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "2 delivered, 0 still spooled"
    tags = by_tag(here / "runs")
    assert sorted(tags.values()) == ["1", "2"]
    assert sorted(out[:-1]) == sorted(
        [
            f"delivered {first.name} to runs as run {tags['first']}",
            f"delivered {second.name} to runs as run {tags['second']}",
        ]
    )
    for tag, run_id in tags.items():
        assert_delivered(here / "runs", run_id, tag)
    assert not first.exists() and not second.exists()
    assert sync("spool", "runs") == 0  # a second sync finds nothing more to do
    assert capsys.readouterr().out == "nothing spooled in spool\n"
    assert sorted(by_tag(here / "runs")) == ["first", "second"]


@pytest.mark.parametrize("level", ["store", "run"])
def test_the_source_may_be_one_stores_folder_or_one_run(
    here: Path, level: str, capsys: pytest.CaptureFixture
) -> None:
    spooled = spool_run(here / "runs", "only")
    other = spool_run(here / "elsewhere", "other", url="elsewhere")
    (here / "runs").unlink()
    source = spooled.parent if level == "store" else spooled
    assert sync(str(source), "runs") == 0
    assert capsys.readouterr().out.endswith("1 delivered, 0 still spooled\n")
    assert_delivered(here / "runs", "1", "only")
    assert other.exists()  # another store's run is left where it waits


def test_a_spooled_resource_is_recorded_under_the_path_the_run_read(
    here: Path, capsys: pytest.CaptureFixture
) -> None:
    data = here / "data.csv"
    data.write_bytes(b"x,y\n1,2\n")
    spool_run(here / "runs", "read", resource=data)
    data.write_bytes(b"changed since")  # what the run read is the spooled copy
    (here / "runs").unlink()
    assert sync("spool", "runs") == 0
    md5 = hashlib.md5(b"x,y\n1,2\n").hexdigest()
    assert read_run(here / "runs", "1")["resources"] == [[str(data), f"_resources/data_{md5}.csv"]]
    assert (here / "runs" / "_resources" / f"data_{md5}.csv").read_bytes() == b"x,y\n1,2\n"


def test_a_store_still_failing_keeps_the_run_spooled_and_says_so(
    here: Path, capsys: pytest.CaptureFixture
) -> None:
    spooled = spool_run(here / "runs", "late")
    assert sync("spool", "runs") == 1  # the store is still in the way
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"not delivered: {spooled.name}: ")
    assert out[-1] == "0 delivered, 1 still spooled"
    assert spooled.exists()

    (here / "runs").unlink()
    assert sync("spool", "runs") == 0
    assert_delivered(here / "runs", "1", "late")
    assert not spooled.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_password_in_the_store_url_is_never_printed(
    here: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("pymongo")
    spool_run(here / "runs", "secret")
    url = f"mongodb://alice:Pw-never-shown@127.0.0.1:{_closed_port()}/db"
    assert sync("spool", url + "?serverSelectionTimeoutMS=200") == 1
    captured = capsys.readouterr()
    assert "Pw-never-shown" not in captured.out + captured.err
    assert "not delivered" in captured.out


def test_sync_from_the_command_line(here: Path) -> None:
    """The same, as a user types it: ``expkit sync .expkit/spool runs`` in a fresh process."""
    spool_run(here / "runs", "typed")
    (here / "runs").unlink()
    env = child_env(EXPKIT_SPOOL=str(here / "spool"))
    done = run_expkit("sync", "spool", "runs", cwd=here, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("1 delivered, 0 still spooled\n")
    assert_delivered(here / "runs", "1", "typed")


# --- runs no store can take (issue 10, point 6) -------------------------------------------


def test_an_undeliverable_run_is_listed_and_tried_only_when_named(
    here: Path, capsys: pytest.CaptureFixture
) -> None:
    kept = spool_run(here / "runs", "huge")
    (here / "runs").unlink()
    SpooledRun(kept).mark_undeliverable("the store refused its started_event: ValueError: big")
    assert sync("spool", "runs") == 1
    out = capsys.readouterr().out.splitlines()
    shown = kept.relative_to(here)  # as reached from the folder given
    assert out == [
        f"undeliverable: {shown}: the store refused its started_event: ValueError: big; "
        f"to try it again: expkit sync {shown} STORE",
        "0 delivered, 1 still spooled",
    ]
    assert not (here / "runs").exists()  # not tried

    assert sync(str(kept), "tinydb://db") == 0  # named: tried, and another store takes it
    assert capsys.readouterr().out.endswith("1 delivered, 0 still spooled\n")
    assert not kept.exists()
    tables = json.loads((here / "db" / "metadata.json").read_text())
    [doc] = tables["runs"].values()
    assert (doc["status"], doc["result"], doc["config"]) == ("COMPLETED", "huge", {"tag": "huge"})


def test_a_run_a_store_refuses_is_marked_and_said_so_in_one_line(
    here: Path, capsys: pytest.CaptureFixture
) -> None:
    kept = spool_run(here / "runs", "x")
    (here / "runs").unlink()
    events = kept / "events.jsonl"
    first, *rest = events.read_text().splitlines()
    entry = json.loads(first)
    entry["kwargs"]["config"] = {"n": {"$int": hex(10**5000)}}  # an int json cannot write
    events.write_text("\n".join([json.dumps(entry), *rest]) + "\n")
    assert sync(str(kept), "runs") == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2, out
    assert out[0].startswith(f"not delivered: {kept.name}: the store refused its started_event: ")
    assert out[0].endswith("(marked undeliverable)")
    assert "Exceeds the limit" in SpooledRun(kept).failed


def test_sync_never_resumes_a_run_into_another_that_took_its_id(
    here: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = here / "runs"
    guard = GuardedStore(FileStorageObserver(runs), "runs")
    ex_info = {"name": "demo", "base_dir": str(here), "sources": [], "mainfile": None}
    start = {"ex_info": ex_info, "command": "main", "host_info": {}, "config": {"tag": "mine"}}
    guard.call("started_event", {**start, "start_time": T0, "meta_info": {}, "_id": None})
    (runs / "1").rename(here / "gone")  # the store loses run 1 ...
    guard.call("completed_event", {"stop_time": T1, "result": "mine"})
    guard.finish()
    # ... and another run, started later, is given id 1 there.
    other = FileStorageObserver(runs)
    other.started_event(
        **{**start, "config": {"tag": "other"}}, start_time=T1, meta_info={}, _id=None
    )
    assert sync("spool", "runs") == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("to runs as run 2")
    assert read_run(runs, "1")["config"] == {"tag": "other"}
    assert (read_run(runs, "2")["config"], read_run(runs, "2")["result"]) == (
        {"tag": "mine"},
        "mine",
    )
