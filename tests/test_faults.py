"""Stores under faults, with real processes: a store that goes away mid-run, or is away from
the start, loses nothing; output printed right before a failure or SIGTERM is kept; names,
passwords and config values cannot be turned against the store."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cli_helpers import (
    EXPKIT,
    block_folder,
    child_env,
    run_expkit,
    run_script,
    start_process,
    write_project,
)

from expkit import Experiment
from expkit.errors import UsageError
from expkit.utils import redact_url
from expkit_plugins.file_store import FileStorageObserver, read_run
from expkit_plugins.mongo_store import load_captured_out

if TYPE_CHECKING:
    from mongo_server import MemoryMongo

TIMEOUT = 60


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, spool: Path) -> dict[str, str]:
    """The environment of the processes: this one's spool, and temporary files inside
    ``tmp_path``."""
    (tmp_path / "tmp").mkdir()
    return child_env(EXPKIT_SPOOL=str(spool), TMPDIR=str(tmp_path / "tmp"))


def start(script: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """``python script args`` in the script's folder, with its output piped."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        cwd=script.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``path`` exists; fail with the process's output if it ended first."""
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the experiment ended early ({proc.returncode}):\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def spooled(spool: Path) -> list[Path]:
    """The spooled runs still waiting in ``spool``."""
    return sorted(p.parent for p in spool.glob("*/*/meta.json"))


def all_text(folder: Path) -> str:
    """Every file below ``folder`` as text, to grep what a store wrote."""
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file()
    )


# An experiment that tells the test where it is through marker files in its folder:
# "phase1" once its first part is stored, "phase2" after its middle part; it goes on
# once the test created "gone" and then "resume".
OUTAGE = """
import time
from pathlib import Path
from expkit import Experiment

ex = Experiment("outage")


def wait_for(name):
    deadline = time.monotonic() + 60
    while not Path(name).exists():
        assert time.monotonic() < deadline, name
        time.sleep(0.01)


@ex.config
def cfg():
    linger = 0.0  # seconds to go on after the last part


@ex.main
def main(linger, _run):
    for i in range(3):
        print("before", i)
        _run.log_scalar("loss", i)
    time.sleep(0.3)
    Path("phase1").touch()
    wait_for("gone")
    for i in range(3, 6):
        print("during", i)
        _run.log_scalar("loss", i)
    time.sleep(0.3)
    Path("phase2").touch()
    wait_for("resume")
    for i in range(6, 9):
        print("after", i)
        _run.log_scalar("loss", i)
    time.sleep(linger)
    return 42


if __name__ == "__main__":
    ex.run_commandline()
