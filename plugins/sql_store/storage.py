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

The statements are plain SQL that both databases take, with a few pieces per
dialect (:mod:`expkit_plugins.sql_store.query` turns filters into SQL).
:mod:`expkit_plugins.sql_store.databases` runs them: SQLite through Python's own
``sqlite3``, so that a run or a listing on an existing database does without
SQLAlchemy (its import alone, 0.23 s, takes longer than a whole run without a
store); PostgreSQL through SQLAlchemy's engine. SQLite runs in WAL mode and takes
its write lock at the start of every write transaction, so many processes can
record into one file at once.

Run ids are whole numbers the database hands out. JSON columns hold standard
JSON: a non-finite float is kept as ``{"$float": "nan"}`` (SQLite's and
PostgreSQL's JSON functions refuse ``NaN``) and read back as the float.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from expkit.errors import UsageError
from expkit.serialize import to_data
from expkit.store import NoStoreError, Query, Storage, StoredFile, StoreError, StoreObserver
from expkit.utils import redact_url
from expkit_plugins.sql_store.databases import (
    JSON_COLUMNS,
    NEEDS_SQLALCHEMY,
    TIME_COLUMNS,
    json_text,
    open_database,
)
from expkit_plugins.sql_store.query import order_by, where_clause

log = logging.getLogger("expkit")

SCHEMA_VERSION = 1
FORMAT = "SqlStore-expkit-1"
DEFAULT_SQL_PRIORITY = 40  # Sacred's

_FILE_TABLES = {"source": "sources", "resource": "resources", "artifact": "artifacts"}
_RUN_TABLES = (*_FILE_TABLES.values(), "metrics")  # the tables with rows of a run's own
# The document's fields kept in a column of their own name in ``runs``.
_COLUMNS = ("status", "command", "start_time", "stop_time", "heartbeat", "format", "config",
            "result", "meta", "host", "info", "fail_trace")  # fmt: skip
_RUN = ("id", "experiment", *_COLUMNS, "experiment_info", "captured_out")
# A listing's columns, unpacked in this order by ``_summary_docs``.
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

    def __init__(self, url: str, echo: bool = False, engine: Any = None) -> None:
        self.url = url
        self._where = redact_url(url)
        self._db = open_database(url, echo, engine)
        self._listed = ", ".join(self._db.listed_meta if c == "meta" else c for c in _SUMMARY)
        self._secret = _secret(self._db.password)
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
                run_id = tx.insert(self._insert("runs", row), row.values())
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
                    sets = ", ".join(self._assignments(row))
                    tx.run(f"UPDATE runs SET {sets} WHERE id = ?", (*row.values(), run_id))
                    for table in _RUN_TABLES:
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
        sets = self._assignments(row)
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
                _numbers(column["values"], f"run {ident} in {self._where}, metric {name!r}"),
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
            rows = tx.rows(f"SELECT {self._listed} FROM runs ORDER BY id")
        return self._summary_docs(rows)

    def select(self, query: Query) -> tuple[list[dict], bool]:
        """The query as SQL where it can be (see :func:`where_clause`); candidates otherwise."""
        dialect = self._db.name
        conditions, params, exact = where_clause(query, dialect, self._db.time_param)
        order = order_by(query) if exact else None
        sql = f"SELECT {self._listed} FROM runs"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        sql += f" ORDER BY {order or 'id'}"
        if order is not None and query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        with self._read("selecting runs") as tx:
            rows = tx.rows(sql, params)
        return self._summary_docs(rows), order is not None

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
            for table in _RUN_TABLES:
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
            if name in JSON_COLUMNS:
                value = json_text(value)  # None as JSON's null, as SQLAlchemy wrote it
            elif name in TIME_COLUMNS:
                value = self._db.time_param(value)
            cells[name] = value
        return cells

    def _insert(self, table: str, row: dict) -> str:
        marks = ", ".join(self._db.mark(name) for name in row)
        return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})"

    def _assignments(self, row: dict) -> list[str]:
        return [f"{name} = {self._db.mark(name)}" for name in row]

    def _decoded(self, names: Sequence[str], row: Sequence[Any]) -> dict:
        """A row of ``runs`` as Python values; a damaged value is ``None``, and named in a
        warning, so that one damaged run does not hide the others."""
        db = self._db
        out = dict(zip(names, row))
        for name in names:
            value = out[name]
            if value is None or not (name in JSON_COLUMNS or name in TIME_COLUMNS):
                continue
            try:
                out[name] = db.json_value(value) if name in JSON_COLUMNS else db.time_value(value)
            except (ValueError, TypeError) as exc:
                log.warning(
                    "run %s in %s: its %s is damaged (%s)", out.get("id"), self._where, name, exc
                )
                out[name] = None
        return out

    def _summary_docs(self, rows: Sequence[Sequence[Any]]) -> list[dict]:
        """Rows of ``_SUMMARY`` as the layer's summary documents.

        Listing decodes thousands of rows: each is decoded in one go, and only a row with
        a damaged value goes through :meth:`_decoded`, which names the value.
        """
        json_value, time_value = self._db.json_value, self._db.time_value
        docs = []
        for row in rows:
            ident, name, status, command, start, stop, beat, config, result, meta = row
            try:
                doc = {
                    "_id": ident,
                    "experiment": {"name": name},
                    "status": status,
                    "command": command,
                    "start_time": None if start is None else time_value(start),
                    "stop_time": None if stop is None else time_value(stop),
                    "heartbeat": None if beat is None else time_value(beat),
                    "config": json_value(config),
                    "result": json_value(result),
                    "meta": json_value(meta),
                }
            except (ValueError, TypeError):
                decoded = self._decoded(_SUMMARY, row)
                doc = {column: decoded[column] for column in _SUMMARY[2:]}
                doc.update(_id=decoded["id"], experiment={"name": decoded["experiment"]})
            docs.append(doc)
        return docs

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
            self._prepare(reading=True)
            with self._db.transaction(write=False) as tx:
                yield tx

    def _prepare(self, reading: bool = False) -> None:
        """Create the tables on first use; refuse a database a newer expkit wrote.

        Reading creates no database file, and leaves a database of Sacred's SqlObserver
        as it is: its tables are not expkit's, and a listing would call it empty.
        """
        if self._ready:
            return
        db = self._db
        if reading and db.name == "sqlite" and not os.path.exists(db.path):
            raise NoStoreError(f"no SQLite database at {db.path!r}: the file does not exist")
        with db.transaction(write=False) as tx:
            version = db.schema_version(tx)
            sacred = reading and version is None and db.has_table(tx, "run")
        if sacred:
            raise StoreError(
                f"{self._where} holds the tables of Sacred's SqlObserver (run, experiment, "
                "...), which expkit does not read: its SQL store keeps runs in tables of "
                "its own"
            )
        if version is None:
            with db.transaction(write=True) as tx:
                if db.name == "postgresql":
                    # Concurrent CREATE TABLEs race in PostgreSQL's catalogs: one at a time.
                    tx.run("SELECT pg_advisory_xact_lock(7341020101)")
                version = db.schema_version(tx)
                if version is None:
                    for statement in _create_statements(db.name):
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
        """An observer on the database of an SQLAlchemy engine (``session`` is not used)."""
        self = cls.__new__(cls)
        url = engine.url.render_as_string(hide_password=False)
        StoreObserver.__init__(self, SqlStorage(url, engine=engine), priority=priority)
        return self


