"""The TinyDB store: documents, files, concurrency, cost, plugin hooks, reader."""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import run_script
from tinydb import Query, TinyDB

from expkit.errors import ExpkitError, UsageError
from expkit.observers import columns_to_sacred
from expkit.pluginmanager import create_plugin_manager
from expkit.store import StoreError, backends, open_reader, open_store
from expkit_plugins.tinydb_store import FORMAT, TinyDbObserver, TinyDbReader, storage
from expkit_plugins.tinydb_store.storage import TinyDbStorage, _hashfs_relpath

T0 = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
T1 = datetime.datetime(2024, 5, 6, 7, 8, 19)
T2 = datetime.datetime(2024, 5, 6, 7, 9, 0, 5)
WORKER = Path(__file__).with_name("tinydb_store_worker.py")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def stored_runs(path: Path) -> list[dict]:
    """The run documents as plain tinydb reads them."""
    with TinyDB(path / "metadata.json") as db:
        return db.table("runs").all()


def stored_metrics(path: Path) -> list[dict]:
    with TinyDB(path / "metadata.json") as db:
        return db.table("metrics").all()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An experiment's base dir with one source file."""
    base = tmp_path / "project"
    base.mkdir()
    (base / "exp.py").write_text("print('hello')\n")
    return base


@pytest.fixture
def ex_info(project: Path) -> dict:
    return {
        "name": "demo",
        "base_dir": str(project),
        "sources": [["exp.py", md5(b"print('hello')\n")]],
        "dependencies": ["numpy==2.0.0"],
        "repositories": [],
        "mainfile": "exp.py",
    }


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs_db"


@pytest.fixture
def obs(db: Path) -> TinyDbObserver:
    return TinyDbObserver(db, write_interval=0)


def start(observer: TinyDbObserver, ex_info: dict, _id: object = None, **changes: object) -> object:
    kwargs = {
        "ex_info": ex_info,
        "command": "main",
        "host_info": {"hostname": "box", "os": ["Linux", "Linux-6"]},
        "start_time": T0,
        "config": {"lr": 0.1, "seed": 42, "layers": (64, 64)},
        "meta_info": {"command": "main", "comment": "c1"},
        "_id": _id,
    }
    kwargs.update(changes)
    return observer.started_event(**kwargs)


def metric(name: str, steps: list[int], values: list[float]) -> dict:
    return {name: {"name": name, "steps": steps, "values": values, "timestamps": [T1] * len(steps)}}


# --- documents ----------------------------------------------------------------------


def test_started_document_has_sacreds_fields(obs: TinyDbObserver, db: Path, ex_info: dict) -> None:
    run_id = start(obs, ex_info)
    [doc] = stored_runs(db)
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
    source_md5 = md5(b"print('hello')\n")
    assert doc == {
        "_id": run_id,
        "experiment": {
            "name": "demo",
            "base_dir": ex_info["base_dir"],
            "sources": [
                [
                    "exp.py",
                    source_md5,
                    f"hashfs/{source_md5[:2]}/{source_md5[2:4]}/{source_md5[4:6]}/{source_md5[6:]}",
                ]
            ],
            "dependencies": ["numpy==2.0.0"],
            "repositories": [],
            "mainfile": "exp.py",
        },
        "format": FORMAT,
        "command": "main",
        "host": {"hostname": "box", "os": ["Linux", "Linux-6"]},
        "start_time": "2024-05-06T07:08:09.123456",
        "config": {"lr": 0.1, "seed": 42, "layers": [64, 64]},
        "meta": {"command": "main", "comment": "c1"},
        "status": "RUNNING",
        "resources": [],
        "artifacts": [],
        "captured_out": "",
        "info": {},
        "heartbeat": None,
    }
    # The caller's ex_info is not rewritten.
    assert ex_info["sources"] == [["exp.py", source_md5]]


def test_source_is_kept_in_hashfs(obs: TinyDbObserver, db: Path, ex_info: dict) -> None:
    start(obs, ex_info)
    [doc] = stored_runs(db)
    _, digest, relpath = doc["experiment"]["sources"][0]
    assert (db / relpath).read_bytes() == b"print('hello')\n"
    # HashFS depth 3, width 2: three two-letter folders, then the rest of the digest.
    assert Path(relpath).parts == ("hashfs", digest[:2], digest[2:4], digest[4:6], digest[6:])


