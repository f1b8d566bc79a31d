"""The TinyDB store: ``tinydb://PATH`` (a folder) or ``tinydb://PATH/NAME.json``.

Runs are Sacred's TinyDbObserver documents in one JSON file; the format and the
code are in :mod:`expkit_plugins.tinydb_store.storage`, imported only when a run
or a reader uses a TinyDB store.
"""

from __future__ import annotations

from typing import Any

from expkit.pluginmanager import hookimpl
from expkit.store import Storage, StoreBackend

_STORAGE = "expkit_plugins.tinydb_store.storage"


def _open(url: str) -> Storage:
    from expkit_plugins.tinydb_store.storage import TinyDbStorage

    return TinyDbStorage.from_url(url)


@hookimpl
def expkit_store_backends() -> list[StoreBackend]:
    """The TinyDB store claims ``tinydb://``."""
    return [StoreBackend("tinydb", ("tinydb",), _open)]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``TinyDbObserver`` and ``TinyDbReader`` for ``from expkit.observers import ...``."""
    if name not in ("TinyDbObserver", "TinyDbReader"):
        return None
    return __getattr__(name)


def __getattr__(name: str) -> Any:
    # ``from expkit_plugins.tinydb_store import TinyDbObserver`` keeps working.
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_STORAGE), name)
