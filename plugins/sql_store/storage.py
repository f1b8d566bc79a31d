"""The SQL store's primitives: runs in SQLite (``sqlite:///runs.db``) or PostgreSQL.

The tables (declared with SQLAlchemy Core in :mod:`expkit_plugins.sql_store.schema`)
are created on first use, in one transaction, with the schema version in
``expkit_schema``::

    runs       one row a run: id, experiment, status, command, start_time, stop_time,
               heartbeat, format, captured_out, and JSON columns config, result, meta,
               host, experiment_info (base_dir, mainfile, dependencies, repositories),
               info, fail_trace
    metrics    one row a point: run_id, name, step, value, time (seconds since 1970)
    sources    run_id, name, md5              the experiment's source files
    resources  run_id, path, md5              input files the run read
    artifacts  run_id, name, md5, content_type, metadata
    blobs      md5, size, content             every stored file's content, once

The statements are plain SQL that both databases take, with a few pieces per dialect
(JSON paths, collations). SQLite is reached through Python's own ``sqlite3``, so a run
or a listing on an existing database does not import SQLAlchemy, whose import alone
(0.23 s) takes longer than a whole run without a store. PostgreSQL is reached through
SQLAlchemy's engine (psycopg), whose pool reconnects after a server restart.

SQLite runs in WAL mode with a busy timeout and takes its write lock at the start
of every write transaction, so many processes can record into one file at once.
Run ids are whole numbers the database hands out. JSON columns hold standard
JSON: a non-finite float is kept as ``{"$float": "nan"}`` (SQLite's and
PostgreSQL's JSON functions refuse ``NaN``) and read back as the float.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import sqlite3
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from expkit.errors import UsageError
from expkit.serialize import to_data
from expkit.store import Query, Storage, StoredFile, StoreError, StoreObserver
from expkit.utils import redact_url

log = logging.getLogger("expkit")

SCHEMA_VERSION = 1
FORMAT = "SqlStore-expkit-1"
DEFAULT_SQL_PRIORITY = 40  # Sacred's
_SQLITE_BUSY_MS = 60_000
_CONNECT_TIMEOUT = 5

_FILE_TABLES = {"source": "sources", "resource": "resources", "artifact": "artifacts"}
# The document's fields kept in a column of their own name in ``runs``.
_COLUMNS = ("status", "command", "start_time", "stop_time", "heartbeat", "format", "config",
            "result", "meta", "host", "info", "fail_trace")  # fmt: skip
_RUN = ("id", "experiment", *_COLUMNS, "experiment_info", "captured_out")
_SUMMARY = ("id", "experiment", "status", "command", "start_time", "stop_time", "heartbeat",
            "config", "result", "meta")  # fmt: skip
_JSON = frozenset({"config", "result", "meta", "host", "experiment_info", "info", "fail_trace",
                   "metadata"})  # fmt: skip
_TIMES = frozenset({"start_time", "stop_time", "heartbeat"})
# PostgreSQL: the id sequence moved past every stored id, never back (to ids of deleted runs).
_PG_SEQUENCE_PAST_IDS = """
SELECT setval(pg_get_serial_sequence('runs', 'id'), GREATEST(
    (SELECT max(id) FROM runs),
    COALESCE(pg_sequence_last_value(pg_get_serial_sequence('runs', 'id')::regclass), 0)))
