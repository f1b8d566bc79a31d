"""The core's run filters and orders as SQL, where SQL means the same."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from expkit.store import Query
from expkit_plugins.sql_store.databases import TIME_COLUMNS

# The run fields a filter names first (as expkit.runs.lookup has them) that are columns.
_RUN_FIELDS = ("id", "experiment", "status", "command")
_SQL_OPS = {"==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def where_clause(
    query: Query, dialect: str, time_param: Callable[[Any], Any]
) -> tuple[list[str], list[Any], bool]:
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
            marks = ", ".join("?" * len(statuses))
            conditions.append(f"status IN ({marks})" if statuses else "FALSE")
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
    if (first in TIME_COLUMNS or first == "duration") and not rest:
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
        # A run's result is always there (a run without one has None).
        found = (
            f"{kind} IS NULL OR" if column == "result" and not path else f"{kind} IS NOT NULL AND"
        )
        return (
            f"({found} (NOT ({kind} {same_kind}) OR {compare}))",
            [*kind_params, *kind_params, *compare_params],
        )
    return f"({kind} {same_kind} AND {compare})", [*kind_params, *compare_params]


def _codepoint(dialect: str) -> str:
    return ' COLLATE "C"' if dialect == "postgresql" else ""


def order_by(query: Query) -> str | None:
    """ORDER BY as the core sorts (missing values last, ties in id order), or ``None``."""
    key = query.sort
    if key is None:
        return "id"
    if key == "id":
        return "id DESC" if query.descending else "id"
    if key not in TIME_COLUMNS:
        return None
    return f"{key} IS NULL, {key}{' DESC' if query.descending else ''}, id"
