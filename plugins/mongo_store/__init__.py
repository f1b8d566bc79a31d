"""The MongoDB store: ``mongodb://`` and ``mongodb+srv://`` URLs, in Sacred's MongoObserver schema.

The schema and the code are in :mod:`expkit_plugins.mongo_store.storage`, imported
only when a run or a reader uses a MongoDB store (and pymongo only then).
"""

from __future__ import annotations

from typing import Any

from expkit.pluginmanager import hookimpl
from expkit.store import Storage, StoreBackend

_STORAGE = "expkit_plugins.mongo_store.storage"


def _open(url: str) -> Storage:
    from expkit_plugins.mongo_store.storage import MongoStorage

    return MongoStorage.connect(url)


def _redact(url: str) -> str:
    from expkit_plugins.mongo_store.storage import redact_url

    return redact_url(url)


@hookimpl
def expkit_store_backends() -> list[StoreBackend]:
    """The MongoDB store claims ``mongodb://`` and ``mongodb+srv://``."""
    return [StoreBackend("mongodb", ("mongodb", "mongodb+srv"), _open, _redact)]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``MongoObserver`` for ``from expkit.observers import MongoObserver``."""
    return __getattr__(name) if name == "MongoObserver" else None


def __getattr__(name: str) -> Any:
    # ``from expkit_plugins.mongo_store import MongoObserver`` keeps working.
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_STORAGE), name)
