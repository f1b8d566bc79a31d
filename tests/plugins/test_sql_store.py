"""The SQL store: what is its own (tables, SQLite's WAL, URLs, numeric ids, Sacred's
``SqlObserver``) and its reliability with real processes on SQLite and PostgreSQL.

What every store does (a run recorded and read back, metrics, files, resume, delete,
edit) is in ``tests/test_store_contract.py``. PostgreSQL is the throwaway cluster of
``tests/sql_server.py`` (or ``EXPKIT_TEST_POSTGRES_URL``'s server).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sqlite3
import sys
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from cli_helpers import (
    RUN_AT_GO,
    assert_not_printed,
    error_lines,
    fresh_python,
    run_at_once,
    run_expkit,
    run_script,
    start_expkit,
    write_project,
)
from sql_server import password_of, tables_text

sa = pytest.importorskip("sqlalchemy")

from expkit.errors import UsageError  # noqa: E402
from expkit.pluginmanager import get_plugin_manager  # noqa: E402
from expkit.store import StoreError, open_reader, open_store  # noqa: E402
from expkit.utils import redact_url  # noqa: E402
from expkit_plugins.sql_store import storage  # noqa: E402
from expkit_plugins.sql_store.storage import SqlObserver  # noqa: E402

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0)
T1 = datetime.datetime(2024, 5, 1, 12, 0, 1)
EX_INFO = {
    "name": "sql",
    "base_dir": "/nowhere",
    "sources": [],
    "dependencies": [],
    "repositories": [],
    "mainfile": None,
}


def start(obs: Any, config: dict | None = None, _id: Any = None, meta: dict | None = None) -> Any:
    return obs.started_event(EX_INFO, "main", {"hostname": "h"}, T0, config or {}, meta or {}, _id)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, db: Path) -> str:
    """A new, empty SQL store: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return sqlite_url(db)
    return request.getfixturevalue("postgres_url")


def read(url: str, run_id: Any = None) -> Any:
    reader = open_reader(get_plugin_manager(), url)
    try:
        return reader.list_runs() if run_id is None else reader.get_run(run_id)
    finally:
        reader.close()


# --- the tables ---------------------------------------------------------------------------------