def test_midnight_times_keep_microseconds(obs: TinyDbObserver, db: Path, ex_info: dict) -> None:
    start(obs, ex_info, start_time=datetime.datetime(2024, 1, 1))
    assert stored_runs(db)[0]["start_time"] == "2024-01-01T00:00:00.000000"


def test_missing_source_is_recorded_without_file(
    obs: TinyDbObserver, db: Path, ex_info: dict, caplog: pytest.LogCaptureFixture
) -> None:
    ex_info["sources"].append(["gone.py", "0" * 32])
    with caplog.at_level(logging.WARNING):
        start(obs, ex_info)
    assert stored_runs(db)[0]["experiment"]["sources"][1] == ["gone.py", "0" * 32, None]
    assert "gone.py" in caplog.text


def test_given_id_is_kept(obs: TinyDbObserver, db: Path, ex_info: dict) -> None:
    assert start(obs, ex_info, _id="my-run") == "my-run"
    assert stored_runs(db)[0]["_id"] == "my-run"


def test_metrics_go_to_their_own_table(obs: TinyDbObserver, db: Path, ex_info: dict) -> None:
    run_id = start(obs, ex_info)
    obs.log_metrics({**metric("loss", [0, 1], [1.0, 0.5]), **metric("acc", [0], [0.1])}, info={})
    obs.log_metrics(metric("loss", [2], [0.25]), info={})
    other = start(TinyDbObserver(db), ex_info)
    by_name = {(m["run_id"], m["name"]): m for m in stored_metrics(db)}
    assert set(by_name) == {(run_id, "loss"), (run_id, "acc")}
    assert by_name[run_id, "loss"] == {
        "run_id": run_id,
        "name": "loss",
        "steps": [0, 1, 2],
        "values": [1.0, 0.5, 0.25],
        "timestamps": ["2024-05-06T07:08:19.000000"] * 3,
    }
    assert other not in {m["run_id"] for m in stored_metrics(db)}


def test_metric_columns_are_stored_as_log_metrics_stores_them(db: Path, ex_info: dict) -> None:
    stamps = [1714979299.0, 1714979299.9999996]
    columns = {
        "loss": {"name": "loss", "steps": [0, 1], "values": [1.0, 0.5], "timestamps": stamps}
    }
    by_columns, by_datetimes = TinyDbObserver(db), TinyDbObserver(db)
    first = start(by_columns, ex_info)
    by_columns.log_metric_columns(columns, info={})
    second = start(by_datetimes, ex_info)
    by_datetimes.log_metrics(columns_to_sacred(columns), info={})
    by_run = {m["run_id"]: m for m in stored_metrics(db)}
    assert by_run[first]["timestamps"] == [
        "2024-05-06T07:08:19.000000",
        "2024-05-06T07:08:20.000000",
    ]
    assert {**by_run[first], "run_id": None} == {**by_run[second], "run_id": None}


def test_metrics_of_two_runs_stay_apart(db: Path, ex_info: dict) -> None:
    first, second = TinyDbObserver(db, write_interval=0), TinyDbObserver(db, write_interval=0)
    a, b = start(first, ex_info), start(second, ex_info)
    first.log_metrics(metric("loss", [0], [1.0]), info={})
    second.log_metrics(metric("loss", [0], [2.0]), info={})
    first.log_metrics(metric("loss", [1], [3.0]), info={})
    values = {m["run_id"]: m["values"] for m in stored_metrics(db)}
    assert values == {a: [1.0, 3.0], b: [2.0]}


def test_resource_is_kept_once(
    obs: TinyDbObserver, db: Path, ex_info: dict, tmp_path: Path
) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    start(obs, ex_info)
    obs.resource_event(str(data))
    obs.resource_event(str(data))
    resources = stored_runs(db)[0]["resources"]
    digest = md5(b"a,b\n1,2\n")
    assert resources == [[str(data), digest, _hashfs_relpath(digest)]]
    assert (db / resources[0][2]).read_text() == "a,b\n1,2\n"