def _create_statements(dialect: str) -> list[str]:
    try:
        from expkit_plugins.sql_store.schema import create_statements
    except ImportError:
        raise UsageError(NEEDS_SQLALCHEMY) from None
    return create_statements(dialect)


# --- values --------------------------------------------------------------------------------

_TAIL = 1000  # characters remembered to check that new output extends the stored output


def _column(field: str, value: Any) -> Any:
    if field in TIME_COLUMNS:
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


def _secret(password: str) -> str:
    """The password of the database URL: never written to the tables (see :func:`_hidden`)."""
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


def _numbers(values: list, what: str) -> list:
    """Metric values as the float column holds them (see :func:`_number`); a value that is
    no number (text a run Sacred recorded logged, synced here) is named in a warning."""
    if set(map(type, values)) == {float}:
        total = sum(values)
        if total == total:  # no NaN among them: the values as they are
            return values
    numbers = list(map(_number, values))
    lost = [v for v, n in zip(values, numbers) if n is None and not _is_nan(v)]
    if lost:
        log.warning(
            "%s: %d value(s) that are no number, such as %r, kept as NaN (an SQL store keeps "
            "numbers; a file or TinyDB store keeps them as they are)",
            what,
            len(lost),
            lost[0],
        )
    return numbers


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


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