"""

LINES = [f"{part} {i}" for part, i in [("before", 0), ("before", 1), ("before", 2)]]
LINES += [f"during {i}" for i in range(3, 6)] + [f"after {i}" for i in range(6, 9)]


def assert_complete_output(text: str) -> None:
    """Every line the outage experiment printed is there once, in order."""
    found = [line for line in text.splitlines() if line in LINES]
    assert found == LINES, text


@pytest.fixture
def outage(tmp_path: Path) -> Path:
    script = tmp_path / "exp_outage.py"
    script.write_text(OUTAGE)
    return script


def assert_file_run_complete(runs: Path, run_id: str = "1") -> None:
    record = read_run(runs, run_id)
    assert (record["status"], record["result"]) == ("COMPLETED", 42)
    assert record["metrics"]["loss"]["steps"] == list(range(9))
    assert record["metrics"]["loss"]["values"] == list(range(9))
    # Sacred-era readers read metrics.json, not expkit's log.
    sacred_metrics = json.loads((runs / run_id / "metrics.json").read_text())
    assert sacred_metrics["loss"]["steps"] == list(range(9))
    assert_complete_output((runs / run_id / "cout.txt").read_text())
    assert sorted(p.name for p in runs.iterdir() if p.name != "_index") == ["1", "_sources"]


# --- (1) the run folder of a file store disappears mid-run ------------------------------


@pytest.mark.slow
def test_file_store_back_during_the_run_gets_everything_from_the_runs_own_retry(
    outage: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    runs, away = tmp_path / "runs", tmp_path / "away"
    proc = start(outage, "with", "linger=2.0", "-F", "runs", "-b", "0.1", env=env)
    wait_for(tmp_path / "phase1", proc)
    (runs / "1").rename(away)  # as root, chmod would not stop the process: take it away
    (tmp_path / "gone").touch()
    wait_for(tmp_path / "phase2", proc)
    away.rename(runs / "1")
    (tmp_path / "resume").touch()
    _, err = proc.communicate(timeout=TIMEOUT)

    assert proc.returncode == 0, err
    assert err.count("store runs failed") == 1  # reported once
    assert str(tmp_path / "spool") in err
    assert "the spooled events were delivered" in err
    assert_file_run_complete(runs)
    assert spooled(tmp_path / "spool") == []


def test_file_store_back_after_the_run_gets_everything_from_expkit_sync(
    outage: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    runs, away = tmp_path / "runs", tmp_path / "away"
    proc = start(outage, "-F", "runs", "-b", "0.1", env=env)
    wait_for(tmp_path / "phase1", proc)
    (runs / "1").rename(away)
    (tmp_path / "gone").touch()
    wait_for(tmp_path / "phase2", proc)
    (tmp_path / "resume").touch()
    out, err = proc.communicate(timeout=TIMEOUT)

    assert proc.returncode == 0, err  # the store's trouble is not the experiment's
    assert "after 8" in out
    assert err.count("store runs failed") == 1
    assert f"kept in {tmp_path / 'spool'}" in err
    assert "expkit sync" in err
    [kept] = spooled(tmp_path / "spool")

    away.rename(runs / "1")
    done = run_expkit("sync", str(tmp_path / "spool"), "runs", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"delivered {kept.name} to runs as run 1" in done.stdout
    assert_file_run_complete(runs)
    assert spooled(tmp_path / "spool") == []


# --- (2) and a TinyDB store ---------------------------------------------------------------


def test_tinydb_store_gone_at_the_end_gets_everything_from_expkit_sync(
    outage: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    store, away = tmp_path / "db", tmp_path / "away"
    proc = start(outage, "-t", "db", "-b", "0.1", env=env)
    wait_for(tmp_path / "phase1", proc)
    store.rename(away)
    (tmp_path / "gone").touch()
    wait_for(tmp_path / "phase2", proc)
    (tmp_path / "resume").touch()
    _, err = proc.communicate(timeout=TIMEOUT)

    assert proc.returncode == 0, err
    assert str(tmp_path / "spool") in err
    assert not store.exists(), "the store wrote a new, partial database"
    away.rename(store)
    done = run_expkit("sync", str(tmp_path / "spool"), "tinydb://db", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr

    tables = json.loads((store / "metadata.json").read_text())
    [doc] = tables["runs"].values()
    assert (doc["status"], doc["result"]) == ("COMPLETED", 42)
    assert_complete_output(doc["captured_out"])
    [loss] = tables["metrics"].values()
    assert loss["steps"] == list(range(9))


# --- (2) a MongoDB server that goes down mid-run ---------------------------------------------


@pytest.fixture
def quick_url(mongo_url: str) -> str:
    """The test database's URL with a short server selection time-out, which keeps a run with
    the server away quick."""
    return mongo_url + ("&" if "?" in mongo_url else "?") + "serverSelectionTimeoutMS=300"


def outage_experiment(gone: Callable[[], None], back: Callable[[], None]) -> Experiment:
    """The outage experiment in this process: ``gone`` and ``back`` take the store away
    after the first part and (maybe) return it after the middle part."""
    ex = Experiment("outage_mongo", interactive=True)

    @ex.main
    def main(_run: Any) -> int:
        for i in range(3):
            print("before", i)
            _run.log_scalar("loss", i)
        time.sleep(0.2)
        gone()
        for i in range(3, 6):
            print("during", i)
            _run.log_scalar("loss", i)
        time.sleep(0.4)  # heartbeats find the server away
        back()
        for i in range(6, 9):
            print("after", i)
            _run.log_scalar("loss", i)
        time.sleep(0.2)
        return 42

    return ex


def assert_mongo_run_complete(db: Any, run_id: Any) -> None:
    doc = db.runs.find_one({"_id": run_id})
    assert (doc["status"], doc["result"]) == ("COMPLETED", 42)
    assert_complete_output(load_captured_out(db.runs, run_id))
    [loss] = db.metrics.find({"run_id": run_id})
    assert loss["steps"] == list(range(9))
    assert [ref["name"] for ref in doc["info"]["metrics"]] == ["loss"]
    assert db.runs.count_documents({}) == 1


def test_mongo_back_during_the_run_gets_everything(
    memory_mongo: MemoryMongo, quick_url: str, mongo_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def gone() -> None:
        memory_mongo.down = True

    def back() -> None:
        memory_mongo.down = False

    ex = outage_experiment(gone, back)
    run = ex.run(options={"--beat-interval": 0.05, "--mongo_db": quick_url, "--capture": "sys"})
    assert run.status == "COMPLETED"
    assert f"store {redact_url(quick_url)} failed" in caplog.text
    assert f"store {redact_url(quick_url)} is back" in caplog.text
    assert_mongo_run_complete(mongo_db, run._id)


def test_mongo_back_after_the_run_gets_everything_from_expkit_sync(
    memory_mongo: MemoryMongo,
    quick_url: str,
    mongo_db: Any,
    tmp_path: Path,
    env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def gone() -> None:
        memory_mongo.down = True

    ex = outage_experiment(gone, lambda: None)
    run = ex.run(options={"--beat-interval": 0.05, "--mongo_db": quick_url, "--capture": "sys"})
    assert (run.status, run.result) == ("COMPLETED", 42)
    assert f"kept in {tmp_path / 'spool'}" in caplog.text
    assert len(spooled(tmp_path / "spool")) == 1

    memory_mongo.down = False
    done = run_expkit("sync", str(tmp_path / "spool"), quick_url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 delivered, 0 still spooled" in done.stdout
    assert_mongo_run_complete(mongo_db, run._id)


# --- (3) a store that is down from the start ------------------------------------------------

QUICK = """
from expkit import Experiment