"""


class SqlStorage(Storage):
    """Runs in the tables of an SQL database: the primitives of the SQL store."""

    capabilities = frozenset({"delete", "edit", "query"})

    def __init__(self, url: str, echo: bool = False, engine: Any = None) -> None:
        self.url = url
        self._where = redact_url(url)
        self._db = _database(url, echo, engine)
        self._secret = _secret(url)
        self._ready = False
        self._lock = threading.RLock()
        self._cout_len = 0
        self._cout_tail = ""

    def __repr__(self) -> str:
        return f"SqlStorage({self._where!r})"

    @property
    def engine(self) -> Any:
        """SQLAlchemy's engine of a PostgreSQL store; ``None`` for SQLite."""
        return getattr(self._db, "engine", None)

    # --- writing ---

    def create(self, doc: dict) -> int:
        """Insert the run's row and its sources' rows; the database hands out the id."""
        values = {field: _column(field, doc[field]) for field in _COLUMNS if field in doc}
        values.setdefault("format", FORMAT)
        values["experiment"] = _name(doc)
        values["experiment_info"] = _experiment_info(doc)
        values["captured_out"] = doc.get("captured_out") or ""
        row = self._cells(values)
        postgres = self._db.name == "postgresql"
        with self._lock, self._write("storing the run") as tx:
            wanted = doc.get("_id")
            if wanted is None:
                [(run_id,)] = tx.rows(self._insert("runs", row) + " RETURNING id", row.values())
            else:
                run_id = _int_id(wanted, self._where)
                if postgres:  # no other run is stored until the id sequence is moved on
                    tx.run("LOCK TABLE runs IN SHARE ROW EXCLUSIVE MODE")
                old = tx.rows("SELECT status FROM runs WHERE id = ?", (run_id,))
                if not old:
                    row["id"] = run_id
                    tx.run(self._insert("runs", row), row.values())
                    if postgres:
                        # PostgreSQL's sequence would hand out this id again (SQLite's
                        # AUTOINCREMENT keeps past the largest id itself).
                        tx.run(_PG_SEQUENCE_PAST_IDS)
                elif old[0][0] == "QUEUED":  # a queued run starts under its id
                    tx.run(self._update(row), (*row.values(), run_id))
                    for table in (*_FILE_TABLES.values(), "metrics"):
                        tx.run(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                else:
                    raise UsageError(f"a run with id {run_id} already exists in {self._where}")
            files = doc["experiment"].get("sources") or []
            if files:
                tx.many(
                    "INSERT INTO sources (run_id, name, md5) VALUES (?, ?, ?)",
                    [(run_id, f.name, f.md5) for f in files],
                )
            self._cout_len, self._cout_tail = 0, ""
            return run_id

    def reopen(self, run_id: Any) -> dict:
        """Go on writing the stored run ``run_id``."""
        doc = self.load(run_id)
        text = doc.get("captured_out") or ""
        self._cout_len, self._cout_tail = len(text), text[-_TAIL:]
        return doc

    def update(self, doc: dict, changed: frozenset[str]) -> None:
        """One transaction: the changed columns, and the changed lists of files."""
        if not changed:
            return  # only metric points were new: append_metrics wrote them
        run_id = _int_id(doc["_id"], self._where)
        row = self._cells(
            {field: _column(field, doc.get(field)) for field in changed if field in _COLUMNS}
        )
        sets = [f"{name} = {self._db.mark(name)}" for name in row]
        params = list(row.values())
        if "captured_out" in changed:
            text = doc.get("captured_out") or ""
            new = self._new_output(text)
            if new is None:
                sets.append("captured_out = ?")
                params.append(_hidden(text, self._secret))
            else:
                sets.append("captured_out = COALESCE(captured_out, '') || ?")
                params.append(new)
        with self._lock, self._write("saving the run") as tx:
            if sets:
                done = tx.run(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, run_id))
                if done == 0:
                    raise StoreError(f"run {run_id} is no longer in {self._where}")
            for kind in ("resource", "artifact"):
                if kind + "s" in changed:
                    table = _FILE_TABLES[kind]
                    tx.run(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                    rows = [
                        self._cells(_file_row(kind, run_id, f)) for f in doc.get(kind + "s") or ()
                    ]
                    if rows:
                        tx.many(self._insert(table, rows[0]), [tuple(r.values()) for r in rows])
        if "captured_out" in changed:
            text = doc.get("captured_out") or ""
            self._cout_len, self._cout_tail = len(text), text[-_TAIL:]

    def put_file(self, kind: str, file: StoredFile, path: str) -> str:
        """Keep the file's content in ``blobs`` (once per md5); the md5 is its ref."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise UsageError(f"{kind} {file.name!r}: cannot read {path} ({exc.strerror})") from None
        digest = hashlib.md5(data).hexdigest()
        with self._lock, self._write(f"storing the {kind} {file.name!r}") as tx:
            tx.run(
                "INSERT INTO blobs (md5, size, content) VALUES (?, ?, ?) "
                "ON CONFLICT (md5) DO NOTHING",
                (digest, len(data), data),
            )
        return digest

    def append_metrics(self, run_id: Any, columns: dict[str, dict]) -> None:
        """One row a point, in one transaction."""
        ident = _int_id(run_id, self._where)
        if not any(column["steps"] for column in columns.values()):
            return
        rows = itertools.chain.from_iterable(
            zip(
                itertools.repeat(ident),
                itertools.repeat(str(name)),
                column["steps"],
                _numbers(column["values"]),
                column["timestamps"],
            )
            for name, column in columns.items()
        )
        with self._lock, self._write("storing metrics") as tx:
            tx.many(
                "INSERT INTO metrics (run_id, name, step, value, time) VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    # --- reading ---

    def summaries(self) -> list[dict]:
        """Every run's summary row, in id order."""
        with self._read("listing runs") as tx:
            rows = tx.rows(f"SELECT {', '.join(_SUMMARY)} FROM runs ORDER BY id")
        return [_summary_doc(self._decoded(_SUMMARY, row)) for row in rows]

    def select(self, query: Query) -> tuple[list[dict], bool]:
        """The query as SQL where it can be (see :func:`_conditions`); candidates otherwise."""
        dialect = self._db.name
        conditions, params, exact = _conditions(query, dialect, self._db.time_param)
        order = _order(query) if exact else None
        sql = f"SELECT {', '.join(_SUMMARY)} FROM runs"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += f" ORDER BY {order or 'id'}"
        if order is not None and query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        with self._read("selecting runs") as tx:
            rows = tx.rows(sql, params)
        return [_summary_doc(self._decoded(_SUMMARY, row)) for row in rows], order is not None

    def load(self, run_id: Any) -> dict:
        """The run's row and its files' rows, as the layer's document."""
        ident = _lookup_id(run_id, self._where)
        with self._read(f"reading run {ident}") as tx:
            found = tx.rows(f"SELECT {', '.join(_RUN)} FROM runs WHERE id = ?", (ident,))
            if not found:
                raise KeyError(f"no run {run_id!r} in {self._where}")
            sources = tx.rows(
                "SELECT name, md5 FROM sources WHERE run_id = ? ORDER BY name", (ident,)
            )
            resources = tx.rows(
                "SELECT path, md5 FROM resources WHERE run_id = ? ORDER BY id", (ident,)
            )
            artifacts = tx.rows(
                "SELECT name, md5, metadata, content_type FROM artifacts WHERE run_id = ? "
                "ORDER BY id",
                (ident,),
            )
        row = self._decoded(_RUN, found[0])
        doc = {field: row[field] for field in _COLUMNS}
        doc["_id"] = row["id"]
        doc["captured_out"] = row["captured_out"] or ""
        experiment = dict(row["experiment_info"] or {})
        experiment["name"] = row["experiment"]
        experiment["sources"] = [StoredFile(name, md5, md5) for name, md5 in sources]
        doc["experiment"] = experiment
        doc["resources"] = [StoredFile(path, md5, md5) for path, md5 in resources]
        doc["artifacts"] = [
            StoredFile(name, md5, md5, self._db.json_value(meta), content_type)
            for name, md5, meta, content_type in artifacts
        ]
        return doc

    def load_metrics(self, run_id: Any) -> dict[str, dict]:
        """Every point of the run, in the order they were logged."""
        ident = _lookup_id(run_id, self._where)
        out: dict[str, dict] = {}
        with self._read(f"reading the metrics of run {ident}") as tx:
            rows = tx.rows(
                "SELECT name, step, value, time FROM metrics WHERE run_id = ? ORDER BY id",
                (ident,),
            )
        for name, step, value, t in rows:
            series = out.get(name)
            if series is None:
                series = out[name] = {"steps": [], "values": [], "timestamps": []}
            series["steps"].append(step)
            series["values"].append(math.nan if value is None else value)
            series["timestamps"].append(t)
        return out

    def read_file(self, run_id: Any, kind: str, file: StoredFile) -> bytes:
        """A stored file's content, by its md5."""
        with self._read(f"reading the {kind} {file.name!r}") as tx:
            found = tx.rows("SELECT content FROM blobs WHERE md5 = ?", (file.ref,))
        if not found or found[0][0] is None:
            raise StoreError(f"{kind} {file.name!r} is recorded but its content is not stored")
        return bytes(found[0][0])

    def delete(self, run_id: Any) -> None:
        """Remove the run's rows, and the contents no other run refers to."""
        ident = _lookup_id(run_id, self._where)
        used = " UNION ".join(
            f"SELECT md5 FROM {table} WHERE md5 IS NOT NULL" for table in _FILE_TABLES.values()
        )
        with self._lock, self._write(f"deleting run {ident}") as tx:
            for table in (*_FILE_TABLES.values(), "metrics"):
                tx.run(f"DELETE FROM {table} WHERE run_id = ?", (ident,))
            tx.run("DELETE FROM runs WHERE id = ?", (ident,))
            tx.run(f"DELETE FROM blobs WHERE md5 NOT IN ({used})")

    def ping(self) -> bool:
        """Whether the database answers now."""
        try:
            with self._db.transaction(write=False) as tx:
                tx.rows("SELECT 1")
        except self._db.errors:
            return False
        return True

    def close(self) -> None:
        """Close the connections."""
        self._db.close()

    # --- helpers ---

    def _cells(self, values: dict) -> dict:
        """Column values as the database takes them, the password hidden."""
        cells = {}
        for name, value in values.items():
            value = _hidden(value, self._secret)
            if name in _JSON:
                value = None if value is None else _json_text(value)
            elif name in _TIMES:
                value = self._db.time_param(value)
            cells[name] = value
        return cells

    def _insert(self, table: str, row: dict) -> str:
        marks = ", ".join(self._db.mark(name) for name in row)
        return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})"

    def _update(self, row: dict) -> str:
        sets = ", ".join(f"{name} = {self._db.mark(name)}" for name in row)
        return f"UPDATE runs SET {sets} WHERE id = ?"

    def _decoded(self, names: Sequence[str], row: Sequence[Any]) -> dict:
        """A row of ``runs`` as Python values; a damaged value is ``None``, and named in a
        warning, so that one damaged run does not hide the others."""
        db = self._db
        out = dict(zip(names, row))
        for name in names:
            value = out[name]
            if value is None or not (name in _JSON or name in _TIMES):
                continue
            try:
                out[name] = db.json_value(value) if name in _JSON else db.time_value(value)
            except (ValueError, TypeError) as exc:
                log.warning(
                    "run %s in %s: its %s is damaged (%s)", out.get("id"), self._where, name, exc
                )
                out[name] = None
        return out

    def _new_output(self, text: str) -> str | None:
        """What extends the stored ``captured_out`` to ``text``; ``None`` to write it anew."""
        written, tail, secret = self._cout_len, self._cout_tail, self._secret
        if written and len(text) >= written and text[written - len(tail) : written] == tail:
            # Appended to, unless the password runs across the end of what is stored.
            if not secret or not _across(text, secret, written):
                return _hidden(text[written:], secret)
        return None

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[Any]:
        with self._errors(what):
            self._prepare()
            with self._db.transaction(write=True) as tx:
                yield tx

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[Any]:
        with self._errors(what):
            self._prepare()
            with self._db.transaction(write=False) as tx:
                yield tx

    def _prepare(self) -> None:
        """Create the tables on first use; refuse a database a newer expkit wrote."""
        if self._ready:
            return
        db = self._db
        with db.transaction(write=False) as tx:
            version = db.schema_version(tx)
        if version is None:
            with db.transaction(write=True) as tx:
                if db.name == "postgresql":
                    # Concurrent CREATE TABLEs race in PostgreSQL's catalogs: one at a time.
                    tx.run("SELECT pg_advisory_xact_lock(7341020101)")
                version = db.schema_version(tx)
                if version is None:
                    from expkit_plugins.sql_store.schema import create_statements

                    for statement in create_statements(db.name):
                        tx.run(statement)
                    tx.run("INSERT INTO expkit_schema (version) VALUES (?)", (SCHEMA_VERSION,))
                    version = SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._where} holds schema version {version}, written by a newer "
                f"expkit (this one knows {SCHEMA_VERSION}): upgrade expkit"
            )
        self._ready = True

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._db.errors as exc:
            raise StoreError(f"SQL store {self._where}: {what} failed ({_reason(exc)})") from None