def test_tables_are_made_on_first_use_with_the_schema_version(db: Path):
    obs = SqlObserver(sqlite_url(db))
    assert not db.exists()  # opening the store writes nothing yet
    start(obs)
    tables = {name for (name,) in rows(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "metrics", "sources", "resources", "artifacts", "blobs"} <= tables
    assert rows(db, "SELECT version FROM expkit_schema") == [(storage.SCHEMA_VERSION,)]
    indexes = {name for (name,) in rows(db, "SELECT name FROM sqlite_master WHERE type='index'")}
    # Listing and filtering are queries: by status, experiment and start time, metrics by run.
    assert {
        "ix_runs_status",
        "ix_runs_experiment",
        "ix_runs_start_time",
        "ix_metrics_run_name",
    } <= indexes
    start(SqlObserver(sqlite_url(db)))  # a second store on the file makes nothing twice
    assert rows(db, "SELECT count(*) FROM expkit_schema") == [(1,)]


def test_a_database_of_a_newer_schema_is_refused_in_one_line(db: Path, tmp_path: Path):
    start(SqlObserver(sqlite_url(db)))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE expkit_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99, written by a newer expkit"):
        start(SqlObserver(sqlite_url(db)))
    message = (
        f"{sqlite_url(db)} holds schema version 99, written by a newer expkit "
        f"(this one knows {storage.SCHEMA_VERSION}): upgrade expkit"
    )
    with pytest.raises(StoreError) as refused:
        open_reader(get_plugin_manager(), sqlite_url(db)).list_runs()
    assert str(refused.value) == message
    done = run_expkit("runs", "list", "--store", sqlite_url(db), cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr
    assert rows(db, "SELECT count(*) FROM runs") == [(1,)]  # nothing lost
    if error_lines(done.stderr) != [f"ERROR: {message}"]:
        pytest.xfail(
            "expkit runs/sync/rerun report a store's StoreError as an internal error with a "
            "traceback (exit 3), not as one line"
        )


def test_reading_a_database_that_is_not_there_creates_none(tmp_path: Path):
    missing = tmp_path / "typo.db"
    with pytest.raises(UsageError, match=r"no SQLite database at .*typo\.db'"):
        open_reader(get_plugin_manager(), sqlite_url(missing)).list_runs()
    assert not missing.exists()


# The start of the tables Sacred 0.8.7's SqlObserver makes (sacred/observers/sql_bases.py).
SACRED_TABLES = [
    "CREATE TABLE experiment (experiment_id INTEGER PRIMARY KEY, name VARCHAR(32))",
    "CREATE TABLE run (id INTEGER PRIMARY KEY, run_id VARCHAR(24), status VARCHAR(9))",
]


def test_reading_a_database_of_sacreds_sql_observer_says_so_and_changes_nothing(db: Path):
    with sqlite3.connect(db) as conn:
        for statement in SACRED_TABLES:
            conn.execute(statement)
        conn.execute("INSERT INTO run (run_id, status) VALUES ('1', 'COMPLETED')")
    before = rows(db, "SELECT name FROM sqlite_master ORDER BY name")
    with pytest.raises(StoreError, match="holds the tables of Sacred's SqlObserver"):
        open_reader(get_plugin_manager(), sqlite_url(db)).list_runs()
    assert rows(db, "SELECT name FROM sqlite_master ORDER BY name") == before


def test_sqlite_runs_in_wal_mode(db: Path):
    start(SqlObserver(sqlite_url(db)))
    # WAL is a property of the file: every later reader and writer (sqlite3 too) uses it.
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_a_reader_keeps_no_connection_of_a_thread_that_has_ended(db: Path):
    # The web view reads runs in many threads: a connection kept for each thread that
    # has ended would pile up open files.
    start(SqlObserver(sqlite_url(db)))
    reader = open_reader(get_plugin_manager(), sqlite_url(db))

    def files_open() -> int:
        paths = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
        return paths.count(str(db.resolve()))

    try:
        assert len(reader.list_runs()) == 1
        before = files_open()
        for _ in range(20):
            thread = threading.Thread(target=reader.list_runs)
            thread.start()
            thread.join()
        assert len(reader.list_runs()) == 1
        # The last thread's connection is closed when the next thread opens one, and SQLite
        # may keep a closed connection's file open for reuse: a few, not one a thread.
        assert files_open() <= before + 2
    finally:
        reader.close()


@pytest.mark.slow
def test_many_processes_making_the_tables_at_once_all_succeed(url: str, tmp_path: Path):
    go, workers = tmp_path / "go", 12
    # Every process has opened the store and waits; no table exists yet.
    commands = [[sys.executable, "-c", RUN_AT_GO, url, str(go), str(n)] for n in range(workers)]
    done = run_at_once(commands, tmp_path, go)
    assert [d.returncode for d in done] == [0] * workers, [d.stderr for d in done]
    assert sorted(int(d.stdout) for d in done) == list(range(1, workers + 1))
    assert sorted(r.result for r in read(url)) == list(range(workers))


# --- values ---------------------------------------------------------------------------------


def test_values_come_back_with_their_types(url: str):
    obs = SqlObserver(url)
    values = [1.0, 2**64 + 1, -(2**70), 0.1, "12", "1e5", True, None, [1.0, "2"], {"a": 1.5}]
    ids = []
    for value in values:
        ids.append(start(obs, config={"value": value}))
        obs.heartbeat_event({"value": value}, "", T1, value)
        obs.completed_event(T1, value)
    for run_id, value in zip(ids, values):
        record = read(url, run_id)
        for got in (record.result, record.config["value"], record.info["value"]):
            assert got == value and type(got) is type(value), (value, got)
    assert [(r.result, type(r.result)) for r in read(url)] == [(v, type(v)) for v in values]


def test_non_finite_floats_round_trip(url: str):
    obs = SqlObserver(url)
    config = {"lr": math.nan, "clip": math.inf, "bounds": [-math.inf, 0.0], "name": "nan"}
    run_id = start(obs, config=config)
    obs.log_metric_columns(
        {
            "loss": {
                "steps": [0, 1, 2, 3],
                "values": [1.0, math.nan, math.inf, -math.inf],
                "timestamps": [1e9, 1e9 + 1, 1e9 + 2, 1e9 + 3],
            }
        },
        {},
    )
    obs.heartbeat_event({"best": math.inf}, "", T1, None)
    obs.completed_event(T1, {"loss": math.nan})
    record = read(url, run_id)
    assert math.isnan(record.config["lr"]) and record.config["clip"] == math.inf
    assert record.config["bounds"] == [-math.inf, 0.0] and record.config["name"] == "nan"
    assert math.isnan(record.result["loss"]) and record.info == {"best": math.inf}
    values = record.metrics["loss"]["values"]
    # A diverged loss is information: NaN stays NaN, never a missing value.
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2:] == [math.inf, -math.inf]


def test_metric_values_that_are_no_number_are_kept_as_nan_and_said(
    db: Path, caplog: pytest.LogCaptureFixture
):
    # Sacred's log_scalar took anything; such runs reach an SQL store through expkit sync.
    obs = SqlObserver(sqlite_url(db))
    run_id = start(obs)
    values = ["abc", None, True, 3, 2**70, math.nan]
    column = {"steps": list(range(6)), "values": values, "timestamps": [1e9] * 6}
    with caplog.at_level(logging.WARNING, logger="expkit"):
        obs.log_metric_columns({"acc": column}, {})
    stored = read(sqlite_url(db), run_id).metrics["acc"]["values"]
    assert [v for v in stored if v == v] == [1.0, 3.0, float(2**70)]
    [warning] = [r.getMessage() for r in caplog.records if "no number" in r.getMessage()]
    assert warning.startswith(f"run {run_id} in {sqlite_url(db)}, metric 'acc': 2 value(s)")
    assert "such as 'abc'" in warning


@pytest.mark.parametrize(
    "text, value",
    [('{"a":[1,2.5,null,true]}', {"a": [1, 2.5, None, True]}), ('"x"', "x"), ("0.0", 0.0),
     (' {"a": 1} ', {"a": 1}), ('{"$float":"nan"}', math.nan)],
)  # fmt: skip
def test_json_columns_are_read_whole(text: str, value: Any):
    from expkit_plugins.sql_store.databases import loads

    got = loads(text)
    assert got == value or (math.isnan(value) and math.isnan(got))


@pytest.mark.parametrize("text", ['{"a": 1}x', '{"a": 1} {"b": 2}', "", '{"a": ', "nope"])
def test_json_text_with_more_or_less_than_one_value_is_refused(text: str):
    # A listing names a damaged value in a warning; it must not take part of it for the whole.
    from expkit_plugins.sql_store.databases import loads

    with pytest.raises(ValueError):
        loads(text)


# --- URLs -------------------------------------------------------------------------------------


def test_a_relative_sqlite_url_is_relative_to_the_working_dir_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    obs = open_store(get_plugin_manager(), "sqlite:///sub/rel.db")
    monkeypatch.chdir(tmp_path.parent)  # the run changes its directory after the store opened
    start(obs)
    obs.close()
    assert rows(tmp_path / "sub" / "rel.db", "SELECT count(*) FROM runs") == [(1,)]


def test_an_absolute_sqlite_url_has_four_slashes(db: Path):
    assert str(db).startswith("/")
    obs = open_store(get_plugin_manager(), f"sqlite:///{db}")  # sqlite:////tmp/...
    start(obs)
    obs.close()
    assert [r.status for r in read(f"sqlite:///{db}")] == ["RUNNING"]


def test_postgresql_urls_mean_psycopg(postgres_url: str):
    obs = open_store(get_plugin_manager(), postgres_url)
    assert obs.storage.engine.dialect.driver == "psycopg"
    start(obs)
    obs.close()
    assert len(read(postgres_url.replace("postgresql://", "postgresql+psycopg://"))) == 1


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_is_refused_in_one_line(url: str, tmp_path: Path):
    write_project(tmp_path, {"exp_one.py": "def exp_one():\n    return 1\n"})
    done = run_expkit("run", "exp_one.py", "--store", url, cwd=tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr
    assert error_lines(done.stderr) == [
        f"ERROR: {url!r} names no database file: write sqlite:///runs.db (relative) "
        "or sqlite:////abs/path/runs.db"
    ]


# --- ids ---------------------------------------------------------------------------------------

_SCRIPT = """\
import sys

from expkit import Experiment
from expkit.observers import SqlObserver

ex = Experiment("scripted")
ex.observers.append(SqlObserver(sys.argv.pop(1)))


@ex.config
def cfg():
    n = 0
    steps = 10
    wait = 0.0


@ex.automain
def main(n, steps, wait, _run):
    import time

    print("worker", n, flush=True)
    for step in range(steps):
        _run.log_scalar("x", step * n, step)
        time.sleep(wait)
    _run.info["n"] = n
    return n
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """A Sacred-style script recording into the SQL store given as its first argument."""
    return write_project(tmp_path / "proj", {"exp_sql.py": _SCRIPT}) / "exp_sql.py"


def test_ids_are_numbers_the_database_hands_out(url: str, script: Path, spool: Path):
    done = run_script(script, url, "--id", "12", cwd=script.parent)
    assert done.returncode == 0, done.stderr
    assert start(SqlObserver(url)) == 13  # the next one after a given id
    bad = run_script(script, url, "--id", "abc", cwd=script.parent)
    refusal = (
        f"ERROR: run id 'abc': the SQL store {redact_url(url)} numbers its runs; give a number"
    )
    # A script's mistakes exit 1, as Sacred's do; the store that refused gets nothing more.
    assert (bad.returncode, error_lines(bad.stderr)[-1]) == (1, refusal), bad.stderr
    assert "spool" not in bad.stderr and not spool.exists()
    assert [r.id for r in read(url)] == [12, 13]  # nothing stored for the refused run
    assert isinstance(read(url, "12").id, int)  # `expkit runs show 12` finds it


# --- Sacred's SqlObserver ------------------------------------------------------------------------


def test_sqlobserver_as_sacred_users_write_it(db: Path):
    from expkit.observers import SqlObserver as imported

    assert imported is SqlObserver
    obs = SqlObserver(sqlite_url(db))
    assert obs.priority == storage.DEFAULT_SQL_PRIORITY
    start(obs)
    with pytest.warns(DeprecationWarning, match=r"SqlObserver\(\.\.\.\)"):
        created = SqlObserver.create(sqlite_url(db))
    assert isinstance(created, SqlObserver)
    assert start(created) == 2
    engine = sa.create_engine(sqlite_url(db))
    assert start(SqlObserver.create_from(engine)) == 3
    assert [r.id for r in read(sqlite_url(db))] == [1, 2, 3]


def test_the_sql_flag_of_a_script_stores_the_run_as_sacreds_does(tmp_path: Path):
    project = write_project(
        tmp_path / "proj",
        {
            "exp_flag.py": """\
from expkit import Experiment

ex = Experiment("flagged")


@ex.config
def cfg():
    lr = 0.1


@ex.automain
def main(lr):
    return lr * 2
"""
        },
    )
    url = sqlite_url(project / "runs.db")
    done = run_script("exp_flag.py", "-s", url, "with", "lr=0.25", cwd=project)
    assert done.returncode == 0, done.stderr
    [run] = read(url)
    assert (run.experiment, run.status, run.result) == ("flagged", "COMPLETED", 0.5)
    assert run.config["lr"] == 0.25


def test_runs_into_an_sqlite_file_import_sqlalchemy_only_to_create_its_tables(tmp_path: Path):
    # SQLAlchemy's import takes longer than a whole run: a run or a listing on an SQLite
    # database that has its tables goes without it.
    project = write_project(
        tmp_path,
        {
            "exp_light.py": """\
import sys

from expkit import Experiment
from expkit.observers import SqlObserver

ex = Experiment("light")
ex.observers.append(SqlObserver("sqlite:///runs.db"))


@ex.automain
def main():
    return "sqlalchemy" in sys.modules
"""
        },
    )
    for _ in range(2):
        done = run_script("exp_light.py", cwd=project)
        assert done.returncode == 0, done.stderr
    stored = read(sqlite_url(project / "runs.db"))
    assert [(r.id, r.result) for r in stored] == [(1, True), (2, False)]
    listed = fresh_python(
        "-c",
        "import sys; from expkit.pluginmanager import get_plugin_manager; "
        "from expkit.store import open_reader; "
        "reader = open_reader(get_plugin_manager(), 'sqlite:///runs.db'); "
        "print(len(reader.list_runs()), reader.get_run(1).result, 'sqlalchemy' in sys.modules)",
        cwd=project,
    )
    assert listed.split() == ["2", "True", "False"]


def test_without_sqlalchemy_an_sqlite_file_with_tables_works_and_a_new_one_says_what_to_install(
    db: Path, tmp_path: Path
):
    start(SqlObserver(sqlite_url(db)))
    code = (
        "import datetime, sys; sys.modules['sqlalchemy'] = None\n"
        "from expkit.errors import UsageError\n"
        "from expkit.pluginmanager import create_plugin_manager\n"
        "from expkit.store import open_reader, open_store\n"
        "pm = create_plugin_manager()\n"
        "print(len(open_reader(pm, sys.argv[1]).list_runs()))\n"
        "for url in (sys.argv[2], 'postgresql://me@localhost/db'):\n"
        "    try:\n"
        "        open_store(pm, url).started_event({'name': 'x', 'sources': []}, 'main', {},\n"
        "            datetime.datetime(2024, 5, 1), {}, {}, None)\n"
        "    except UsageError as e:\n"
        "        print(e)\n"
    )
    new = sqlite_url(tmp_path / "new.db")
    done = run_script("-c", code, sqlite_url(db), new, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "1",
        "the SQL store needs SQLAlchemy to create its tables: pip install 'expkit[sql]'",
        "the SQL store needs SQLAlchemy: pip install 'expkit[sql]'",
    ]
    assert not (tmp_path / "new.db").exists()  # refused at open, before anything ran


# --- the commands on SQLite -------------------------------------------------------------------

_EXPERIMENT = """\
import expkit


@expkit.config
def cfg():
    C = 1.0
    kernel = "rbf"


def exp_fit(C, kernel, _seed, _run):
    import random

    rng = random.Random(_seed)
    for step in range(3):
        _run.log_scalar("loss", rng.random() * C, step)
    print("fitted", kernel, C)
    return round(rng.random() * C, 6)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(
        tmp_path / "proj", {"exp_fit.py": _EXPERIMENT}, 'store = "sqlite:///runs.db"\n'
    )


@pytest.mark.slow
def test_runs_and_rerun_check_on_sqlite(project: Path):
    for c in ("1.0", "3.0"):
        done = run_expkit("run", "exp_fit.py", "-o", f"C={c}", cwd=project)
        assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "runs.db").is_file()
    listed = run_expkit("runs", "list", "C>2", "--json", cwd=project)
    assert listed.returncode == 0, listed.stderr
    [run] = json.loads(listed.stdout)
    assert (run["id"], run["config"]["C"], run["status"]) == (2, 3.0, "COMPLETED")
    shown = run_expkit("runs", "show", "2", cwd=project)
    assert "fitted rbf 3.0" in shown.stdout and "loss: 3 values" in shown.stdout

    rerun = run_expkit("rerun", "2", "--check", cwd=project)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "recorded the re-run as run 3 in sqlite:///runs.db (COMPLETED)" in rerun.stdout
    assert "result: identical" in rerun.stdout and "metrics: identical" in rerun.stdout
    third = read(f"sqlite:///{project / 'runs.db'}", 3)
    assert third.meta["rerun_of"]["id"] == 2 and third.result == run["result"]

    removed = run_expkit("runs", "rm", "1", "--yes", cwd=project)
    assert removed.returncode == 0, removed.stderr
    assert [r.id for r in read(f"sqlite:///{project / 'runs.db'}")] == [2, 3]


@pytest.mark.slow
def test_sync_from_a_file_store_to_sqlite_and_back(project: Path, tmp_path: Path):
    files = str(tmp_path / "file_runs")
    for c in ("1.0", "2.0"):
        done = run_expkit("run", "exp_fit.py", "-o", f"C={c}", "--store", files, cwd=project)
        assert done.returncode == 0, done.stdout + done.stderr
    sqlite = f"sqlite:///{tmp_path / 'synced.db'}"
    first = run_expkit("sync", files, sqlite, cwd=project)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["1 -> 1", "2 -> 2", f"2 copied, 0 already in {sqlite}"]
    again = run_expkit("sync", files, sqlite, cwd=project)
    assert again.stdout.splitlines()[-1] == f"0 copied, 2 already in {sqlite}"
    back = str(tmp_path / "back")
    assert run_expkit("sync", sqlite, back, cwd=project).returncode == 0

    for copy in (sqlite, back):
        for original, copied in zip(read(files), read(copy)):
            original, copied = read(files, original.id), read(copy, copied.id)
            assert (copied.config, copied.result, copied.status) == (
                original.config,
                original.result,
                original.status,
            )
            assert (copied.start_time, copied.stop_time) == (
                original.start_time,
                original.stop_time,
            )
            assert copied.captured_out == original.captured_out
            assert copied.metrics["loss"]["values"] == original.metrics["loss"]["values"]
    reader = open_reader(get_plugin_manager(), back)
    assert reader.read_source("1", "exp_fit.py") == (project / "exp_fit.py").read_bytes()


# --- reliability with real processes -----------------------------------------------------------


@pytest.mark.slow
def test_fifty_concurrent_runs_are_all_stored_once(url: str, script: Path):
    commands = [[sys.executable, str(script), url, "with", f"n={n}", "steps=20"] for n in range(50)]
    done = run_at_once(commands, script.parent)
    assert [d.returncode for d in done] == [0] * 50, [d.stderr[-500:] for d in done]
    runs = read(url)
    assert len(runs) == 50 and len({r.id for r in runs}) == 50
    assert sorted(r.config["n"] for r in runs) == list(range(50))
    reader = open_reader(get_plugin_manager(), url)
    for summary in runs:
        record = reader.get_run(summary.id)
        n = record.config["n"]
        assert (record.status, record.result, record.info) == ("COMPLETED", n, {"n": n})
        assert f"worker {n}\n" in record.captured_out
        assert record.metrics["x"]["steps"] == list(range(20))
        assert record.metrics["x"]["values"] == [s * n for s in range(20)]
    reader.close()


# --- passwords ------------------------------------------------------------------------------------


def test_the_password_of_the_url_is_never_written_to_the_tables(postgres_url: str, tmp_path: Path):
    password = password_of(postgres_url)
    if len(password) < 4:
        pytest.skip("the server given in the environment takes no password")
    obs = SqlObserver(postgres_url)
    run_id = start(obs, config={"db": postgres_url}, meta={"comment": f"into {postgres_url}"})
    out = "".join(f"line {i}\n" for i in range(300)) + f"connecting to {postgres_url}\n"
    obs.heartbeat_event({"url": postgres_url}, out, T1, {"from": postgres_url})
    out += "the password is " + password[:3]  # cut by a heartbeat
    obs.heartbeat_event({}, out, T1, None)
    out += password[3:] + "\n"
    obs.heartbeat_event({}, out, T1, None)
    (tmp_path / "notes.txt").write_text("nothing secret\n")
    obs.artifact_event("notes.txt", str(tmp_path / "notes.txt"), metadata={"db": postgres_url})
    obs.failed_event(T1, [f"OperationalError: {postgres_url}\n"])

    stored = tables_text(postgres_url)
    assert "line 299" in stored and "***" in stored
    assert password not in stored
    record = read(postgres_url, run_id)
    assert record.captured_out == out.replace(password, "***")
    assert record.config["db"] == redact_url(postgres_url)


def test_a_password_with_a_slash_is_hidden_as_well(local_postgres: Any, postgres_url: str):
    # SQLAlchemy reads such a URL, and connects with it; the store must hide that password.
    role, password = f"r{uuid.uuid4().hex[:8]}", f"pw/{uuid.uuid4().hex[:8]}"
    parts = urlsplit(postgres_url)
    database = parts.path.lstrip("/")
    with local_postgres.admin(database) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {role}")
    url = f"postgresql://{role}:{password}@{parts.hostname}:{parts.port}/{database}"
    try:
        obs = SqlObserver(url)
        start(obs, config={"note": f"connect with {password}"})
        obs.completed_event(T1, f"done with {password}")
        obs.storage.close()
        # The role's own tables, read through libpq, which takes the password quoted.
        stored = tables_text(url.replace(password, quote(password, safe="")))
        assert "connect with ***" in stored and "done with ***" in stored
        assert password not in stored
    finally:
        with local_postgres.admin(database) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


_SLOW = """\
import time

import expkit


@expkit.config
def cfg():
    steps = 60
    wait = 0.05


def exp_slow(steps, wait, _run):
    print("started", flush=True)
    for step in range(steps):
        _run.log_scalar("loss", 1 / (step + 1), step)
        time.sleep(wait)
    print("finished")
    return steps
"""


@pytest.mark.slow
def test_postgresql_stopped_mid_run_then_sync_delivers_every_point_once(
    local_postgres: Any, postgres_url: str, tmp_path: Path, spool: Path
):
    project = write_project(tmp_path / "proj", {"exp_slow.py": _SLOW})
    proc = start_expkit("run", "exp_slow.py", "--store", postgres_url, cwd=project, until="started")
    local_postgres.stop()  # the database goes away while the run logs
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err  # the run itself is not hurt
    assert "finished" in out
    [folder] = [p for p in spool.iterdir() if p.is_dir()]
    assert any(folder.iterdir())  # the run waits there
    password = password_of(postgres_url)
    spooled = b"".join(p.read_bytes() for p in spool.rglob("*") if p.is_file())
    assert b"loss" in spooled and password.encode() not in spooled

    local_postgres.resume()
    synced = run_expkit("sync", str(folder), postgres_url, cwd=project)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert not any(folder.iterdir())  # delivered, nothing left
    [summary] = read(postgres_url)
    record = read(postgres_url, summary.id)
    assert (record.status, record.result) == ("COMPLETED", 60)
    assert record.metrics["loss"]["steps"] == list(range(60))  # each point once
    assert record.metrics["loss"]["values"] == [1 / (s + 1) for s in range(60)]
    assert "started\n" in record.captured_out and "finished\n" in record.captured_out
    assert password not in tables_text(postgres_url)
    assert_not_printed(password, out, err, synced.stdout, synced.stderr)


@pytest.mark.slow
def test_a_password_in_the_url_is_never_printed_or_stored(postgres_url: str, tmp_path: Path):
    password = password_of(postgres_url)
    if not password:
        pytest.skip("the server given in the environment takes no password")
    project = write_project(tmp_path / "proj", {"exp_fit.py": _EXPERIMENT})
    store = ["--store", postgres_url]
    outputs = []
    for command in (
        ["run", "exp_fit.py", "-o", "C=2.0", *store],
        ["runs", "list", *store],
        ["runs", "show", "1", *store],
        ["rerun", "1", "--check", *store],
        ["sync", postgres_url, f"sqlite:///{tmp_path / 'copy.db'}"],
        ["sync", f"sqlite:///{tmp_path / 'copy.db'}", postgres_url],
    ):
        done = run_expkit(*command, cwd=project)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs += [done.stdout, done.stderr]
    assert "result: identical" in outputs[6]  # rerun's report
    assert [r.id for r in read(postgres_url)] == [1, 2]
    assert password not in tables_text(postgres_url)
    assert password not in (tmp_path / "copy.db").read_bytes().decode("latin-1")
    assert_not_printed(password, *outputs)
