"""The two databases of the SQL store, behind one small interface.

A database opens transactions (:meth:`transaction`) whose statements take ``?``
placeholders, and converts the values of time and JSON columns both ways. SQLite is
reached through Python's own ``sqlite3``, one connection a thread; PostgreSQL through
SQLAlchemy's engine (psycopg), imported only for a ``postgresql://`` URL.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib.util
import json
import logging
import math
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from expkit.errors import UsageError
from expkit.signals import raise_deferred
from expkit.store import SUMMARY_META_OMITS, StoreError
from expkit.utils import redact_url

log = logging.getLogger("expkit")

_SQLITE_BUSY_MS = 60_000
_SQLITE_STEP_MS = 100  # a wait for the write lock goes back to Python this often
_CONNECT_TIMEOUT = 5
NEEDS_SQLALCHEMY = "the SQL store needs SQLAlchemy to create its tables: pip install 'expkit[sql]'"
# Connections a forked child inherited: kept alive so that they are never closed there.
_FROM_PARENT: list[sqlite3.Connection] = []
JSON_COLUMNS = frozenset({"config", "result", "meta", "host", "experiment_info", "info",
                          "fail_trace", "metadata"})  # fmt: skip
TIME_COLUMNS = frozenset({"start_time", "stop_time", "heartbeat"})


def open_database(url: str, echo: bool, engine: Any) -> SqliteDatabase | PostgresDatabase:
    """The database of an ``sqlite://`` or ``postgresql://`` URL (or of ``engine``)."""
    backend = url.partition(":")[0].partition("+")[0]
    if backend == "sqlite":
        path = _sqlite_path(url)
        if os.path.isdir(path):
            raise UsageError(f"{redact_url(url)!r} names a folder: give an SQLite file's path")
        if not os.path.exists(path) and not _sqlalchemy_installed():
            raise UsageError(NEEDS_SQLALCHEMY)  # now, before a run that could not be stored
        return SqliteDatabase(path, echo)
    if engine is not None and engine.dialect.name == "postgresql":
        return PostgresDatabase(engine)
    if engine is not None or backend != "postgresql":
        raise UsageError(
            f"{redact_url(url)!r}: the SQL store keeps runs in SQLite (sqlite:///runs.db) "
            "or PostgreSQL (postgresql://user@host/db)"
        )
    return PostgresDatabase(_engine(url, echo))


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for another writer in short steps.

    SQLite waits for a lock inside one C call, where Python runs no signal handler: a
    Ctrl-C would wait for the lock (up to a minute). Between steps it is acted on at once.
    """
    conn.execute(f"PRAGMA busy_timeout = {_SQLITE_STEP_MS}")
    try:
        _when_unlocked(conn, "BEGIN IMMEDIATE")
    finally:
        conn.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")


def _when_unlocked(conn: sqlite3.Connection, statement: str, pause: float = 0.0) -> None:
    """Run ``statement``, again while another connection holds the lock (up to the busy
    timeout, ``pause`` seconds apart). Nothing is written yet between tries: an interrupt a
    run's start deferred is raised there (:func:`expkit.signals.raise_deferred`)."""
    deadline = time.monotonic() + _SQLITE_BUSY_MS / 1000
    while True:
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        raise_deferred()
        time.sleep(pause)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class SqliteDatabase:
    """An SQLite file through Python's ``sqlite3``: one connection a thread."""

    name = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    password = ""  # an SQLite file has none
    # A listing's meta, as every store's summaries give it (damaged text is left as it is).
    listed_meta = (
        "CASE WHEN json_valid(meta) THEN json_remove(meta, "
        + ", ".join(f"'$.{key}'" for key in SUMMARY_META_OMITS)
        + ") ELSE meta END"
    )

    def __init__(self, path: str, echo: bool) -> None:
        self.path = path
        self._echo = echo
        self._start()

    def _start(self) -> None:
        self._guard = threading.Lock()
        self._local = threading.local()
        self._opened: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            # A forked child: the parent's connections are never used here, nor closed
            # (closing one could end the parent's WAL state); they are kept, untouched.
            _FROM_PARENT.extend(conn for _, conn in self._opened)
            self._start()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            self._local.file = _identity(self.path)
            with self._guard:
                # The connections of threads that have ended are closed here: a server
                # that runs each request in a new thread would otherwise keep them all.
                ended = [c for t, c in self._opened if not t.is_alive()]
                self._opened = [(t, c) for t, c in self._opened if t.is_alive()]
                self._opened.append((threading.current_thread(), conn))
            for old in ended:
                old.close()
        return conn

    def _connect(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=_SQLITE_BUSY_MS / 1000,
            isolation_level=None,  # transactions are begun below, as each needs
            check_same_thread=False,  # closed by close() from any thread
        )
        try:
            if self._echo:
                conn.set_trace_callback(log.info)
            _wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint
            conn.execute("PRAGMA wal_autocheckpoint = 16384")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def transaction(self, write: bool) -> Iterator[SqliteTransaction]:
        """A transaction; a writing one takes the write lock at ``BEGIN``."""
        conn = self._connection()
        if write and _identity(self.path) != self._local.file:
            # Deleted (or replaced) while open: the connection would go on writing to a
            # file nobody can open again, and the run would be lost. Failing spools it.
            self._local.conn = None
            with self._guard:
                self._opened = [(t, c) for t, c in self._opened if c is not conn]
            conn.close()
            raise sqlite3.OperationalError(f"{self.path} was deleted or replaced while in use")
        # A deferred transaction that later writes can fail at once with "database is
        # locked"; taking the lock at BEGIN makes writers queue behind the busy timeout.
        _begin_immediate(conn) if write else conn.execute("BEGIN")
        try:
            yield SqliteTransaction(conn)
            conn.execute("COMMIT")
        finally:
            # After an error, and after a COMMIT that failed (a full disk) without ending
            # the transaction: this thread's next BEGIN would fail on an open one.
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def schema_version(self, tx: SqliteTransaction) -> int | None:
        """The schema version stored, ``None`` before the tables are created."""
        if not self.has_table(tx, "expkit_schema"):
            return None
        return tx.rows("SELECT max(version) FROM expkit_schema")[0][0]

    @staticmethod
    def has_table(tx: SqliteTransaction, name: str) -> bool:
        """Whether the database has a table called ``name``."""
        return bool(
            tx.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        )

    def mark(self, column: str) -> str:
        """The placeholder of a value for ``column``."""
        return "?"

    @staticmethod
    def time_param(value: datetime.datetime | None) -> str | None:
        """A time as SQLAlchemy keeps it in SQLite, text that sorts as the time does."""
        if value is None:
            return None
        if not isinstance(value, datetime.datetime):
            raise StoreError(f"a time must be a datetime, not {type(value).__name__}")
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
    # Switching a new file to WAL while other processes open it fails at once with
    # "database is locked": SQLite does not wait on the busy timeout there.
    _when_unlocked(conn, "PRAGMA journal_mode = WAL", pause=0.005)


