"""The SQL store's tables and primitives, on SQLAlchemy Core.

SQLAlchemy is the one well-kept library that speaks both SQLite and PostgreSQL
(through psycopg) with the same code, and Sacred's ``SqlObserver`` takes its URLs.
The tables are created on first use, in one transaction, with the schema version
in ``expkit_schema``::

    runs       one row a run: id, experiment, status, command, start_time, stop_time,
               heartbeat, format, captured_out, and JSON columns config, result, meta,
               host, experiment_info (base_dir, mainfile, dependencies, repositories),
               info, fail_trace
    metrics    one row a point: run_id, name, step, value, time (seconds since 1970)
    sources    run_id, name, md5              the experiment's source files
    resources  run_id, path, md5              input files the run read
    artifacts  run_id, name, md5, content_type, metadata
    blobs      md5, size, content             every stored file's content, once

SQLite runs in WAL mode with a busy timeout and takes its write lock at the start
of every write transaction, so many processes can record into one file at once.
Run ids are whole numbers the database hands out. JSON columns hold standard
JSON: a non-finite float is kept as ``{"$float": "nan"}`` (SQLite's and
PostgreSQL's JSON functions refuse ``NaN``) and read back as the float.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import types
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles

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


class _Json(sa.JSON):
    """A JSON column, declared ``JSON_TEXT`` in SQLite (see :func:`_sqlite_json`)."""

    cache_ok = True


@compiles(_Json, "sqlite")
def _sqlite_json(type_: _Json, compiler: Any, **kw: Any) -> str:
    # SQLite's own JSON declaration has numeric affinity: it would store the text of a
    # top-level 1.0 as the integer 1 and of 2**64 as a float. "TEXT" keeps the text.
    return "JSON_TEXT"


_json = _Json().with_variant(pg.JSONB(), "postgresql")
metadata = sa.MetaData()
schema = sa.Table("expkit_schema", metadata, sa.Column("version", sa.Integer, nullable=False))
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment", sa.String(255), index=True),
    sa.Column("status", sa.String(32), index=True),
    sa.Column("command", sa.Text),
    sa.Column("start_time", sa.DateTime, index=True),
    sa.Column("stop_time", sa.DateTime),
    sa.Column("heartbeat", sa.DateTime),
    sa.Column("format", sa.String(64)),
    sa.Column("config", _json),
    sa.Column("result", _json),
    sa.Column("meta", _json),
    sa.Column("host", _json),
    sa.Column("experiment_info", _json),
    sa.Column("info", _json),
    sa.Column("fail_trace", _json),
    sa.Column("captured_out", sa.Text),
    sqlite_autoincrement=True,  # a deleted run's id is never handed out again
)
metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("step", sa.BigInteger),
    sa.Column("value", sa.Float),
    sa.Column("time", sa.Float),
    sa.Index("ix_metrics_run_name", "run_id", "name"),
)
sources = sa.Table(
    "sources",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("md5", sa.String(32)),
)
resources = sa.Table(
    "resources",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("md5", sa.String(32)),
)
artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("md5", sa.String(32)),
    sa.Column("content_type", sa.String(255)),
    sa.Column("metadata", _json),
)
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("md5", sa.String(32), primary_key=True),
    sa.Column("size", sa.BigInteger),
    sa.Column("content", sa.LargeBinary),
)
_FILE_TABLES = {"source": sources, "resource": resources, "artifact": artifacts}
# The document's fields kept in a column of their own name in ``runs``.
_COLUMNS = ("status", "command", "start_time", "stop_time", "heartbeat", "format", "config",
            "result", "meta", "host", "info", "fail_trace")  # fmt: skip
_SUMMARY = ("id", "experiment", "status", "command", "start_time", "stop_time", "heartbeat",
            "config", "result", "meta")  # fmt: skip
# PostgreSQL: the id sequence moved past every stored id, never back (to ids of deleted runs).
_PG_SEQUENCE_PAST_IDS = """
SELECT setval(pg_get_serial_sequence('runs', 'id'), GREATEST(
    (SELECT max(id) FROM runs),
    COALESCE(pg_sequence_last_value(pg_get_serial_sequence('runs', 'id')::regclass), 0)))