class SqlObserver(StoreObserver):
    """Store runs in an SQL database (Sacred's ``SqlObserver``): ``SqlObserver(url)``."""

    def __init__(self, url: str, echo: bool = False, priority: int = DEFAULT_SQL_PRIORITY) -> None:
        super().__init__(SqlStorage(url, echo=echo), priority=priority)

    @classmethod
    def create(
        cls, url: str, echo: bool = False, priority: int = DEFAULT_SQL_PRIORITY
    ) -> SqlObserver:
        """Deprecated in Sacred: ``SqlObserver(url)``."""
        warnings.warn(
            "SqlObserver.create(...) is deprecated; use SqlObserver(...)",
            DeprecationWarning,
            stacklevel=2,
        )
        return cls(url, echo, priority)

    @classmethod
    def create_from(
        cls, engine: Any, session: Any = None, priority: int = DEFAULT_SQL_PRIORITY
    ) -> SqlObserver:
        """An observer on an existing SQLAlchemy engine (``session`` is not used)."""
        self = cls.__new__(cls)
        url = engine.url.render_as_string(hide_password=False)
        StoreObserver.__init__(self, SqlStorage(url, engine=engine), priority=priority)
        return self


# --- the databases -------------------------------------------------------------------------


def _database(url: str, echo: bool, engine: Any) -> _Sqlite | _Postgres:
    backend = url.partition(":")[0].partition("+")[0]
    if backend == "sqlite":
        return _Sqlite(_sqlite_path(url), echo)
    if engine is not None:
        return _Postgres(engine)
    if backend != "postgresql":
        raise UsageError(
            f"{redact_url(url)!r}: the SQL store keeps runs in SQLite (sqlite:///runs.db) "
            "or PostgreSQL (postgresql://user@host/db)"
        )
    return _Postgres(_engine(url, echo))


