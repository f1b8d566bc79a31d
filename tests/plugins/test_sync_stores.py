"""``expkit sync SRC DST`` between real stores: file, TinyDB and MongoDB (in memory, or the
server of ``EXPKIT_TEST_MONGO_URL``)."""

from __future__ import annotations

import datetime
import hashlib
import re
from pathlib import Path

import pytest
from test_runs_command import T0, store_run

import expkit
from expkit.observers import RunObserver
from expkit.pluginmanager import get_plugin_manager
from expkit.records import RunRecord
from expkit.store import open_reader
from expkit_plugins.file_store import FileStorageObserver
from expkit_plugins.sync import replay_record

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
    assert (origin["store"], origin["id"]) == (src.store, src.id)
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