def test_artifact_is_kept_with_its_metadata(
    obs: TinyDbObserver, db: Path, ex_info: dict, tmp_path: Path
) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00weights")
    start(obs, ex_info)
    obs.artifact_event("model", str(model), metadata={"epoch": 3}, content_type="application/x")
    obs.artifact_event(None, str(model))  # Sacred: no name means the file's basename
    digest = md5(b"\x00weights")
    assert stored_runs(db)[0]["artifacts"] == [
        [
            "model",
            str(model),
            digest,
            _hashfs_relpath(digest),
            {"metadata": {"epoch": 3}, "content_type": "application/x"},
        ],
        [
            "model.bin",
            str(model),
            digest,
            _hashfs_relpath(digest),
            {"metadata": None, "content_type": None},
        ],
    ]
    assert (db / _hashfs_relpath(digest)).read_bytes() == b"\x00weights"


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped-abs", "a/../../../escaped", ".."])
def test_artifact_names_never_place_files(
    obs: TinyDbObserver, db: Path, ex_info: dict, tmp_path: Path, name: str
) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(b"x")
    start(obs, ex_info)
    before = {p for p in tmp_path.rglob("*") if db not in p.parents}
    obs.artifact_event(name, str(payload))
    after = {p for p in tmp_path.rglob("*") if db not in p.parents}
    assert after == before
    # Other tests work beside this one in the session's folder: look for the names only.
    assert not list(tmp_path.parent.glob("*escaped*")) and not list(Path.cwd().glob("*escaped*"))
    assert not Path("/tmp/escaped-abs").exists()
    assert stored_runs(db)[0]["artifacts"][0][0] == name


def test_missing_artifact_file_is_a_clear_error(obs: TinyDbObserver, ex_info: dict) -> None:
    start(obs, ex_info)
    with pytest.raises(UsageError, match="artifact file /no/such/file does not exist"):
        obs.artifact_event("x", "/no/such/file")
    with pytest.raises(UsageError, match="resource file /no/such/file does not exist"):
        obs.resource_event("/no/such/file")


def test_events_before_a_run_are_refused(obs: TinyDbObserver) -> None:
    with pytest.raises(StoreError, match="before any run started"):
        obs.heartbeat_event(info={}, captured_out="", beat_time=T1, result=None)


def test_plain_tinydb_can_query_the_store(obs: TinyDbObserver, db: Path, ex_info: dict) -> None:
    start(obs, ex_info, config={"lr": 0.5})
    obs.completed_event(stop_time=T2, result=1)
    start(obs, ex_info, config={"lr": 0.1})
    with TinyDB(db / "metadata.json") as plain:
        runs = plain.table("runs")
        assert [r["config"]["lr"] for r in runs.search(Query().status == "COMPLETED")] == [0.5]
        assert len(runs.search(Query().config.lr < 0.3)) == 1


def test_overwrite_replaces_a_stored_run(db: Path, ex_info: dict) -> None:
    first = TinyDbObserver(db, write_interval=0)
    old = start(first, ex_info, config={"v": 1})
    first.log_metrics(metric("loss", [0], [9.0]), info={})
    first.completed_event(stop_time=T2, result="old")
    start(first, ex_info)  # another run, which must stay

    again = TinyDbObserver(db, overwrite=old, write_interval=0)
    assert start(again, ex_info, config={"v": 2}) == old
    again.completed_event(stop_time=T2, result="new")
    docs = stored_runs(db)
    assert len(docs) == 2
    assert (docs[0].doc_id, docs[0]["_id"], docs[0]["config"], docs[0]["result"]) == (
        1,
        old,
        {"v": 2},
        "new",
    )
    assert stored_metrics(db) == []
    with pytest.raises(UsageError, match="already replaced that run once"):
        start(again, ex_info)


def test_overwrite_of_an_unknown_run_is_refused(db: Path) -> None:
    with pytest.raises(UsageError, match="no run with _id 'nope' to overwrite"):
        TinyDbObserver(db, overwrite="nope")


# --- bad input and failing disks -----------------------------------------------------


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        TinyDbObserver(tmp_path / "f")


def test_negative_write_interval(db: Path) -> None:
    with pytest.raises(UsageError, match="write_interval must be >= 0"):
        TinyDbObserver(db, write_interval=-1)


