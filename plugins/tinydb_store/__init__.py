"""The TinyDB store: ``tinydb://PATH`` (a folder) or ``tinydb://PATH/NAME.json``.

Runs are Sacred's TinyDbObserver documents in one JSON file; the format and the
code are in :mod:`expkit_plugins.tinydb_store.storage`, imported only when a run
or a reader uses a TinyDB store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expkit.observers import names_from
from expkit.pluginmanager import hookimpl

if TYPE_CHECKING:
    from expkit.store import Storage, StoreBackend

# ``from expkit_plugins.tinydb_store import TinyDbObserver`` finds it in the storage module.
__getattr__ = names_from("expkit_plugins.tinydb_store.storage")


def _open(url: str) -> Storage:
    from expkit_plugins.tinydb_store.storage import TinyDbStorage

    return TinyDbStorage.from_url(url)


@hookimpl
def expkit_store_backends() -> list[StoreBackend]:
    """The TinyDB store claims ``tinydb://``."""
    from expkit.store import StoreBackend  # not at import: a run without stores never needs it

    return [StoreBackend("tinydb", ("tinydb",), _open)]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``TinyDbObserver`` and ``TinyDbReader`` for ``from expkit.observers import ...``."""
    return __getattr__(name) if name in ("TinyDbObserver", "TinyDbReader") else None