ex = Experiment("quick")


@ex.config
def cfg():
    tag = "first"
    wait = 0.0


@ex.main
def main(tag, wait, _run):
    import time

    print("hello from", tag)
    _run.log_scalar("x", 1.5)
    _run.log_scalar("x", 2.5)
    time.sleep(wait)
    return tag


if __name__ == "__main__":
    ex.run_commandline()
"""


@pytest.fixture
def quick(tmp_path: Path) -> Path:
    script = tmp_path / "exp_quick.py"
    script.write_text(QUICK)
    return script


def runs_by_tag(runs: Path) -> dict[str, dict]:
    """The file store's runs, by the ``tag`` of their config."""
    found = {}
    for folder in runs.iterdir():
        if folder.name.isdigit():
            record = read_run(runs, folder.name)
            found[record["config"]["tag"]] = record
    return found


def assert_quick_run(record: dict, runs: Path, tag: str) -> None:
    assert (record["status"], record["result"]) == ("COMPLETED", tag)
    assert record["metrics"]["x"]["values"] == [1.5, 2.5]
    assert f"hello from {tag}" in (runs / record["_id"] / "cout.txt").read_text()


def test_file_store_down_from_the_start_then_synced(
    quick: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    block_folder(tmp_path / "runs")
    done = run_script(quick, "-F", "runs", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "hello from first" in done.stdout
    assert f"kept in {tmp_path / 'spool'}" in done.stderr
    assert len(spooled(tmp_path / "spool")) == 1

    (tmp_path / "runs").unlink()
    synced = run_expkit("sync", str(tmp_path / "spool"), "runs", cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "as run 1" in synced.stdout
    assert_quick_run(read_run(tmp_path / "runs", "1"), tmp_path / "runs", "first")
    assert spooled(tmp_path / "spool") == []


def test_mongo_down_from_the_start_then_synced(
    memory_mongo: MemoryMongo,
    quick_url: str,
    mongo_db: Any,
    tmp_path: Path,
    env: dict[str, str],
    quick: Path,
) -> None:
    memory_mongo.down = True
    done = run_script(quick, "-m", quick_url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert f"store {redact_url(quick_url)} failed" in done.stderr
    assert len(spooled(tmp_path / "spool")) == 1

    memory_mongo.down = False
    synced = run_expkit("sync", str(tmp_path / "spool"), quick_url, cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    [doc] = mongo_db.runs.find()
    assert (doc["_id"], doc["status"], doc["result"]) == (1, "COMPLETED", "first")
    assert "hello from first" in doc["captured_out"]
    [x] = mongo_db.metrics.find()
    assert (x["run_id"], x["values"]) == (1, [1.5, 2.5])


# --- (4) the next run into the store replays what an earlier one spooled ---------------------


@pytest.mark.parametrize("wait", [0.0, 1.5], ids=["short-next-run", "long-next-run"])
def test_next_run_into_the_store_delivers_an_earlier_spooled_run(
    quick: Path, tmp_path: Path, env: dict[str, str], wait: float
) -> None:
    runs = tmp_path / "runs"
    block_folder(runs)
    # Long enough, with heartbeats, that replaying it takes longer than the next run.
    first = run_script(quick, "with", "wait=0.5", "-b", "0.01", "-F", "runs", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert len(spooled(tmp_path / "spool")) == 1

    runs.unlink()
    done = run_script(
        quick, "with", "tag=second", f"wait={wait}", "-F", "runs", cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    # Nothing else was asked of the user: when the next run has ended, both are stored.
    found = runs_by_tag(runs)
    assert sorted(found) == ["first", "second"]
    assert_quick_run(found["first"], runs, "first")
    assert_quick_run(found["second"], runs, "second")
    assert spooled(tmp_path / "spool") == []


# --- (5) output printed right before the end is kept ------------------------------------------

LAST_WORDS = """
import time
from pathlib import Path
from expkit import Experiment

ex = Experiment("last_words")


@ex.config
def cfg():
    mode = "fail"


@ex.main
def main(mode):
    print("last words before", mode)
    if mode == "fail":
        raise RuntimeError("early failure")
    Path("ready").touch()
    time.sleep(60)


if __name__ == "__main__":
    ex.run_commandline()
"""


def read_file_store(tmp_path: Path) -> tuple[str, str]:
    record = read_run(tmp_path / "runs", "1")
    return record["status"], (tmp_path / "runs" / "1" / "cout.txt").read_text()


def read_tinydb(tmp_path: Path) -> tuple[str, str]:
    [doc] = json.loads((tmp_path / "db" / "metadata.json").read_text())["runs"].values()
    return doc["status"], doc["captured_out"]


@pytest.fixture(params=["file", "tinydb", "mongo"])
def store(request: pytest.FixtureRequest) -> tuple[list[str], Callable[[Path], tuple[str, str]]]:
    """The flags that pick a store, and how to read (status, output) of its one run."""
    if request.param == "file":
        return ["-F", "runs"], read_file_store
    if request.param == "tinydb":
        return ["-t", "db"], read_tinydb
    url = request.getfixturevalue("quick_url")
    db = request.getfixturevalue("mongo_db")

    def read_mongo(tmp_path: Path) -> tuple[str, str]:
        [doc] = db.runs.find()
        return doc["status"], load_captured_out(db.runs, doc["_id"])

    return ["-m", url], read_mongo


@pytest.fixture
def last_words(tmp_path: Path) -> Path:
    script = tmp_path / "exp_last_words.py"
    script.write_text(LAST_WORDS)
    return script


def test_output_before_an_early_failure_is_kept(
    store: tuple, last_words: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    flags, read = store
    done = run_script(last_words, *flags, cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "RuntimeError: early failure" in done.stderr
    status, output = read(tmp_path)
    assert status == "FAILED"
    assert "last words before fail" in output
    assert spooled(tmp_path / "spool") == []


def test_output_before_sigterm_is_kept(
    store: tuple, last_words: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    flags, read = store
    proc = start(last_words, "with", "mode=term", *flags, env=env)
    wait_for(tmp_path / "ready", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0
    status, output = read(tmp_path)
    assert status == "INTERRUPTED"
    assert "last words before term" in output
    assert spooled(tmp_path / "spool") == []


# --- (7) security --------------------------------------------------------------------------

ESCAPES = """
import os
from pathlib import Path
from expkit import Experiment

ex = Experiment("escapes")


@ex.main
def main(_run):
    payload = Path("payload.txt")
    payload.write_text("payload\\n")
    outside = Path(os.environ["OUTSIDE"])
    rundir = Path("runs", str(_run._id))
    if rundir.is_dir():  # the file store: a folder of the run that leads outside it
        os.symlink(outside, rundir / "sub")
    else:
        os.symlink(outside, "sub")
    names = ["../escaped.txt", str(outside / "absolute.txt"), "sub/linked.txt", "ok.txt"]
    for name in names:
        try:
            _run.add_artifact(payload, name=name)
        except Exception as exc:
            print("refused", name, type(exc).__name__, exc)
        else:
            print("accepted", name)


if __name__ == "__main__":
    ex.run_commandline()
"""


@pytest.fixture
def escapes(tmp_path: Path) -> Path:
    script = tmp_path / "exp_escapes.py"
    script.write_text(ESCAPES)
    return script


def test_artifact_names_cannot_place_files_outside_any_store(
    store: tuple, escapes: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    flags, read = store
    outside = tmp_path / "outside"
    outside.mkdir()
    done = run_script(escapes, *flags, cwd=tmp_path, env={**env, "OUTSIDE": str(outside)})
    assert done.returncode == 0, done.stderr
    assert "refused ../escaped.txt UsageError" in done.stdout
    assert f"refused {outside / 'absolute.txt'} UsageError" in done.stdout
    assert "accepted ok.txt" in done.stdout
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()
    if flags[0] == "-F":
        assert "refused sub/linked.txt UsageError" in done.stdout
        assert (tmp_path / "runs" / "1" / "ok.txt").read_text() == "payload\n"
    else:  # a name, never a path: the content goes to hashfs or GridFS
        assert "accepted sub/linked.txt" in done.stdout
    assert spooled(tmp_path / "spool") == []  # refused, not spooled for later
    status, _ = read(tmp_path)
    assert status == "COMPLETED"


def test_the_file_store_itself_refuses_names_that_leave_the_run_folder(tmp_path: Path) -> None:
    obs = FileStorageObserver(tmp_path / "runs")
    obs.started_event(
        ex_info={"name": "x", "base_dir": str(tmp_path), "sources": []},
        command="main",
        host_info={},
        start_time=datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        config={},
        meta_info={},
        _id=None,
    )
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "runs" / "1" / "sub")
    for name in ["../x.txt", str(tmp_path / "outside" / "abs.txt"), "sub/x.txt", "a/../../x.txt"]:
        with pytest.raises(UsageError, match="artifact name"):
            obs.artifact_event(name=name, filename=str(payload))
    assert list((tmp_path / "outside").iterdir()) == []
    assert not (tmp_path / "runs" / "x.txt").exists() and not (tmp_path / "x.txt").exists()


@pytest.mark.slow
def test_a_mongodb_password_is_stored_nowhere(
    tmp_path: Path,
    env: dict[str, str],
    quick: Path,
    memory_mongo: MemoryMongo,
    quick_url: str,
    mongo_db: Any,
) -> None:
    [(user, password)] = memory_mongo.users.items()
    assert f"{user}:{password}@" in quick_url
    # Stored in MongoDB and, as the command line, in the file store.
    done = run_script(quick, "-m", quick_url, "-F", "runs", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    # Away from the start: spooled, then synced.
    memory_mongo.down = True
    done2 = run_script(quick, "with", "tag=second", "-m", quick_url, cwd=tmp_path, env=env)
    assert done2.returncode == 0, done2.stderr
    assert len(spooled(tmp_path / "spool")) == 1
    spool_text = all_text(tmp_path / "spool")
    memory_mongo.down = False
    synced = run_expkit("sync", str(tmp_path / "spool"), quick_url, cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr

    docs = [(db, repr(doc)) for db, _, doc in memory_mongo.all_documents()]
    completed = [d for db, d in docs if db == mongo_db.name and "'status': 'COMPLETED'" in d]
    assert len(completed) == 2
    for text in [*(d for _, d in docs), all_text(tmp_path / "runs"), spool_text]:
        assert password not in text
    for output in [done, done2, synced]:
        assert password not in output.stdout + output.stderr
    assert f"{user}:***@" in all_text(tmp_path / "runs")


CONFIG_VALUES = """
import numpy as np
from expkit import Experiment

ex = Experiment("values")
ex.add_config({"scalar": np.float64(0.25), "when": "2024-01-02"})


@ex.config
def cfg():
    pair = (1, "two")
    nested = {"inner": (3.5, None), "flag": True}


@ex.main
def main(pair, nested, scalar, when):
    print("pair is a", type(pair).__name__)
    return [pair, scalar]


if __name__ == "__main__":
    ex.run_commandline()
"""

PLAIN_CONFIG = {
    "scalar": 0.25,
    "when": "2024-01-02",
    "pair": [1, "two"],
    "nested": {"inner": [3.5, None], "flag": True},
}


def test_config_values_are_stored_as_data_never_pickled(
    memory_mongo: MemoryMongo, mongo_url: str, mongo_db: Any, tmp_path: Path, env: dict[str, str]
) -> None:
    script = tmp_path / "exp_values.py"
    script.write_text(CONFIG_VALUES)
    done = run_script(script, "-F", "runs", "-t", "db", "-m", mongo_url, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "pair is a tuple" in done.stdout

    file_config = json.loads((tmp_path / "runs" / "1" / "config.json").read_text())
    [tiny] = json.loads((tmp_path / "db" / "metadata.json").read_text())["runs"].values()
    [mongo_doc] = mongo_db.runs.find()
    for config in [file_config, tiny["config"], mongo_doc["config"]]:
        assert {k: v for k, v in config.items() if k != "seed"} == PLAIN_CONFIG
    stored = all_text(tmp_path / "runs") + all_text(tmp_path / "db")
    stored += "".join(repr(doc) for _, _, doc in memory_mongo.all_documents())
    for marker in ["py/object", "py/tuple", "py/reduce", "numpy.ndarray", "Binary("]:
        assert marker not in stored
    for folder in [tmp_path / "runs", tmp_path / "db"]:
        for path in folder.rglob("*"):
            assert not (path.is_file() and path.read_bytes().startswith(b"\x80")), path


OBJECT_IN_CONFIG = """
import numpy as np
from pathlib import Path
from expkit import Experiment

ex = Experiment("objects")


@ex.config
def cfg():
    thing = {value}


@ex.main
def main(thing):
    return 1


if __name__ == "__main__":
    ex.run_commandline()
"""


@pytest.mark.parametrize(("value", "kind"), [("np.arange(3)", "ndarray"), ("Path('x')", "Path")])
def test_config_values_that_are_no_data_are_refused_not_pickled(
    tmp_path: Path, env: dict[str, str], value: str, kind: str
) -> None:
    script = tmp_path / "exp_objects.py"
    script.write_text(OBJECT_IN_CONFIG.format(value=value))
    done = run_script(script, "-F", "runs", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("ERROR: "), done.stderr
    [line] = done.stderr.splitlines()
    assert "thing" in line and kind in line
    assert not (tmp_path / "runs").exists()


# --- (8) the closing lines say where each run went, and never a password --------------------

MODULE_WAITING = """\
import time
from pathlib import Path


def exp_wait(_run):
    print("first part")
    _run.log_scalar("loss", 1.0)
    Path("started").touch()
    deadline = time.monotonic() + 60
    while not Path("go").exists():
        assert time.monotonic() < deadline, "the test never said go"
        time.sleep(0.01)
    print("second part")
    _run.log_scalar("loss", 0.5)
    return 3
"""

MODULE_QUICK = """\
def exp_quick(n=2):
    print("n is", n)
    return n * 10
"""

MODULE_HUGE = """\
import expkit


@expkit.config
def cfg():
    n = 10**5000 + 7  # no JSON writer takes it


def exp_huge(n):
    return n % 1000
"""


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync_command(stdout: str) -> list[str]:
    """The ``expkit sync FOLDER URL`` the closing lines tell the user to type."""
    [line] = [line for line in stdout.splitlines() if "deliver with: expkit sync" in line]
    return shlex.split(line.split("deliver with: ", 1)[1])


def test_a_store_away_is_reported_as_spooled_without_its_password(
    tmp_path: Path, env: dict[str, str], mongo_url: str, mongo_db: Any
) -> None:
    write_project(tmp_path, {"exp_quick.py": MODULE_QUICK})
    password = "Pw-9xQ-never-shown"
    away = f"mongodb://alice:{password}@127.0.0.1:{closed_port()}/db?serverSelectionTimeoutMS=300"
    done = run_expkit("run", "--store", "runs", "--store", away, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert password not in done.stdout + done.stderr
    shown = away.replace(password, "***")
    lines = done.stdout.splitlines()
    assert "stored 1 run(s) in runs: id 1" in lines
    assert not any(line.startswith("stored") and "mongodb" in line for line in lines)
    [spooled] = [line for line in lines if line.startswith("spooled")]
    folder = tmp_path / "spool" / os.listdir(tmp_path / "spool")[0]
    assert spooled == (
        f"spooled 1 run(s) for {shown} (not stored yet); deliver with: "
        f"expkit sync {folder} '{shown}' (the password in place of ***)"
    )
    # The command delivers it, given the real URL; here into the suite's MongoDB.
    command = sync_command(done.stdout)
    assert command[:3] == ["expkit", "sync", str(folder)]
    synced = run_expkit(*command[1:3], mongo_url, cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    [doc] = mongo_db.runs.find()
    assert (doc["status"], doc["result"]) == ("COMPLETED", 20)
    assert "n is 2" in doc["captured_out"]


def test_a_store_folder_removed_mid_run_is_reported_as_spooled_and_sync_recreates_it(
    tmp_path: Path, env: dict[str, str]
) -> None:
    write_project(tmp_path, {"exp_wait.py": MODULE_WAITING}, pyproject="beat_interval = 0.1\n")
    proc = subprocess.Popen(
        [EXPKIT, "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(tmp_path / "started", proc)
    time.sleep(0.3)  # a heartbeat or two reach the store
    (tmp_path / "runs").rename(tmp_path / "deleted")  # at once, as the run writes on
    shutil.rmtree(tmp_path / "deleted")
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=TIMEOUT)

    assert proc.returncode == 0, out + err
    assert "exp_wait.py::exp_wait  COMPLETED  id=1" in out
    assert "stored 1 run(s)" not in out
    assert not (tmp_path / "runs").exists()  # the run's retries did not guess
    command = sync_command(out)
    assert command[1:] == [
        "sync",
        str(tmp_path / "spool" / os.listdir(tmp_path / "spool")[0]),
        str(tmp_path / "runs"),
    ]
    synced = run_expkit(*command[1:], cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert synced.stdout.endswith("1 delivered, 0 still spooled\n")
    record = read_run(tmp_path / "runs", "1")
    assert (record["status"], record["result"]) == ("COMPLETED", 3)
    assert record["metrics"]["loss"]["values"] == [1.0, 0.5]
    printed = [
        line
        for line in (tmp_path / "runs" / "1" / "cout.txt").read_text().splitlines()
        if not line.startswith("INFO - ")  # the run's log lines are kept too
    ]
    assert printed[:1] == ["first part"] and "second part" in printed
    assert spooled(tmp_path / "spool") == []


def test_a_run_the_store_cannot_write_is_reported_once_and_kept_until_it_can(
    tmp_path: Path, env: dict[str, str]
) -> None:
    write_project(tmp_path, {"exp_huge.py": MODULE_HUGE, "exp_quick.py": MODULE_QUICK})
    done = run_expkit("run", "exp_huge.py", cwd=tmp_path, env=env)
    # The experiment completed, but the store has not got it: exit 1, as for a failure.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "= 1 completed, 1 not stored in " in done.stdout.splitlines()[-1]
    [kept] = spooled(tmp_path / "spool")
    [not_stored] = [line for line in done.stdout.splitlines() if line.startswith("not stored")]
    assert not_stored.startswith(
        f"not stored in {tmp_path / 'runs'}: the store refused its started_event: ValueError: "
    )
    assert not_stored.endswith(f"; kept in {kept}")
    assert done.stderr.count(str(kept)) == 1  # one line on stderr names it, and why

    # Later runs into the same store neither retry nor repeat it.
    later = run_expkit("run", "exp_quick.py", cwd=tmp_path, env=env)
    assert later.returncode == 0, later.stdout + later.stderr
    assert str(kept) not in later.stdout + later.stderr
    assert spooled(tmp_path / "spool") == [kept]
    listed = run_expkit("sync", str(tmp_path / "spool"), "runs", cwd=tmp_path, env=env)
    assert listed.returncode == 1
    assert listed.stdout.startswith(f"undeliverable: {kept}: the store refused its started_event")

    # Named, it is tried again: with Python's limit on long ints lifted, the store takes it.
    unlimited = {**env, "PYTHONINTMAXSTRDIGITS": "0"}
    synced = run_expkit("sync", str(kept), "runs", cwd=tmp_path, env=unlimited)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert spooled(tmp_path / "spool") == []
    run_id = synced.stdout.split(" as run ")[1].split()[0]
    sys.set_int_max_str_digits(0)  # to read it back, as the store needed to write it
    try:
        record = read_run(tmp_path / "runs", run_id)
        assert (record["status"], record["result"]) == ("COMPLETED", 7)
        assert record["config"]["n"] == 10**5000 + 7
    finally:
        sys.set_int_max_str_digits(sys.int_info.default_max_str_digits)


PRINTING = """\
    import expkit

    def exp_print(_run):
        for i in range(300):
            print("x" * 200, i)
            _run.log_scalar("i", i, i)
        return 300
"""


def _file_size_limit(limit: int) -> Callable[[], None]:
    def limit_file_size() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_file_size


def test_a_run_whose_spool_fills_up_too_is_said_to_be_lost_never_stored(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # No file may grow past 40 kB: the run's 60 kB of output fit neither store nor spool.
    write_project(tmp_path, {"exp_print.py": PRINTING})
    done = subprocess.run(
        [EXPKIT, "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=_file_size_limit(40 * 1024),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stored 1 run(s)" not in done.stdout, done.stdout
    assert "not stored in" in done.stdout and ", and lost: " in done.stdout, done.stdout
    assert "File too large" in done.stdout
    # What the spool holds lacks the run's end: set aside, not delivered as the whole run.
    synced = run_expkit("sync", str(tmp_path / "spool"), "runs", cwd=tmp_path, env=env)
    assert "it holds the run up to there" in synced.stdout, synced.stdout
    assert synced.stdout.endswith("0 delivered, 1 still spooled\n")


def test_an_sqlite_file_deleted_mid_run_is_spooled_and_sync_recreates_the_run(
    tmp_path: Path, env: dict[str, str]
) -> None:
    pytest.importorskip("sqlalchemy")
    write_project(tmp_path, {"exp_wait.py": MODULE_WAITING}, pyproject="beat_interval = 0.1\n")
    url = "sqlite:///runs.db"
    (tmp_path / "go").touch()
    made = run_expkit("run", "--store", url, cwd=tmp_path, env=env)  # run 1 makes the file
    assert made.returncode == 0, made.stdout + made.stderr
    (tmp_path / "go").unlink()
    (tmp_path / "started").unlink()
    proc = start_process([EXPKIT, "run", "--store", url], tmp_path, env)
    wait_for(tmp_path / "started", proc)
    for path in tmp_path.glob("runs.db*"):  # the file the run writes to, opened before
        path.unlink()
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=TIMEOUT)

    assert proc.returncode == 0, out + err
    assert "stored 1 run(s)" not in out, out
    synced = run_expkit(*sync_command(out)[1:], cwd=tmp_path, env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    listed = run_expkit("runs", "show", "2", "--json", "--store", url, cwd=tmp_path, env=env)
    record = json.loads(listed.stdout)
    assert (record["status"], record["result"]) == ("COMPLETED", 3)
    assert record["metrics"]["loss"]["values"] == [1.0, 0.5]


class _Lines:
    """The lines of a process's stream as they come, read by one thread."""

    def __init__(self, stream: Any) -> None:
        import queue
        import threading

        self._queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self._queue.put(x) for x in stream], daemon=True).start()

    def until(self, wanted: str, seconds: float) -> None:
        """Wait for a line holding ``wanted``; fail after ``seconds``."""
        import queue

        deadline = time.monotonic() + seconds
        while not any(wanted in line for line in self.seen):
            try:
                self.seen.append(self._queue.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                pytest.fail(f"no line with {wanted!r} in {seconds} s: {self.seen}")
        self.seen = []  # what comes next is looked at next


def _locked_sqlite(tmp_path: Path, env: dict[str, str]) -> Any:
    """A project with an SQLite store holding run 1, and another writer holding its lock."""
    import sqlite3

    pytest.importorskip("sqlalchemy")
    write_project(tmp_path, {"exp_wait.py": MODULE_WAITING}, pyproject="beat_interval = 60\n")
    (tmp_path / "go").touch()
    made = run_expkit("run", "--store", "sqlite:///runs.db", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    for name in ("go", "started"):
        (tmp_path / name).unlink()
    other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # for longer than the tests wait
    return other


def test_sigterm_while_sqlite_is_locked_is_acted_on_and_the_run_kept_in_every_store(
    tmp_path: Path, env: dict[str, str]
) -> None:
    other = _locked_sqlite(tmp_path, env)
    (tmp_path / "go").touch()  # the run would end at once: it never gets that far
    args = ["run", "-v", "--store", "sqlite:///runs.db", "--store", "files"]
    proc = start_process([EXPKIT, *args], tmp_path, env)
    try:
        err = _Lines(proc.stderr)
        err.until("Running command", TIMEOUT)  # said right before the stores hear of the start
        time.sleep(0.5)  # into the wait for the lock
        proc.send_signal(signal.SIGTERM)
        # Acted on while the lock is still held (SQLite alone would wait up to a minute).
        err.until("failed (started_event: SigtermInterrupt", 20)
    finally:
        other.execute("ROLLBACK")
        other.close()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2, out
    assert read_run(tmp_path / "files", "1")["status"] == "INTERRUPTED"  # the next store too
    assert not (tmp_path / "started").exists()  # stopped before the experiment's function
    url = "sqlite:///runs.db"
    shown = run_expkit("runs", "show", "2", "--json", "--store", url, cwd=tmp_path, env=env)
    assert json.loads(shown.stdout)["status"] == "INTERRUPTED"


def test_sigterm_while_a_runs_end_waits_for_sqlites_lock_waits_too(
    tmp_path: Path, env: dict[str, str]
) -> None:
    other = _locked_sqlite(tmp_path, env)
    other.execute("ROLLBACK")  # the run starts; its end will wait
    proc = start_process([EXPKIT, "run", "-v", "--store", "sqlite:///runs.db"], tmp_path, env)
    try:
        err = _Lines(proc.stderr)
        wait_for(tmp_path / "started", proc)
        other.execute("BEGIN EXCLUSIVE")
        (tmp_path / "go").touch()
        err.until("Result: 3", TIMEOUT)  # said right before the stores hear of the end
        time.sleep(0.5)  # into the wait for the lock
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None  # the end is recorded before the signal is acted on
    finally:
        other.execute("ROLLBACK")
        other.close()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2, out
    url = "sqlite:///runs.db"
    shown = run_expkit("runs", "show", "2", "--json", "--store", url, cwd=tmp_path, env=env)
    assert (json.loads(shown.stdout)["status"], json.loads(shown.stdout)["result"]) == (
        "COMPLETED",
        3,
    )