class _Sqlite:
    """An SQLite file through Python's ``sqlite3``: one connection a thread."""

    name = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: str, echo: bool) -> None:
        self.path = path
        self._echo = echo
        self._guard = threading.Lock()
        self._forget()

    def _forget(self) -> None:
        self._local = threading.local()
        self._opened: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._forget()  # a forked child: the parent's connections are the parent's
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=_SQLITE_BUSY_MS / 1000,
                isolation_level=None,  # transactions are begun below, as each needs
                check_same_thread=False,  # closed by close() from any thread
            )
            if self._echo:
                conn.set_trace_callback(log.info)
            _wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint
            conn.execute("PRAGMA wal_autocheckpoint = 16384")
            self._local.conn = conn
            with self._guard:
                # The connections of threads that have ended are closed here: a server
                # that runs each request in a new thread would otherwise keep them all.
                ended = [c for t, c in self._opened if not t.is_alive()]
                self._opened = [(t, c) for t, c in self._opened if t.is_alive()]
                self._opened.append((threading.current_thread(), conn))
            for old in ended:
                old.close()
        return conn

    @contextlib.contextmanager
    def transaction(self, write: bool) -> Iterator[_SqliteTransaction]:
        """A transaction; a writing one takes the write lock at ``BEGIN``."""
        conn = self._connection()
        # A deferred transaction that later writes can fail at once with "database is
        # locked"; taking the lock at BEGIN makes writers queue behind the busy timeout.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _SqliteTransaction(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self, tx: _SqliteTransaction) -> int | None:
        """The schema version stored, ``None`` before the tables are created."""
        tables = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'expkit_schema'"
        if not tx.rows(tables):
            return None
        return tx.rows("SELECT max(version) FROM expkit_schema")[0][0]

    def mark(self, column: str) -> str:
        """The placeholder of a value for ``column``."""
        return "?"

    @staticmethod
    def time_param(value: datetime.datetime | None) -> str | None:
        """A time as SQLAlchemy keeps it in SQLite, text that sorts as the time does."""
        if value is None:
            return None
        if not isinstance(value, datetime.datetime):
            raise TypeError(f"a time must be a datetime, not {type(value).__name__}")
        return (
            f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
            f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
        )

    time_value = staticmethod(datetime.datetime.fromisoformat)

    @staticmethod
    def json_value(text: str | None) -> Any:
        """A JSON column's value."""
        return None if text is None else loads(text)

    def close(self) -> None:
        """Close every connection of this process."""
        with self._guard:
            opened, self._opened = self._opened, []
        if self._pid == os.getpid():
            for _, conn in opened:
                conn.close()
        self._local = threading.local()