def test_corrupt_file_is_reported_and_left_alone(db: Path, ex_info: dict) -> None:
    db.mkdir()
    (db / "metadata.json").write_text('{"runs": {"1": ')
    with pytest.raises(
        StoreError, match=r"metadata.json: not a TinyDB JSON file \(Expecting value"
    ):
        start(TinyDbObserver(db), ex_info)
    assert (db / "metadata.json").read_text() == '{"runs": {"1": '
    assert issubclass(StoreError, ExpkitError)


def test_json_that_is_no_tinydb_file_is_reported(db: Path, ex_info: dict) -> None:
    db.mkdir()
    (db / "metadata.json").write_text('{"runs": [1, 2]}')
    with pytest.raises(StoreError, match=r"not a TinyDB JSON file \(expected an object of tables"):
        start(TinyDbObserver(db), ex_info)
    assert (db / "metadata.json").read_text() == '{"runs": [1, 2]}'


def test_empty_file_made_by_plain_tinydb_is_fine(db: Path, ex_info: dict) -> None:
    db.mkdir()
    TinyDB(db / "metadata.json").close()  # creates an empty file
    start(TinyDbObserver(db), ex_info)
    assert len(stored_runs(db)) == 1


def _break(db: Path) -> Path:
    """Make the store unwritable for real: its folder becomes a file."""
    aside = db.with_name("aside")
    db.rename(aside)
    db.write_text("not a folder")
    return aside


def test_a_failed_heartbeat_write_raises_and_a_replay_completes_the_run(
    obs: TinyDbObserver, db: Path, ex_info: dict
) -> None:
    # The store keeps nothing back in memory: it raises, the core spools the event, and
    # replays it after resume() once the store is back.
    run_id = start(obs, ex_info)
    aside = _break(db)
    with pytest.raises(StoreError, match=r"cannot write run '[0-9a-f]{32}' to .*metadata.json"):
        obs.heartbeat_event(info={"a": 1}, captured_out="out", beat_time=T1, result=None)
    db.unlink()
    aside.rename(db)
    obs.resume(run_id)
    obs.heartbeat_event(info={"a": 1}, captured_out="out", beat_time=T1, result=None)
    obs.log_metrics(metric("loss", [0], [1.0]), info={})
    obs.completed_event(stop_time=T2, result=7)
    [doc] = stored_runs(db)
    assert (doc["info"], doc["captured_out"], doc["result"]) == ({"a": 1}, "out", 7)
    assert stored_metrics(db)[0]["values"] == [1.0]


def test_a_failed_final_write_raises_one_line_naming_the_store(
    obs: TinyDbObserver, db: Path, ex_info: dict
) -> None:
    start(obs, ex_info, _id="run/1")
    _break(db)
    with pytest.raises(StoreError, match=r"cannot write run 'run/1' to ") as err:
        obs.completed_event(stop_time=T2, result=7)
    assert "\n" not in str(err.value)


# --- cost ---------------------------------------------------------------------------


