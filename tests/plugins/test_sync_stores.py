"""``expkit sync SRC DST`` between real stores: file, TinyDB and MongoDB (in memory, or the
server of ``EXPKIT_TEST_MONGO_URL``)."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_expkit
from test_runs_command import HOUR, T0, store_run

import expkit
from expkit.observers import RunObserver
from expkit.pluginmanager import get_plugin_manager
from expkit.records import RunRecord
from expkit.store import open_reader, store_identity
from expkit.utils import redact_url
from expkit_plugins.file_store import FileStorageObserver
from expkit_plugins.sync import replay_record
from expkit_plugins.tinydb_store import TinyDbObserver

DATA = b"x,y\n1,2\n"


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file store with two runs, one of them with an artifact and a resource."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    store_run(runs, tmp_path / "a", {"C": 1}, 0.5)
    store_run(runs, tmp_path / "b", {"C": 2}, 0.75, source="x = 2\n")
    (tmp_path / "model.txt").write_text("weights")
    obs = FileStorageObserver(runs)
    obs.resume("2")
    obs.artifact_event("model.txt", str(tmp_path / "model.txt"))
    (tmp_path / "data.csv").write_bytes(DATA)
    obs.resource_event(str(tmp_path / "data.csv"))
    return runs


def read_all(url: str) -> dict[str, RunRecord]:
    reader = open_reader(get_plugin_manager(), url)
    try:
        return {str(r.id): reader.get_run(r.id) for r in reader.list_runs()}
    finally:
        if hasattr(reader, "close"):
            reader.close()


def source_bytes(url: str, run_id: object, name: str) -> bytes:
    return open_reader(get_plugin_manager(), url).read_source(run_id, name)


def assert_copied(src: RunRecord, dst: RunRecord, same_base: bool = True) -> None:
    assert (dst.config, dst.result, dst.status) == (src.config, src.result, src.status)
    assert (dst.start_time, dst.stop_time) == (src.start_time, src.stop_time)
    assert dst.captured_out == src.captured_out
    assert dst.metrics["acc"]["values"] == [0.5, 0.75]
    origin = dst.meta["synced_from"]
    assert (origin["store"], origin["id"]) == (store_identity(src.store), src.id)
    if same_base:
        assert dst.experiment_info["base_dir"] == src.experiment_info["base_dir"]


def by_origin(url: str) -> dict[str, RunRecord]:
    """The runs of ``url`` by the id of the run each is a copy of."""
    return {str(r.meta["synced_from"]["id"]): r for r in read_all(url).values()}


def test_file_to_tinydb_twice_copies_once(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dst = f"tinydb://{tmp_path / 'db'}"
    assert expkit.main(["sync", str(source), dst]) == 0
    out = capsys.readouterr().out.splitlines()
    copied = by_origin(dst)
    # TinyDB names its runs by uuids: the copies get uuids, not the file store's numbers.
    assert out == [
        f"1 -> {copied['1'].id}",
        f"2 -> {copied['2'].id}",
        f"2 copied, 0 already in {dst}",
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", str(r.id)) for r in copied.values())
    assert expkit.main(["sync", str(source), dst]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"0 copied, 2 already in {dst}"
    src = read_all(str(source))
    assert sorted(copied) == ["1", "2"] and len(read_all(dst)) == 2
    for run_id in src:
        assert_copied(src[run_id], copied[run_id])
    reader = open_reader(get_plugin_manager(), dst)
    assert reader.read_artifact(copied["2"].id, "model.txt") == b"weights"
    assert reader.read_source(copied["2"].id, "exp.py") == b"x = 2\n"


def test_tinydb_to_file_and_back_makes_no_duplicates(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    db = f"tinydb://{tmp_path / 'db'}"
    assert expkit.main(["sync", str(source), db]) == 0
    (tmp_path / "a" / "exp.py").write_text("x = 'changed since'\n")
    assert expkit.main(["sync", db, str(tmp_path / "copy")]) == 0
    copied = read_all(str(tmp_path / "copy"))
    # The file store numbers its runs: uuids from TinyDB become numbers.
    assert sorted(copied) == ["1", "2"]
    first = copied["1"]
    assert_copied(read_all(db)[first.meta["synced_from"]["id"]], first, same_base=False)
    # The source changed on disk: the stored one is copied, from a folder of its own.
    assert source_bytes(str(tmp_path / "copy"), "1", "exp.py") == b"x = 1\n"
    capsys.readouterr()
    assert expkit.main(["sync", str(tmp_path / "copy"), str(source)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"0 copied, 2 already in {source}"
    assert sorted(read_all(str(source))) == ["1", "2"]


def test_tinydb_runs_synced_to_mongo_get_numbers_and_mongo_numbers_on(
    source: Path, tmp_path: Path, mongo_url: str, capsys: pytest.CaptureFixture
) -> None:
    db = f"tinydb://{tmp_path / 'db'}"
    assert expkit.main(["sync", str(source), db]) == 0
    assert expkit.main(["sync", db, mongo_url]) == 0
    assert sorted(read_all(mongo_url)) == ["1", "2"]  # Omniboard needs numeric ids
    store_run(tmp_path / "more", tmp_path / "d", {"C": 3}, 0.2)
    assert expkit.main(["sync", str(tmp_path / "more"), mongo_url]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == "1 -> 3"


def test_ids_taken_in_the_destination_get_new_ones(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = tmp_path / "other"
    store_run(other, tmp_path / "c", {"C": 9}, 0.1, start=T0)
    assert expkit.main(["sync", str(source), str(other)]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["1 -> 2", "2 -> 3"]
    assert read_all(str(other))["3"].config == {"C": 2}


def test_a_new_run_given_a_deleted_runs_id_is_copied_not_taken_for_its_copy(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # The file store numbers runs as Sacred's does, one past the highest: after `runs rm 2`
    # the next run is 2 again. It is another run, and it must reach the destination.
    team = tmp_path / "team"
    assert expkit.main(["sync", str(source), str(team)]) == 0
    assert expkit.main(["runs", "rm", "2", "--store", str(source), "--yes"]) == 0
    later = T0 + datetime.timedelta(hours=1)
    assert str(store_run(source, tmp_path / "c", {"C": 3}, 0.9, start=later)) == "2"
    capsys.readouterr()
    assert expkit.main(["sync", str(source), str(team)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "1 -> 1 (already there)",
        "2 -> 3",
        f"1 copied, 1 already in {team}",
    ]
    copies = read_all(str(team))
    assert (copies["2"].config, copies["3"].config) == ({"C": 2}, {"C": 3})
    assert expkit.main(["sync", str(source), str(team)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"0 copied, 2 already in {team}"


def test_file_to_mongo_twice_copies_once(
    source: Path, mongo_url: str, capsys: pytest.CaptureFixture
) -> None:
    assert expkit.main(["sync", str(source), mongo_url]) == 0
    assert expkit.main(["sync", str(source), mongo_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("0 copied, 2 already in mongodb://")
    src, copied = read_all(str(source)), read_all(mongo_url)
    assert sorted(copied) == ["1", "2"]
    for run_id in src:
        assert_copied(src[run_id], copied[run_id])


def test_mongodbs_millisecond_times_still_find_the_copy_both_ways(
    tmp_path: Path, mongo_url: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    store_run(runs, tmp_path / "a", {"C": 1}, 0.5, start=T0.replace(microsecond=123456))
    assert expkit.main(["sync", str(runs), mongo_url]) == 0
    assert read_all(mongo_url)["1"].start_time.microsecond == 123000  # BSON keeps milliseconds
    assert expkit.main(["sync", str(runs), mongo_url]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("0 copied, 1 already in mongodb")
    assert expkit.main(["sync", mongo_url, str(runs)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"0 copied, 1 already in {runs}"


@pytest.mark.parametrize("direction", ["file->tinydb", "tinydb->file", "file->mongo"])
def test_resources_keep_the_path_the_run_read(
    direction: str, source: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = f"tinydb://{tmp_path / 'db'}"
    if direction == "file->tinydb":
        dst = db
    elif direction == "tinydb->file":
        assert expkit.main(["sync", str(source), db]) == 0
        (tmp_path / "data.csv").write_bytes(b"changed since")  # the stored copy is what counts
        source, dst = db, str(tmp_path / "copy")
    else:
        dst = request.getfixturevalue("mongo_url")
    original = str(tmp_path / "data.csv")
    for _ in range(2):
        assert expkit.main(["sync", str(source), dst]) == 0
        assert len(read_all(dst)) == 2
        copied = {str(r.config["C"]): r for r in read_all(dst).values()}
        assert copied["2"].resources == ((original, hashlib.md5(DATA).hexdigest()),)
        assert copied["1"].resources == ()
    reader = open_reader(get_plugin_manager(), dst)
    try:
        assert reader.read_resource(copied["2"].id, original) == DATA
    finally:
        if hasattr(reader, "close"):
            reader.close()


class SacredStyleObserver(RunObserver):
    """An observer written for Sacred: it knows ``resource_event`` only."""

    def __init__(self) -> None:
        self.resources: list[tuple[str, bytes]] = []

    def resource_event(self, filename: str) -> None:
        self.resources.append((Path(filename).name, Path(filename).read_bytes()))


def test_an_observer_written_for_sacred_still_gets_the_resource_file(source: Path) -> None:
    reader = open_reader(get_plugin_manager(), str(source))
    observer = SacredStyleObserver()
    replay_record(reader, reader.get_run("2"), observer)
    assert observer.resources == [("data.csv", DATA)]


# --- a run is copied whole or not at all ------------------------------------------------------


def test_a_run_that_cannot_be_read_whole_is_not_copied_and_a_later_sync_copies_it(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store_run(source, tmp_path / "c", {"C": 3}, 0.9, start=T0 + datetime.timedelta(hours=1))
    (source / "2" / "model.txt").rename(tmp_path / "aside")  # run 2's artifact is lost
    dst = str(tmp_path / "copy")
    for _ in range(2):  # each sync says so again, and never takes a part for the run
        assert expkit.main(["sync", str(source), dst]) == 1
        out = capsys.readouterr().out.splitlines()
        assert out[0] in ("1 -> 1", "1 -> 1 (already there)")
        assert out[1].startswith("not copied: run 2: artifact 'model.txt' ")
        assert out[2] in ("3 -> 3", "3 -> 3 (already there)")  # the runs after it are copied
        assert out[3].endswith(f"already in {dst}, 1 not copied") and len(out) == 4
        assert sorted(read_all(dst)) == ["1", "3"]

    (tmp_path / "aside").rename(source / "2" / "model.txt")  # the cause is gone
    assert expkit.main(["sync", str(source), dst]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "1 -> 1 (already there)",
        "2 -> 2",
        "3 -> 3 (already there)",
        f"1 copied, 2 already in {dst}",
    ]
    copied = read_all(dst)
    assert sorted(copied) == ["1", "2", "3"]
    assert_copied(read_all(str(source))["2"], copied["2"])
    assert open_reader(get_plugin_manager(), dst).read_artifact("2", "model.txt") == b"weights"


def test_a_half_copy_an_earlier_sync_left_is_replaced_by_the_whole_run(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # What a sync of before left when run 2's artifact could not be read: its start, and
    # the mark of a copy, which made every later sync take it for the whole run.
    dst = tmp_path / "copy"
    ex_info = {"name": "demo", "base_dir": str(tmp_path / "b"), "sources": [], "mainfile": None}
    origin = {"synced_from": {"store": "runs", "id": "2"}}
    FileStorageObserver(dst).started_event(ex_info, "main", {}, T0, {"C": 2}, origin, 2)
    assert expkit.main(["sync", str(source), str(dst)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "1 -> 1",
        "2 -> 2 (updated: it was RUNNING when copied, it is COMPLETED now)",
        f"1 copied, 1 updated, 0 already in {dst}",
    ]
    copied = read_all(str(dst))
    assert sorted(copied) == ["1", "2"]
    assert_copied(read_all(str(source))["2"], copied["2"])


def tinydb_run(db: Path, number: int, artifact: Path | None = None) -> None:
    """Record a completed run into the TinyDB store at ``db``, with ``artifact`` if given."""
    observer = TinyDbObserver(db)
    ex_info = {"name": "demo", "base_dir": str(db.parent), "sources": [], "mainfile": None}
    start = T0 + datetime.timedelta(hours=number)
    observer.started_event(ex_info, "main", {}, start, {"n": number}, {}, None)
    if artifact is not None:
        observer.artifact_event(artifact.name, str(artifact))
    observer.heartbeat_event({}, f"run {number}\n", start, None)
    observer.completed_event(start + datetime.timedelta(minutes=1), number)


def test_a_run_the_destination_refuses_part_way_leaves_nothing_there(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # TinyDB keeps an artifact named run.json; a file store, whose run.json is the run's
    # document, refuses it: after the run's start was written there.
    (tmp_path / "run.json").write_text("{}")
    tinydb_run(tmp_path / "db", 0, artifact=tmp_path / "run.json")
    tinydb_run(tmp_path / "db", 1)
    src, dst = f"tinydb://{tmp_path / 'db'}", str(tmp_path / "copy")
    ids = {r.config["n"]: r.id for r in read_all(src).values()}
    refusal = f"not copied: run {ids[0]}: {dst} refused it: artifact name 'run.json' is reserved"
    for closing in (f"1 copied, 0 already in {dst}", f"0 copied, 1 already in {dst}"):
        assert expkit.main(["sync", src, dst]) == 1
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 3 and sum(line.startswith(refusal) for line in out) == 1
        assert out[-1] == f"{closing}, 1 not copied"
        # Only the run copied whole is there: the other's start was taken back.
        assert [(r.config, r.status) for r in read_all(dst).values()] == [({"n": 1}, "COMPLETED")]


def test_a_resource_sacreds_mongo_observer_never_uploaded_is_named_and_its_run_copied(
    source: Path, tmp_path: Path, mongo_url: str, mongo_db: Any, capsys: pytest.CaptureFixture
) -> None:
    import gridfs

    assert expkit.main(["sync", str(source), mongo_url]) == 0
    # As Sacred's MongoObserver leaves a run: it lists the resource's path and md5, and
    # GridFS holds no copy of it (Sacred never uploads resources).
    data = str(tmp_path / "data.csv")
    fs = gridfs.GridFS(mongo_db)
    for stored in fs.find({"filename": data}):
        fs.delete(stored._id)
    dst = str(tmp_path / "copy")
    capsys.readouterr()
    assert expkit.main(["sync", mongo_url, dst]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "1 -> 1",
        f"run 2: its resource {data} was recorded, its content never stored (Sacred's "
        "MongoObserver does not upload resources): copied without it, listed in the copy's "
        "meta.synced_from.not_kept",
        "2 -> 2",
        f"2 copied, 0 already in {dst}",
    ]
    copy = read_all(dst)["2"]
    assert (copy.status, copy.result, copy.resources) == ("COMPLETED", 0.75, ())
    md5 = hashlib.md5(DATA).hexdigest()
    assert copy.meta["synced_from"]["not_kept"] == [["resource", data, md5]]
    assert open_reader(get_plugin_manager(), dst).read_artifact("2", "model.txt") == b"weights"
    assert expkit.main(["sync", mongo_url, dst]) == 0  # the copy is taken for done
    assert capsys.readouterr().out.splitlines()[-1] == f"0 copied, 2 already in {dst}"


# --- one store, however it is named -----------------------------------------------------------


def test_a_store_is_one_store_however_its_path_is_typed(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "link").symlink_to(source)
    assert expkit.main(["sync", "runs", "copy"]) == 0
    for spelling in ("./runs", str(source), f"{tmp_path}/./runs/", "link", f"file://{source}"):
        capsys.readouterr()
        assert expkit.main(["sync", spelling, "copy"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "0 copied, 2 already in copy"
    # Synced back under another name of the same folder: nothing twice either.
    assert expkit.main(["sync", "copy", "./runs"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 copied, 2 already in ./runs"
    assert sorted(read_all("runs")) == sorted(read_all("copy")) == ["1", "2"]


@pytest.mark.parametrize("spelling", ["./runs", "{runs}", "file://{runs}", "link", "runs/"])
def test_a_store_synced_into_itself_is_a_usage_error(
    source: Path, tmp_path: Path, spelling: str, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "link").symlink_to(source)
    dst = spelling.format(runs=source)
    assert expkit.main(["sync", "runs", dst]) == 4
    assert capsys.readouterr().err == (
        f"ERROR: runs and {dst} are the same store ({source}): "
        "give another store to copy its runs into\n"
    )
    assert sorted(read_all(str(source))) == ["1", "2"]


def test_a_store_synced_into_itself_from_the_command_line(source: Path, tmp_path: Path) -> None:
    done = run_expkit("sync", "runs", str(source), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (4, "")
    assert done.stderr == (
        f"ERROR: runs and {source} are the same store ({source}): "
        "give another store to copy its runs into\n"
    )


def test_a_mongodb_store_is_one_store_whatever_its_options_and_user(
    source: Path, mongo_url: str, capsys: pytest.CaptureFixture
) -> None:
    assert expkit.main(["sync", str(source), mongo_url]) == 0
    with_options = mongo_url + ("&" if "?" in mongo_url else "?") + "connectTimeoutMS=4000"
    assert expkit.main(["sync", str(source), with_options]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("0 copied, 2 already in mongodb")
    assert expkit.main(["sync", with_options, mongo_url]) == 4
    assert "are the same store (mongodb://" in capsys.readouterr().err
    assert sorted(read_all(mongo_url)) == ["1", "2"]


# --- a copy follows its run -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "tinydb", "mongo"])
def test_a_run_copied_while_running_is_brought_up_to_date_once_it_ended(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    store_run(runs, tmp_path / "a", {"C": 1}, None, status="RUNNING")
    dst = {"folder": "copy", "tinydb": "tinydb://copy"}.get(kind)
    dst = dst or request.getfixturevalue("mongo_url")
    assert expkit.main(["sync", "runs", dst]) == 0
    assert expkit.main(["sync", "runs", "stale"]) == 0
    [copy_id] = read_all(dst)
    assert read_all(dst)[copy_id].status == "RUNNING"

    observer = FileStorageObserver(runs)  # the run goes on, and ends
    observer.resume("1")
    end = T0 + datetime.timedelta(minutes=5)
    observer.heartbeat_event({}, "training\nmore training\n", end, None)
    observer.completed_event(end, 0.5)
    capsys.readouterr()
    assert expkit.main(["sync", "runs", dst]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"1 -> {copy_id} (updated: it was RUNNING when copied, it is COMPLETED now)",
        f"0 copied, 1 updated, 0 already in {redact_url(dst)}",
    ]
    copied = read_all(dst)
    assert sorted(copied) == [copy_id]  # the same copy, not a second one
    assert_copied(read_all("runs")["1"], copied[copy_id])
    assert expkit.main(["sync", "runs", dst]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"0 copied, 1 already in {redact_url(dst)}"
    # A copy left behind never takes the place of its run.
    assert expkit.main(["sync", "stale", "runs"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 copied, 1 already in runs"
    assert (read_all("runs")["1"].status, read_all("runs")["1"].result) == ("COMPLETED", 0.5)


# --- a copy holds what its run holds ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "mongo"])
def test_runs_synced_into_an_empty_store_keep_their_ids(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    ex_info = {"name": "demo", "base_dir": str(tmp_path), "sources": [], "mainfile": None}
    for number in (4, 9):  # the ids runs have after others were deleted
        observer = FileStorageObserver(runs)
        start = T0 + number * HOUR
        observer.started_event(ex_info, "main", {}, start, {"C": number}, {}, number)
        observer.completed_event(start + HOUR, number)
    dst = str(tmp_path / "copy") if kind == "folder" else request.getfixturevalue("mongo_url")
    assert expkit.main(["sync", str(runs), dst]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["4 -> 4", "9 -> 9"]
    assert {k: r.config["C"] for k, r in read_all(dst).items()} == {"4": 4, "9": 9}


def test_a_copy_gets_no_heartbeat_or_result_its_run_had_not(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    ex_info = {"name": "demo", "base_dir": str(tmp_path), "sources": [], "mainfile": None}
    FileStorageObserver(runs).started_event(ex_info, "main", {}, T0, {"C": 1}, {}, None)
    assert expkit.main(["sync", str(runs), str(tmp_path / "copy")]) == 0
    run = json.loads((runs / "1" / "run.json").read_text())
    copy = json.loads((tmp_path / "copy" / "1" / "run.json").read_text())
    assert (copy["status"], copy["heartbeat"], "result" in copy) == ("RUNNING", None, False)
    assert {k: v for k, v in copy.items() if k != "meta"} == {
        k: v for k, v in run.items() if k != "meta"
    }