def _wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, where readers never wait for writers."""
    deadline = time.monotonic() + _SQLITE_BUSY_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            # Switching a new file to WAL while other processes open it fails at once
            # with "database is locked": SQLite does not wait on the busy timeout there.
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class _SqliteTransaction:
    """The statements of one transaction in SQLite."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[Sequence[Any]]:
        """The rows ``sql`` selects or returns."""
        return self._conn.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run ``sql``; the number of rows it changed."""
        return self._conn.execute(sql, tuple(params)).rowcount

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once a row."""
        self._conn.executemany(sql, rows)


class _Postgres:
    """A PostgreSQL database through SQLAlchemy's engine."""

    name = "postgresql"

    def __init__(self, engine: Any) -> None:
        import sqlalchemy.exc

        self.engine = engine
        self.errors: tuple[type[BaseException], ...] = (sqlalchemy.exc.SQLAlchemyError,)

    @contextlib.contextmanager
    def transaction(self, write: bool) -> Iterator[_PostgresTransaction]:
        """A transaction on a connection of the engine's pool."""
        with self.engine.connect() as conn, conn.begin():
            yield _PostgresTransaction(conn)

    def schema_version(self, tx: _PostgresTransaction) -> int | None:
        """The schema version stored, ``None`` before the tables are created."""
        if tx.rows("SELECT to_regclass('expkit_schema')")[0][0] is None:
            return None
        return tx.rows("SELECT max(version) FROM expkit_schema")[0][0]

    def mark(self, column: str) -> str:
        """The placeholder of a value for ``column``: JSON goes as text, cast to JSONB."""
        return "CAST(? AS JSONB)" if column in _JSON else "?"

    @staticmethod
    def time_param(value: datetime.datetime | None) -> datetime.datetime | None:
        """A time as psycopg takes it."""
        return value

    @staticmethod
    def time_value(value: datetime.datetime) -> datetime.datetime:
        """A time as psycopg hands it over."""
        return value

    @staticmethod
    def json_value(value: Any) -> Any:
        """A JSON column's value (psycopg has decoded it with :func:`loads`)."""
        return value

    def close(self) -> None:
        """Close the pool's connections."""
        self.engine.dispose()