@pytest.fixture
def replaces(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every whole-file write of a store's JSON (they all end in os.replace)."""
    calls: list[str] = []
    real = os.replace

    def counting(src: str, dst: str | os.PathLike) -> None:
        if str(dst).endswith(".json"):
            calls.append(str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", counting)
    return calls


def test_whole_file_writes_per_run_do_not_grow_with_heartbeats(
    db: Path, ex_info: dict, tmp_path: Path, replaces: list[str]
) -> None:
    art = tmp_path / "art.txt"
    art.write_text("a")
    obs = TinyDbObserver(db, write_interval=3600)
    for beats in (1, 50, 500):
        replaces.clear()
        start(obs, ex_info)
        for i in range(beats):
            obs.log_metrics(metric("loss", [i], [float(i)]), info={})
            obs.heartbeat_event(info={"i": i}, captured_out=f"{i}\n", beat_time=T1, result=i)
            if i % 25 == 0:
                obs.artifact_event(f"a{i}", str(art))
                obs.resource_event(str(art))
        obs.completed_event(stop_time=T2, result="done")
        assert len(replaces) == 2, beats  # the start and the end
    last = stored_runs(db)[-1]
    assert (last["info"], last["captured_out"], last["result"]) == ({"i": 499}, "499\n", "done")
    assert len(last["artifacts"]) == 20
    assert stored_metrics(db)[-1]["steps"] == list(range(500))


def test_write_interval_zero_writes_every_event(
    obs: TinyDbObserver, ex_info: dict, replaces: list[str]
) -> None:
    start(obs, ex_info)
    for i in range(5):
        obs.heartbeat_event(info={}, captured_out="", beat_time=T1, result=i)
    assert len(replaces) == 6


def test_heartbeats_are_written_once_the_interval_passed(
    db: Path, ex_info: dict, replaces: list[str]
) -> None:
    obs = TinyDbObserver(db, write_interval=0.05)
    start(obs, ex_info)
    time.sleep(0.1)
    obs.heartbeat_event(info={}, captured_out="late", beat_time=T1, result=None)
    obs.heartbeat_event(info={}, captured_out="later", beat_time=T1, result=None)
    assert len(replaces) == 2
    assert stored_runs(db)[0]["captured_out"] == "late"
    obs.join()
    assert stored_runs(db)[0]["captured_out"] == "later"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = storage._parse

    def counting(path: Path) -> dict:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(storage, "_parse", counting)
    return calls


def test_the_file_is_parsed_again_only_when_someone_else_wrote(
    db: Path, ex_info: dict, parses: list[Path]
) -> None:
    mine = TinyDbObserver(db, write_interval=0)
    start(mine, ex_info)
    for i in range(20):
        mine.heartbeat_event(info={}, captured_out="", beat_time=T1, result=i)
    assert parses == []  # the file was created by this observer and never changed since
    other = start(TinyDbObserver(db), ex_info)
    mine.heartbeat_event(info={}, captured_out="", beat_time=T1, result="x")
    mine.heartbeat_event(info={}, captured_out="", beat_time=T1, result="y")
    assert len(parses) == 2  # once by the new observer, once by mine after its write
    assert {d["_id"] for d in stored_runs(db)} == {mine.run_entry["_id"], other}


# --- several writers ------------------------------------------------------------------


def test_interleaved_observers_lose_nothing(db: Path, ex_info: dict) -> None:
    observers = [TinyDbObserver(db, write_interval=0) for _ in range(4)]
    ids = [start(o, ex_info, _id=f"r{i}") for i, o in enumerate(observers)]
    for step in range(3):
        for o in observers:
            o.log_metrics(metric("loss", [step], [float(step)]), info={})
            o.heartbeat_event(info={"step": step}, captured_out="", beat_time=T1, result=None)
    for i, o in enumerate(observers):
        o.completed_event(stop_time=T2, result=i)
    docs = {d["_id"]: d for d in stored_runs(db)}
    assert sorted(docs) == ids
    assert all(docs[f"r{i}"]["result"] == i for i in range(4))
    assert {m["run_id"]: m["steps"] for m in stored_metrics(db)} == {i: [0, 1, 2] for i in ids}


@pytest.mark.slow
def test_ten_processes_record_into_one_store(db: Path, tmp_path: Path) -> None:
    workers, runs = 10, 6
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(db), str(w), str(runs), str(go)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    time.sleep(0.5)  # let the interpreters start so that they write at the same time
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err

    docs = stored_runs(db)
    expected = {f"w{w}-r{i}": (w, i) for w in range(workers) for i in range(runs)}
    assert sorted(d["_id"] for d in docs) == sorted(expected)
    assert len({d.doc_id for d in docs}) == len(docs)
    for doc in docs:
        w, i = expected[doc["_id"]]
        assert doc["status"] == "COMPLETED"
        assert doc["config"] == {"worker": w, "i": i}
        assert doc["result"] == i
        assert doc["info"] == {"step": 2}
        assert doc["captured_out"] == "".join(f"{doc['_id']} step {s}\n" for s in range(3))
        [artifact] = doc["artifacts"]
        assert (db / artifact[3]).read_text() == f"from worker {w}\n"
    metrics = stored_metrics(db)
    assert len(metrics) == len(expected)
    for m in metrics:
        _, i = expected[m["run_id"]]
        assert (m["name"], m["steps"], m["values"]) == ("loss", [0, 1, 2], [i, i + 1, i + 2])
    assert not list(db.glob(".*.tmp"))


# --- reader ---------------------------------------------------------------------------


@pytest.fixture
def filled(db: Path, ex_info: dict, tmp_path: Path) -> Path:
    art = tmp_path / "art.txt"
    art.write_text("artifact")
    for name, lr in (("alpha", 0.1), ("beta", 0.2), ("alphabet", 0.3)):
        obs = TinyDbObserver(db, write_interval=0)
        start(obs, {**ex_info, "name": name}, _id=name, config={"lr": lr})
        obs.log_metrics(metric("loss", [0, 1], [lr, lr / 2]), info={})
        obs.artifact_event("art", str(art))
        obs.completed_event(stop_time=T2, result=lr)
    return db


def test_reader_fetches_by_name_query_and_index(filled: Path) -> None:
    reader = TinyDbReader(filled)
    assert [r["_id"] for r in reader.fetch_metadata()] == ["alpha", "beta", "alphabet"]
    assert [r["_id"] for r in reader.fetch_metadata(exp_name="^alpha")] == ["alpha", "alphabet"]
    q = Query().config.lr > 0.15
    assert [r["_id"] for r in reader.fetch_metadata(query=q)] == ["beta", "alphabet"]
    assert [r["_id"] for r in reader.fetch_metadata(exp_name="alpha", query=q)] == ["alphabet"]
    assert [r["_id"] for r in reader.fetch_metadata(indices=[2, 0])] == ["alphabet", "alpha"]
    assert [r["_id"] for r in reader.fetch_metadata(indices=-1)] == ["alphabet"]


def test_reader_sees_runs_written_after_it_was_made(filled: Path, ex_info: dict) -> None:
    reader = TinyDbReader(filled)
    assert len(reader.fetch_metadata()) == 3
    start(TinyDbObserver(filled), ex_info)
    assert len(reader.fetch_metadata()) == 4


def test_reader_metrics_and_files(filled: Path) -> None:
    reader = TinyDbReader(filled)
    loss = reader.fetch_metrics("beta")["loss"]
    assert (loss["steps"], loss["values"]) == ([0, 1], [0.2, 0.1])
    [files] = reader.fetch_files(exp_name="^beta$")
    assert (files["exp_name"], files["exp_id"]) == ("beta", "beta")
    assert files["date"] == "2024-05-06T07:08:09.123456"
    assert files["artifacts"]["art"].read_text() == "artifact"
    assert files["sources"]["exp.py"].read_text() == "print('hello')\n"


def test_reader_errors(filled: Path, tmp_path: Path) -> None:
    reader = TinyDbReader(filled)
    # expkit's one-line errors, of the types Sacred's reader raised (`except ValueError:` ...).
    with pytest.raises(UsageError, match="index 5 is out of range: 3 runs match") as bad:
        reader.fetch_metadata(indices=[5])
    assert isinstance(bad.value, ValueError)
    with pytest.raises(ValueError, match=r"exp_name '\(' is not a valid regex") as bad:
        reader.fetch_metadata(exp_name="(")
    assert isinstance(bad.value, UsageError)
    with pytest.raises(UsageError, match="no TinyDB store at") as missing:
        TinyDbReader(tmp_path / "nothing")
    assert isinstance(missing.value, IOError)


# --- plugin hooks -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pm():
    return create_plugin_manager()


def test_store_for_tinydb_url(pm, tmp_path: Path) -> None:
    store = open_store(pm, f"tinydb://{tmp_path}/db")
    assert isinstance(store.storage, TinyDbStorage)
    assert store.storage.db_path == tmp_path / "db" / "metadata.json"


def test_store_for_url_naming_the_json_file(pm, tmp_path: Path, ex_info: dict) -> None:
    store = open_store(pm, f"tinydb://{tmp_path}/runs.json")
    assert store.storage.db_path == tmp_path / "runs.json"
    start(store, ex_info)
    with TinyDB(tmp_path / "runs.json") as plain:
        assert len(plain.table("runs")) == 1


def test_relative_url_is_relative_to_the_working_dir(
    pm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(pm, "tinydb://runs_db")
    assert store.storage.db_path.resolve() == tmp_path / "runs_db" / "metadata.json"


def test_other_urls_are_not_claimed(pm, tmp_path: Path) -> None:
    [tinydb] = [b for b in backends(pm) if b.name == "tinydb"]
    assert tinydb.claims("tinydb://x") and tinydb.claims("TinyDB://x")
    assert not tinydb.claims("mongodb://localhost/db")
    assert not tinydb.claims(str(tmp_path))


def test_url_without_path(pm) -> None:
    for open_ in (open_store, open_reader):
        with pytest.raises(UsageError, match="store URL 'tinydb://' has no path"):
            open_(pm, "tinydb://")


def test_scheme_and_observer_classes(pm) -> None:
    assert "tinydb" in {s for b in backends(pm) for s in b.schemes}
    assert pm.hook.expkit_observer_class(name="TinyDbObserver") is TinyDbObserver
    assert pm.hook.expkit_observer_class(name="TinyDbReader") is TinyDbReader
    from expkit_plugins import tinydb_store

    assert tinydb_store.expkit_observer_class(name="MongoObserver") is None


def test_sacred_style_import() -> None:
    from expkit.observers import TinyDbObserver as Imported
    from expkit.observers import TinyDbReader as ImportedReader

    assert Imported is TinyDbObserver
    assert ImportedReader is TinyDbReader


# --- end to end ---------------------------------------------------------------------------


EXPERIMENT_SCRIPT = """
import time
from expkit import Experiment

ex = Experiment("scripted")

@ex.config
def cfg():
    n = 3
    fail = False

@ex.main
def main(n, fail, _run):
    for i in range(n):
        print("step", i)
        _run.log_scalar("loss", 1.0 / (i + 1))
        time.sleep(0.02)
    _run.info["steps"] = n
    _run.add_artifact(__file__, name="code/copy.py")
    if fail:
        raise ValueError("boom")
    return n * 10

if __name__ == "__main__":
    ex.run_commandline()
"""


@pytest.fixture
def experiment_script(tmp_path: Path) -> Path:
    script = tmp_path / "exp_scripted.py"
    script.write_text(EXPERIMENT_SCRIPT)
    return script


def test_end_to_end_with_the_tiny_db_flag(experiment_script: Path, tmp_path: Path) -> None:
    db = tmp_path / "cli_db"
    done = run_script(
        experiment_script, "with", "n=4", "-t", str(db), "-b", "0.01", cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    [doc] = stored_runs(db)
    assert (doc["status"], doc["result"], doc["config"]["n"]) == ("COMPLETED", 40, 4)
    assert doc["experiment"]["name"] == "scripted"
    assert doc["experiment"]["sources"][0][0] == "exp_scripted.py"
    assert (db / doc["experiment"]["sources"][0][2]).read_text() == EXPERIMENT_SCRIPT
    assert "step 3" in doc["captured_out"]
    assert doc["info"]["steps"] == 4
    assert doc["heartbeat"] is not None
    [artifact] = doc["artifacts"]
    assert artifact[0] == "code/copy.py"
    assert (db / artifact[3]).read_text() == EXPERIMENT_SCRIPT
    [loss] = stored_metrics(db)
    assert (loss["run_id"], loss["steps"]) == (doc["_id"], [0, 1, 2, 3])
    assert loss["values"] == [1.0, 0.5, 1 / 3, 0.25]


def test_end_to_end_with_a_write_interval_writes_twice_per_run(
    db: Path, replaces: list[str]
) -> None:
    from expkit import Experiment
    from expkit.observers import RunObserver
    from expkit.observers import TinyDbObserver as Observer

    class BeatCounter(RunObserver):
        beats = 0

        def heartbeat_event(self, **kwargs: object) -> None:
            BeatCounter.beats += 1

    ex = Experiment("from_python", interactive=True)
    ex.observers += [Observer(db, write_interval=3600), BeatCounter()]

    @ex.main
    def main(_run):
        for i in range(20):
            _run.log_scalar("x", i)
            time.sleep(0.01)  # about 20 heartbeats at -b 0.005
        return "ok"

    ids = [ex.run(options={"--beat-interval": 0.005})._id for _ in range(3)]
    assert BeatCounter.beats >= 15  # many heartbeats...
    assert len(replaces) == 6  # ...yet two writes per run
    docs = stored_runs(db)
    assert [d["_id"] for d in docs] == ids
    assert all(d["status"] == "COMPLETED" and d["result"] == "ok" for d in docs)
    assert [m["steps"] for m in stored_metrics(db)] == [list(range(20))] * 3
