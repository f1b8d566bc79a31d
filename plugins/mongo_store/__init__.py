"""The MongoDB store: ``mongodb://`` and ``mongodb+srv://`` URLs, in Sacred's MongoObserver schema.

The schema and the code are in :mod:`expkit_plugins.mongo_store.storage`, imported
(with pymongo) only when a run or a reader uses a MongoDB store; install pymongo
with ``expkit[mongo]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expkit.observers import names_from
from expkit.pluginmanager import hookimpl

if TYPE_CHECKING:
    from expkit.store import Storage, StoreBackend

# ``from expkit_plugins.mongo_store import MongoObserver`` finds it in the storage module.
__getattr__ = names_from("expkit_plugins.mongo_store.storage")


def _open(url: str) -> Storage:
    from expkit_plugins.mongo_store.storage import MongoStorage

    return MongoStorage.connect(url)


@hookimpl
def expkit_store_backends() -> list[StoreBackend]:
    """The MongoDB store claims ``mongodb://`` and ``mongodb+srv://``."""
    from expkit.store import StoreBackend  # not at import: a run without stores never needs it

    return [StoreBackend("mongodb", ("mongodb", "mongodb+srv"), _open)]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``MongoObserver`` and ``QueuedMongoObserver`` for ``from expkit.observers import ...``."""
    return __getattr__(name) if name in ("MongoObserver", "QueuedMongoObserver") else None