class _PostgresTransaction:
    """The statements of one transaction in PostgreSQL."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[Sequence[Any]]:
        """The rows ``sql`` selects or returns."""
        result = self._conn.exec_driver_sql(_format(sql), tuple(params) or None)
        return result.all() if result.returns_rows else []

    def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run ``sql``; the number of rows it changed."""
        return self._conn.exec_driver_sql(_format(sql), tuple(params) or None).rowcount

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once a row."""
        self._conn.exec_driver_sql(_format(sql), [tuple(row) for row in rows])


@functools.lru_cache(maxsize=256)
def _format(sql: str) -> str:
    # psycopg's placeholders; the statements here hold no other "?" and no "%".
    return sql.replace("?", "%s")


def _sqlite_path(url: str) -> str:
    _, sep, rest = url.partition("://")
    database = rest.partition("?")[0]
    if (
        not sep
        or not database.startswith("/")
        or database in ("/", "/:memory:")
        or (database.startswith("/file:"))
    ):
        raise UsageError(
            f"{redact_url(url)!r} names no database file: write sqlite:///runs.db "
            "(relative) or sqlite:////abs/path/runs.db"
        )
    path = os.path.abspath(urllib.parse.unquote(database[1:]))  # the run may chdir later
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _engine(url: str, echo: bool) -> Any:
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(f"{redact_url(url)!r} is not an SQLAlchemy database URL") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, from expkit[sql]
    try:
        return sa.create_engine(
            parsed,
            echo=echo,
            json_deserializer=loads,
            pool_pre_ping=True,  # a server restarted mid-run: reconnect, not fail
            connect_args={"connect_timeout": _CONNECT_TIMEOUT},
        )
    except ImportError as exc:
        raise UsageError(
            f"the SQL store cannot reach {redact_url(url)!r}: {exc}; install expkit[sql]"
        ) from None


# --- queries ---------------------------------------------------------------------------------

# The run fields a filter names first (as expkit.runs.lookup has them), and their columns.
_RUN_FIELDS = ("id", "experiment", "status", "command")
_SQL_OPS = {"==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _conditions(query: Query, dialect: str, time_param: Any) -> tuple[list[str], list[Any], bool]:
    """SQL conditions meaning what the core's filters mean, their parameters, and whether
    they are all of them.

    A condition is pushed down only where SQL compares as Python does: numbers (bools as
    0 and 1) with numbers, text with text by code point, ids as numbers. Anything else
    (lists, dicts, None, keys through list items, probably-dead runs) stays with the core,
    which receives candidates instead.
    """
    conditions: list[str] = []
    params: list[Any] = []
    exact = True
    if query.experiment is not None:
        pattern = query.experiment
        if not any(c in pattern for c in "*?["):
            conditions.append("experiment = ?")
            params.append(pattern)
        elif "[" not in pattern:
            like = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append("experiment LIKE ? ESCAPE '\\'")
            params.append(like.replace("*", "%").replace("?", "_"))
        else:
            exact = False
    if query.statuses is not None:
        if "PROBABLY_DEAD" in query.statuses:
            exact = False
        else:
            statuses = sorted(query.statuses)
            conditions.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
    if query.since is not None:
        conditions.append("start_time >= ?")
        params.append(time_param(query.since))
    if query.until is not None:
        conditions.append("start_time <= ?")
        params.append(time_param(query.until))
    for where in query.where:
        condition = _filter(where, dialect)
        if condition is None:
            exact = False
        else:
            conditions.append(condition[0])
            params.extend(condition[1])
    return conditions, params, exact


def _filter(where: Any, dialect: str) -> tuple[str, list] | None:
    """One ``KEY OP VALUE`` filter as SQL, or ``None`` when SQL would not mean the same."""
    key, op, value = where.key, where.op, where.value
    first, _, rest = key.partition(".")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    sql_op = _SQL_OPS[op]
    if first in _RUN_FIELDS:
        if rest:
            return "FALSE", []  # Python looks inside an id or a name and finds nothing
        if first == "id":
            if isinstance(value, str):
                if not (value.isascii() and value.isdigit()):
                    return None
                value = int(value)
            return f"id {sql_op} ?", [value]
        if not isinstance(value, str):
            return ("TRUE" if op == "!=" else "FALSE"), []
        if first == "status":
            value = value.upper()
        compare = f"{first}{_codepoint(dialect)} {sql_op} ?"
        return (f"({first} IS NULL OR {compare})" if op == "!=" else compare), [value]
    if first in _TIMES or first == "duration":
        if not rest:
            return None
    if first == "result":
        column, path = "result", rest.split(".") if rest else []
    elif first == "config" and rest:
        column, path = "config", rest.split(".")
    else:
        column, path = "config", key.split(".")
    if any(part.isdigit() for part in path):
        return None  # Python looks such a part up in a dict, or as a list index
    return _json_compare(column, path, sql_op, value, dialect)


def _json_compare(
    column: str, path: list[str], sql_op: str, value: Any, dialect: str
) -> tuple[str, list]:
    number = not isinstance(value, str)
    if dialect == "sqlite":
        where = "$" + "".join(f'."{p}"' for p in path) if path else "$"
        kind, kind_params = f"json_type({column}, ?)", [where]
        same_kind = "IN ('integer', 'real', 'true', 'false')" if number else "= 'text'"
        extracted, extracted_params = f"json_extract({column}, ?)", [where]
    else:
        node, node_params = (f"({column} #> CAST(? AS TEXT[]))", [path]) if path else (column, [])
        kind, kind_params = f"jsonb_typeof({node})", node_params
        text = f"({node} #>> '{{}}')"
        if number:
            same_kind = "IN ('number', 'boolean')"
            extracted = (
                f"(CASE WHEN {kind} = 'number' THEN CAST({text} AS DOUBLE PRECISION) "
                f"WHEN {text} = 'true' THEN 1.0 ELSE 0.0 END)"
            )
            extracted_params = [*node_params, *node_params, *node_params]
        else:
            same_kind = "= 'string'"
            extracted, extracted_params = f'({text} COLLATE "C")', node_params
    compare = f"{extracted} {sql_op} ?"
    compare_params = [*extracted_params, value]
    if sql_op == "!=":
        # Python: a value of another kind is unequal too, as long as the key is there.
        return (
            f"({kind} IS NOT NULL AND (NOT ({kind} {same_kind}) OR {compare}))",
            [*kind_params, *kind_params, *compare_params],
        )
    return f"({kind} {same_kind} AND {compare})", [*kind_params, *compare_params]


def _codepoint(dialect: str) -> str:
    return ' COLLATE "C"' if dialect == "postgresql" else ""


def _order(query: Query) -> str | None:
    """ORDER BY as the core sorts (missing values last, ties in id order), or ``None``."""
    key = query.sort
    if key is None:
        return "id"
    if key == "id":
        return "id DESC" if query.descending else "id"
    if key not in _TIMES:
        return None
    return f"{key} IS NULL, {key}{' DESC' if query.descending else ''}, id"


# --- values --------------------------------------------------------------------------------

_TAIL = 1000  # characters remembered to check that new output extends the stored output


def dumps(value: Any) -> str:
    """JSON text of ``value``; non-finite floats as ``{"$float": ...}`` (see the module doc)."""
    return _json_text(to_data(value))


def loads(text: str | bytes) -> Any:
    """The inverse of :func:`dumps` (psycopg hands JSONB over as bytes)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")
    data = json.loads(text)
    return _untag_floats(data) if '"$float"' in text else data