"""


class SqlStorage(Storage):
    """Runs in the tables of an SQL database: the primitives of the SQL store."""

    capabilities = frozenset({"delete", "edit", "query"})

    def __init__(self, url: str, echo: bool = False, engine: sa.Engine | None = None) -> None:
        self.url = url
        self._where = redact_url(url)
        self.engine = engine if engine is not None else _engine(url, echo)
        self._secret = _secret(self.engine.url)
        self._ready = False
        self._lock = threading.RLock()
        self._cout_len = 0
        self._cout_tail = ""

    def __repr__(self) -> str:
        return f"SqlStorage({self._where!r})"

    # --- writing ---

    def create(self, doc: dict) -> int:
        """Insert the run's row and its sources' rows; the database hands out the id."""
        row = _row(doc)
        row["experiment"] = _name(doc)
        row["experiment_info"] = _experiment_info(doc)
        row = _hidden(row, self._secret)
        with self._lock, self._write("storing the run") as conn:
            wanted = doc.get("_id")
            if wanted is None:
                run_id = conn.execute(runs.insert().values(row)).inserted_primary_key[0]
            else:
                run_id = _int_id(wanted, self._where)
                postgres = conn.dialect.name == "postgresql"
                if postgres:  # no other run is stored until the id sequence is moved on
                    conn.execute(sa.text("LOCK TABLE runs IN SHARE ROW EXCLUSIVE MODE"))
                old = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).first()
                if old is None:
                    conn.execute(runs.insert().values(id=run_id, **row))
                    if postgres:
                        # PostgreSQL's sequence would hand out this id again (SQLite's
                        # AUTOINCREMENT keeps past the largest id itself).
                        conn.execute(sa.text(_PG_SEQUENCE_PAST_IDS))
                elif old.status == "QUEUED":  # a queued run starts under its id
                    conn.execute(runs.update().where(runs.c.id == run_id).values(row))
                    for table in (*_FILE_TABLES.values(), metrics):
                        conn.execute(table.delete().where(table.c.run_id == run_id))
                else:
                    raise UsageError(f"a run with id {run_id} already exists in {self._where}")
            files = doc["experiment"].get("sources") or []
            if files:
                conn.execute(
                    sources.insert(),
                    [{"run_id": run_id, "name": f.name, "md5": f.md5} for f in files],
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
        values = {field: _column(field, doc.get(field)) for field in changed if field in _COLUMNS}
        values = _hidden(values, self._secret)
        with self._lock, self._write("saving the run") as conn:
            if "captured_out" in changed:
                values.update(self._output(doc.get("captured_out") or ""))
            if values:
                done = conn.execute(runs.update().where(runs.c.id == run_id).values(values))
                if done.rowcount == 0:
                    raise StoreError(f"run {run_id} is no longer in {self._where}")
            for kind in ("resource", "artifact"):
                if kind + "s" in changed:
                    table = _FILE_TABLES[kind]
                    conn.execute(table.delete().where(table.c.run_id == run_id))
                    rows = [
                        _hidden(_file_row(kind, run_id, f), self._secret)
                        for f in doc.get(kind + "s") or ()
                    ]
                    if rows:
                        conn.execute(table.insert(), rows)
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
        with self._lock, self._write(f"storing the {kind} {file.name!r}") as conn:
            stmt = _insert(self.engine)(blobs).values(md5=digest, size=len(data), content=data)
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["md5"]))
        return digest

    def append_metrics(self, run_id: Any, columns: dict[str, dict]) -> None:
        """One row a point, in one transaction."""
        ident = _int_id(run_id, self._where)
        rows = [
            (ident, str(name), step, value, t)
            for name, column in columns.items()
            for step, value, t in zip(
                column["steps"], map(_number, column["values"]), column["timestamps"]
            )
        ]
        if rows:
            with self._lock, self._write("storing metrics") as conn:
                # The driver's own executemany: SQLAlchemy's per-row work would cost more
                # than the database's for a batch of thousands of points.
                mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
                conn.exec_driver_sql(
                    f"INSERT INTO metrics (run_id, name, step, value, time) "
                    f"VALUES ({', '.join([mark] * 5)})",
                    rows,
                )

    # --- reading ---

    def summaries(self) -> list[dict]:
        """Every run's summary row, in id order."""
        columns = [runs.c[name] for name in _SUMMARY]
        with self._read("listing runs") as conn:
            rows = self._summary_rows(conn, sa.select(*columns).order_by(runs.c.id))
        return [_summary_doc(row) for row in rows]

    def select(self, query: Query) -> tuple[list[dict], bool]:
        """The query as SQL where it can be (see :func:`_conditions`); candidates otherwise."""
        dialect = self.engine.dialect.name
        conditions, exact = _conditions(query, dialect)
        order = _order(query, dialect) if exact else None
        stmt = sa.select(*(runs.c[name] for name in _SUMMARY)).where(*conditions)
        if order is None:
            stmt = stmt.order_by(runs.c.id)
        else:
            stmt = stmt.order_by(*order)
            if query.limit is not None:
                stmt = stmt.limit(query.limit)
        with self._read("selecting runs") as conn:
            rows = self._summary_rows(conn, stmt)
        return [_summary_doc(row) for row in rows], order is not None

    def load(self, run_id: Any) -> dict:
        """The run's row and its files' rows, as the layer's document."""
        ident = _lookup_id(run_id, self._where)
        with self._read(f"reading run {ident}") as conn:
            try:
                row = conn.execute(sa.select(runs).where(runs.c.id == ident)).first()
            except (ValueError, TypeError):  # a damaged value
                row = self._salvage(conn, ident, tuple(runs.c.keys()))
            if row is None:
                raise KeyError(f"no run {run_id!r} in {self._where}")
            files = {
                kind: conn.execute(
                    sa.select(table).where(table.c.run_id == ident).order_by(*table.primary_key)
                ).all()
                for kind, table in _FILE_TABLES.items()
            }
        doc = {field: getattr(row, field) for field in _COLUMNS}
        doc["_id"] = row.id
        doc["captured_out"] = row.captured_out or ""
        experiment = dict(row.experiment_info or {})
        experiment["name"] = row.experiment
        experiment["sources"] = [StoredFile(r.name, r.md5, r.md5) for r in files["source"]]
        doc["experiment"] = experiment
        doc["resources"] = [StoredFile(r.path, r.md5, r.md5) for r in files["resource"]]
        doc["artifacts"] = [
            StoredFile(r.name, r.md5, r.md5, r.metadata, r.content_type) for r in files["artifact"]
        ]
        return doc

    def load_metrics(self, run_id: Any) -> dict[str, dict]:
        """Every point of the run, in the order they were logged."""
        ident = _lookup_id(run_id, self._where)
        query = (
            sa.select(metrics.c.name, metrics.c.step, metrics.c.value, metrics.c.time)
            .where(metrics.c.run_id == ident)
            .order_by(metrics.c.id)
        )
        out: dict[str, dict] = {}
        with self._read(f"reading the metrics of run {ident}") as conn:
            for name, step, value, t in conn.execute(query):
                series = out.setdefault(name, {"steps": [], "values": [], "timestamps": []})
                series["steps"].append(step)
                series["values"].append(math.nan if value is None else value)
                series["timestamps"].append(t)
        return out

    def read_file(self, run_id: Any, kind: str, file: StoredFile) -> bytes:
        """A stored file's content, by its md5."""
        with self._read(f"reading the {kind} {file.name!r}") as conn:
            content = conn.execute(
                sa.select(blobs.c.content).where(blobs.c.md5 == file.ref)
            ).scalar()
        if content is None:
            raise StoreError(f"{kind} {file.name!r} is recorded but its content is not stored")
        return bytes(content)

    def delete(self, run_id: Any) -> None:
        """Remove the run's rows, and the contents no other run refers to."""
        ident = _lookup_id(run_id, self._where)
        with self._lock, self._write(f"deleting run {ident}") as conn:
            for table in (*_FILE_TABLES.values(), metrics):
                conn.execute(table.delete().where(table.c.run_id == ident))
            conn.execute(runs.delete().where(runs.c.id == ident))
            used = sa.union(*(sa.select(t.c.md5) for t in _FILE_TABLES.values()))
            conn.execute(blobs.delete().where(blobs.c.md5.not_in(used)))

    def ping(self) -> bool:
        """Whether the database answers now."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def close(self) -> None:
        """Close the connections."""
        self.engine.dispose()

    # --- helpers ---

    def _summary_rows(self, conn: sa.Connection, stmt: sa.Select) -> Sequence[Any]:
        """The rows of ``stmt``, a select of the summary columns; a run with a damaged
        value does not fail the listing, it is read as far as it can be."""
        try:
            return conn.execute(stmt).all()
        except (ValueError, TypeError):  # a damaged value: read the runs one at a time
            ids = conn.execute(stmt.with_only_columns(runs.c.id)).scalars().all()
            return [self._salvage(conn, ident, _SUMMARY) for ident in ids]

    def _salvage(self, conn: sa.Connection, ident: int, names: tuple[str, ...]) -> Any:
        """The run's row as far as its values can be read, column by column (``None`` for
        a value that cannot), each damaged value named in a warning."""
        values = {}
        for name in names:
            try:
                values[name] = conn.execute(
                    sa.select(runs.c[name]).where(runs.c.id == ident)
                ).scalar()
            except (ValueError, TypeError) as exc:
                log.warning("run %s in %s: its %s is damaged (%s)", ident, self._where, name, exc)
                values[name] = None
        return types.SimpleNamespace(**values)

    def _output(self, text: str) -> dict:
        """The update of ``captured_out``: appended to when it extends what is stored."""
        written, tail, secret = self._cout_len, self._cout_tail, self._secret
        if written and len(text) >= written and text[written - len(tail) : written] == tail:
            # Appended to, unless the password runs across the end of what is stored.
            if not secret or not _across(text, secret, written):
                new = _hidden(text[written:], secret)
                return {"captured_out": sa.func.coalesce(runs.c.captured_out, "") + new}
        return {"captured_out": _hidden(text, secret)}

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sa.Connection]:
        with self._errors(what):
            self._prepare()
            with self.engine.connect() as conn:
                conn.info["write"] = True  # SQLite: take the write lock at BEGIN
                with conn.begin():
                    yield conn

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[sa.Connection]:
        with self._errors(what):
            self._prepare()
            with self.engine.connect() as conn:
                yield conn

    def _prepare(self) -> None:
        """Create the tables on first use; refuse a database a newer expkit wrote."""
        if self._ready:
            return
        with self.engine.connect() as conn:
            conn.info["write"] = True
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # Concurrent CREATE TABLEs race in PostgreSQL's catalogs: one at a time.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7341020101)"))
                metadata.create_all(conn, checkfirst=True)
                version = conn.execute(sa.select(sa.func.max(schema.c.version))).scalar()
                if version is None:
                    conn.execute(schema.insert().values(version=SCHEMA_VERSION))
                elif version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self._where} holds schema version {version}, written by a newer "
                        f"expkit (this one knows {SCHEMA_VERSION}): upgrade expkit"
                    )
        self._ready = True

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
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
        cls, engine: sa.Engine, session: Any = None, priority: int = DEFAULT_SQL_PRIORITY
    ) -> SqlObserver:
        """An observer on an existing SQLAlchemy engine (``session`` is not used)."""
        self = cls.__new__(cls)
        url = engine.url.render_as_string(hide_password=False)
        StoreObserver.__init__(self, SqlStorage(url, engine=engine), priority=priority)
        return self


# --- the engine ----------------------------------------------------------------------------


def _engine(url: str, echo: bool) -> sa.Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(f"{redact_url(url)!r} is not an SQLAlchemy database URL") from None
    options: dict[str, Any] = {
        "echo": echo,
        "json_serializer": dumps,
        "json_deserializer": loads,
    }
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise UsageError(
                f"{redact_url(url)!r} names no database file: write sqlite:///runs.db "
                "(relative) or sqlite:////abs/path/runs.db"
            )
        path = os.path.abspath(database)  # the run may change its working directory
        os.makedirs(os.path.dirname(path), exist_ok=True)
        engine = sa.create_engine(
            parsed.set(database=path),
            connect_args={"timeout": _SQLITE_BUSY_MS / 1000},
            **options,
        )
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, from expkit[sql]
    try:
        return sa.create_engine(
            parsed,
            pool_pre_ping=True,  # a server restarted mid-run: reconnect, not fail
            connect_args={"connect_timeout": _CONNECT_TIMEOUT},
            **options,
        )
    except ImportError as exc:
        raise UsageError(
            f"the SQL store cannot reach {redact_url(url)!r}: {exc}; install expkit[sql]"
        ) from None


def _sqlite_connect(dbapi_connection: Any, record: Any) -> None:
    # SQLAlchemy emits BEGIN itself (below); the driver's own BEGIN would be deferred.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")  # readers never wait for writers
    cursor.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint, as WAL intends
    cursor.execute("PRAGMA wal_autocheckpoint = 16384")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # A deferred transaction that later writes can fail at once with "database is locked";
    # taking the lock at BEGIN makes writers queue behind the busy timeout instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")


def _insert(engine: sa.Engine) -> Any:
    return pg.insert if engine.dialect.name == "postgresql" else sqlite.insert


# --- queries ---------------------------------------------------------------------------------

# The run fields a filter names first (as expkit.runs.lookup has them), and their columns.
_RUN_FIELDS = {"id": runs.c.id, "experiment": runs.c.experiment, "status": runs.c.status,
               "command": runs.c.command}  # fmt: skip
_TIME_COLUMNS = {"start_time": runs.c.start_time, "stop_time": runs.c.stop_time,
                 "heartbeat": runs.c.heartbeat}  # fmt: skip
_SQL_OPS = {"==": "__eq__", "!=": "__ne__", "<": "__lt__", "<=": "__le__", ">": "__gt__",
            ">=": "__ge__"}  # fmt: skip


def _conditions(query: Query, dialect: str) -> tuple[list, bool]:
    """SQL conditions meaning what the core's filters mean, and whether they are all of them.

    A condition is pushed down only where SQL compares as Python does: numbers (bools as
    0 and 1) with numbers, text with text by code point, ids as numbers. Anything else
    (lists, dicts, None, keys through list items, probably-dead runs) stays with the core,
    which receives candidates instead.
    """
    conditions: list = []
    exact = True
    if query.experiment is not None:
        pattern = query.experiment
        if not any(c in pattern for c in "*?["):
            conditions.append(runs.c.experiment == pattern)
        elif "[" not in pattern:
            like = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = like.replace("*", "%").replace("?", "_")
            conditions.append(runs.c.experiment.like(like, escape="\\"))
        else:
            exact = False
    if query.statuses is not None:
        if "PROBABLY_DEAD" in query.statuses:
            exact = False
        else:
            conditions.append(runs.c.status.in_(sorted(query.statuses)))
    if query.since is not None:
        conditions.append(runs.c.start_time >= query.since)
    if query.until is not None:
        conditions.append(runs.c.start_time <= query.until)
    for where in query.where:
        condition = _filter(where, dialect)
        if condition is None:
            exact = False
        else:
            conditions.append(condition)
    return conditions, exact


def _filter(where: Any, dialect: str) -> Any:
    """One ``KEY OP VALUE`` filter as SQL, or ``None`` when SQL would not mean the same."""
    key, op, value = where.key, where.op, where.value
    first, _, rest = key.partition(".")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if first in _RUN_FIELDS:
        if rest:
            return sa.false()  # Python looks inside an id or a name and finds nothing
        column = _RUN_FIELDS[first]
        if first == "id":
            if isinstance(value, str):
                if not (value.isascii() and value.isdigit()):
                    return None
                value = int(value)
            return getattr(column, _SQL_OPS[op])(value)
        if not isinstance(value, str):
            return sa.true() if op == "!=" else sa.false()
        if first == "status":
            value = value.upper()
        compare = getattr(_codepoint(column, dialect), _SQL_OPS[op])(value)
        return sa.or_(column.is_(None), compare) if op == "!=" else compare
    if (first in _TIME_COLUMNS or first == "duration") and not rest:
        return None
    if first == "result":
        column, path = runs.c.result, rest.split(".") if rest else []
    elif first == "config" and rest:
        column, path = runs.c.config, rest.split(".")
    else:
        column, path = runs.c.config, key.split(".")
    if any(part.isdigit() for part in path):
        return None  # Python looks such a part up in a dict, or as a list index
    return _json_compare(column, path, op, value, dialect)


def _json_compare(column: Any, path: list[str], op: str, value: Any, dialect: str) -> Any:
    number = not isinstance(value, str)
    if dialect == "sqlite":
        where = "$" + "".join(f'."{p}"' for p in path) if path else "$"
        kind = sa.func.json_type(column, where)
        found = kind.is_not(None)
        if number:
            same_kind = kind.in_(["integer", "real", "true", "false"])
        else:
            same_kind = kind == "text"
        extracted = sa.func.json_extract(column, where)
    elif dialect == "postgresql":
        node = column.op("#>")(sa.literal(path, pg.ARRAY(sa.Text))) if path else column
        kind = sa.func.jsonb_typeof(node)
        found = node.is_not(None)
        text = node.op("#>>")(sa.literal([], pg.ARRAY(sa.Text)))
        if number:
            same_kind = kind.in_(["number", "boolean"])
            extracted = sa.case(
                (kind == "number", sa.cast(text, sa.Float)),
                (text == "true", sa.literal(1.0)),
                else_=sa.literal(0.0),
            )
        else:
            same_kind = kind == "string"
            extracted = sa.collate(text, "C")
    else:
        return None
    compare = getattr(extracted, _SQL_OPS[op])(value)
    if op == "!=":
        # Python: a value of another kind is unequal too, as long as the key is there.
        return sa.and_(found, sa.or_(sa.not_(same_kind), compare))
    return sa.and_(same_kind, compare)


def _codepoint(column: Any, dialect: str) -> Any:
    return sa.collate(column, "C") if dialect == "postgresql" else column


def _order(query: Query, dialect: str) -> list | None:
    """ORDER BY as the core sorts (missing values last, ties in id order), or ``None``."""
    key = query.sort
    if key is None:
        return [runs.c.id]
    if key == "id":
        return [runs.c.id.desc() if query.descending else runs.c.id]
    column = _TIME_COLUMNS.get(key)
    if column is None:
        return None
    return [column.is_(None), column.desc() if query.descending else column, runs.c.id]


# --- values --------------------------------------------------------------------------------

_TAIL = 1000  # characters remembered to check that new output extends the stored output


def dumps(value: Any) -> str:
    """JSON text of ``value``; non-finite floats as ``{"$float": ...}`` (see the module doc)."""
    data = to_data(value)
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_tag_floats(data), allow_nan=False, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """The inverse of :func:`dumps` (psycopg hands JSONB over as bytes)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")
    data = json.loads(text)
    return _untag_floats(data) if '"$float"' in text else data


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


def _row(doc: dict) -> dict:
    row = {field: _column(field, doc.get(field)) for field in _COLUMNS if field in doc}
    row.setdefault("format", FORMAT)
    row["captured_out"] = doc.get("captured_out") or ""
    return row


def _column(field: str, value: Any) -> Any:
    if field in ("start_time", "stop_time", "heartbeat"):
        return value
    if field in ("status", "command", "format"):
        return None if value is None else str(value)
    # A JSON column: what json would store, checked here so that a bad value fails clearly.
    return json.loads(dumps(value)) if value is not None else None


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


def _summary_doc(row: Any) -> dict:
    doc = {name: getattr(row, name) for name in _SUMMARY if name not in ("id", "experiment")}
    doc["_id"] = row.id
    doc["experiment"] = {"name": row.experiment}
    return doc


def _secret(url: sa.URL) -> str:
    """The password of the database URL: never written to the tables (see :func:`_hidden`)."""
    password = url.password or url.query.get("password") or ""
    password = password if isinstance(password, str) else ""
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


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's own message, first line, without the statement and its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return redact_url(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
