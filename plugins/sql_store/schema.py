"""The SQL store's tables, declared once with SQLAlchemy Core.

SQLAlchemy is imported only to create the tables of a new database (and by a
PostgreSQL store, which connects through it): the statements of a run and of a
listing are plain SQL (:mod:`expkit_plugins.sql_store.storage`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, CreateTable


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


def create_statements(dialect: str) -> list[str]:
    """``CREATE ... IF NOT EXISTS`` for every table and index, in ``dialect``'s SQL."""
    compiler = sqlite.dialect() if dialect == "sqlite" else pg.dialect()
    statements = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table, if_not_exists=True).compile(dialect=compiler)))
        for index in sorted(table.indexes, key=lambda index: str(index.name)):
            create = CreateIndex(index, if_not_exists=True)
            statements.append(str(create.compile(dialect=compiler)))
    return [statement.strip() for statement in statements]