def _json_text(data: Any) -> str:
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_tag_floats(data), allow_nan=False, separators=(",", ":"))


def _tag_floats(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return {"$float": repr(data)}
    if isinstance(data, dict):
        return {k: _tag_floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_tag_floats(v) for v in data]
    return data


def _untag_floats(data: Any) -> Any:
    if isinstance(data, dict):
        if data.keys() == {"$float"} and data["$float"] in ("nan", "inf", "-inf"):
            return float(data["$float"])
        return {k: _untag_floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_untag_floats(v) for v in data]
    return data


def _column(field: str, value: Any) -> Any:
    if field in _TIMES:
        return value
    if field in ("status", "command", "format"):
        return None if value is None else str(value)
    return None if value is None else to_data(value)  # a JSON column


def _name(doc: dict) -> str | None:
    name = (doc.get("experiment") or {}).get("name")
    return None if name is None else str(name)[:255]


def _experiment_info(doc: dict) -> dict:
    experiment = doc.get("experiment") or {}
    return to_data({k: v for k, v in experiment.items() if k not in ("name", "sources")})


def _file_row(kind: str, run_id: int, file: StoredFile) -> dict:
    if kind == "resource":
        return {"run_id": run_id, "path": file.name, "md5": file.md5}
    return {
        "run_id": run_id,
        "name": file.name,
        "md5": file.ref,
        "content_type": file.content_type,
        "metadata": to_data(file.metadata),
    }


def _summary_doc(row: dict) -> dict:
    doc = {name: row[name] for name in _SUMMARY if name not in ("id", "experiment")}
    doc["_id"] = row["id"]
    doc["experiment"] = {"name": row["experiment"]}
    return doc


def _secret(url: str) -> str:
    """The password of the database URL: never written to the tables (see :func:`_hidden`)."""
    parts = urllib.parse.urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if password is not None:
        password = urllib.parse.unquote(password)
    else:
        password = (urllib.parse.parse_qs(parts.query).get("password") or [""])[-1]
    return password if len(password) >= 4 else ""  # shorter ones would hide too much text


def _hidden(value: Any, secret: str) -> Any:
    """``value`` with ``secret`` replaced by ``***`` in every string it holds.

    A run may print its database URL or keep it in its config; the password must still
    not end up in a database that others read.
    """
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, "***") if secret in value else value
    if isinstance(value, dict):
        return {key: _hidden(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [_hidden(item, secret) for item in value]
    return value


def _across(text: str, secret: str, at: int) -> bool:
    """Whether ``secret`` occurs in ``text`` starting before ``at`` and ending after it."""
    return text.find(secret, at - len(secret) + 1, at + len(secret) - 1) >= 0


_PLAIN_NUMBERS = frozenset({float, int})


def _numbers(values: list) -> list:
    """Metric values as the float column holds them (see :func:`_number`)."""
    if set(map(type, values)) <= _PLAIN_NUMBERS:
        total = sum(values)
        if total == total:  # no NaN among them: the values as they are (ints as floats)
            return values
    return list(map(_number, values))


def _number(value: Any) -> float | None:
    """A metric value as the float column holds it: NULL (``None``) for NaN and for what
    is no number (SQLite stores NaN as NULL anyway; PostgreSQL would rank it above every
    number in a filter), read back as NaN."""
    if type(value) is not float:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
    return value if value == value else None


def _int_id(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value)
    if text.isascii() and text.isdigit():
        return int(text)
    raise UsageError(f"run id {text!r}: the SQL store {where} numbers its runs; give a number")


def _lookup_id(value: Any, where: str) -> int:
    try:
        return _int_id(value, where)
    except UsageError:
        raise KeyError(f"no run {value!r} in {where}") from None


def _reason(exc: BaseException) -> str:
    """The driver's own message, first line, without the statement and its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return redact_url(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
