"""The SQL store: runs in SQLite (``sqlite:///runs.db``) or PostgreSQL (``postgresql://...``).

The URLs are SQLAlchemy's, as Sacred's ``SqlObserver`` takes them. The code is in
:mod:`expkit_plugins.sql_store.storage`, imported only when a run or a reader uses an
SQL store; SQLAlchemy (``expkit[sql]``) only for PostgreSQL and for the tables of a new
SQLite file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expkit.observers import names_from
from expkit.pluginmanager import hookimpl

if TYPE_CHECKING:
    from expkit.store import Storage, StoreBackend

# ``from expkit_plugins.sql_store import SqlObserver`` finds it in the storage module.
__getattr__ = names_from("expkit_plugins.sql_store.storage")


def _open(url: str) -> Storage:
    from expkit_plugins.sql_store.storage import SqlStorage

    return SqlStorage(url)


@hookimpl
def expkit_store_backends() -> list[StoreBackend]:
    """The SQL store claims ``sqlite://`` and ``postgresql://`` (with any ``+driver``)."""
    from expkit.store import StoreBackend  # not at import: a run without stores never needs it

    return [StoreBackend("sql", ("sqlite", "postgresql"), _open)]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import SqlObserver``."""
    if name != "SqlObserver":
        return None
    from expkit_plugins.sql_store.storage import SqlObserver

    return SqlObserver