class SqliteTransaction:
    """The statements of one transaction in SQLite."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[Sequence[Any]]:
        """The rows ``sql`` selects or returns."""
        return self._conn.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run ``sql``; the number of rows it changed."""
        return self._conn.execute(sql, tuple(params)).rowcount

    def insert(self, sql: str, params: Iterable[Any]) -> int:
        """Run the ``INSERT`` ``sql``; the id the database gave the row."""
        # Not RETURNING: SQLite before 3.35 (Debian 11's, Ubuntu 20.04's) lacks it.
        return self._conn.execute(sql, tuple(params)).lastrowid

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once a row."""
        self._conn.executemany(sql, rows)


class PostgresDatabase:
    """A PostgreSQL database through SQLAlchemy's engine."""

    name = "postgresql"
    listed_meta = (
        "CASE WHEN jsonb_typeof(meta) = 'object' THEN meta"
        + "".join(f" - '{key}'" for key in SUMMARY_META_OMITS)
        + " ELSE meta END"
    )

    def __init__(self, engine: Any) -> None:
        import sqlalchemy.exc

        self.engine = engine
        self.errors: tuple[type[BaseException], ...] = (sqlalchemy.exc.SQLAlchemyError,)

    @contextlib.contextmanager
    def transaction(self, write: bool) -> Iterator[PostgresTransaction]:
        """A transaction on a connection of the engine's pool."""
        with self.engine.connect() as conn, conn.begin():
            yield PostgresTransaction(conn)

    def schema_version(self, tx: PostgresTransaction) -> int | None:
        """The schema version stored, ``None`` before the tables are created."""
        if not self.has_table(tx, "expkit_schema"):
            return None
        return tx.rows("SELECT max(version) FROM expkit_schema")[0][0]

    @staticmethod
    def has_table(tx: PostgresTransaction, name: str) -> bool:
        """Whether the database has a table called ``name`` (in the search path)."""
        return tx.rows("SELECT to_regclass(?)", (name,))[0][0] is not None

    def mark(self, column: str) -> str:
        """The placeholder of a value for ``column``: JSON goes as text, cast to JSONB."""
        return "CAST(? AS JSONB)" if column in JSON_COLUMNS else "?"

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

    @property
    def password(self) -> str:
        """The password the engine connects with, as SQLAlchemy parsed it from the URL."""
        url = self.engine.url
        password = url.password or url.query.get("password") or ""
        return password if isinstance(password, str) else ""

    def close(self) -> None:
        """Close the pool's connections."""
        self.engine.dispose()


class PostgresTransaction:
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

    def insert(self, sql: str, params: Iterable[Any]) -> int:
        """Run the ``INSERT`` ``sql``; the id the database gave the row."""
        return self.rows(sql + " RETURNING id", params)[0][0]

    def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run ``sql`` once a row."""
        self._conn.exec_driver_sql(_format(sql), [tuple(row) for row in rows])


@functools.lru_cache(maxsize=256)
def _format(sql: str) -> str:
    # psycopg's placeholders. The statements (storage's and query's) hold no other "?" and
    # no "%": values, LIKE patterns included, always go as parameters.
    return sql.replace("?", "%s")


def _sqlalchemy_installed() -> bool:
    # Whether it could be imported, without importing it (that takes 0.23 s).
    if "sqlalchemy" in sys.modules:
        return sys.modules["sqlalchemy"] is not None
    return importlib.util.find_spec("sqlalchemy") is not None


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
    return os.path.abspath(urllib.parse.unquote(database[1:]))  # the run may chdir later


def _engine(url: str, echo: bool) -> Any:
    try:
        import sqlalchemy as sa
    except ImportError:
        raise UsageError("the SQL store needs SQLAlchemy: pip install 'expkit[sql]'") from None

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


# --- JSON ------------------------------------------------------------------------------------


def loads(text: str | bytes) -> Any:
    """The inverse of :func:`json_text` (psycopg hands JSONB over as bytes)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")
    # The decoder's scanner is called directly: json.loads costs twice as much for the short
    # texts of a listing. Text it does not take whole, json.loads reads (or says what is wrong).
    try:
        data, end = _scan(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):
        data = json.loads(text)
    return _untag_floats(data) if '"$float"' in text else data


_scan = json.JSONDecoder().scan_once


def json_text(data: Any) -> str:
    """JSON text of plain data; non-finite floats as ``{"$float": ...}`` (see storage's doc)."""
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
