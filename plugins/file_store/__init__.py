"""The file store: ``file://PATH`` and plain paths, in Sacred's FileStorageObserver layout.

The layout and the code are in :mod:`expkit_plugins.file_store.storage`, imported
only when a run or a reader uses a file store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from expkit.errors import UsageError
from expkit.pluginmanager import hookimpl

if TYPE_CHECKING:
    from expkit.store import Storage, StoreBackend


def folder_of(url: str) -> str | None:
    """The folder of ``file://PATH`` or of a plain path; ``None`` for other schemes."""
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path:
            raise UsageError(f"store URL {url!r} names no folder: write file://PATH")
        return path
    if "://" in url:
        return None
    if not url:
        raise UsageError("store path is empty: give a folder or file://PATH")
    return url


def _open(url: str) -> Storage:
    from expkit_plugins.file_store.storage import FileStorage

    return FileStorage(folder_of(url) or url, url=url)


@hookimpl
def expkit_store_backends() -> list[StoreBackend]:
    """The file store claims ``file://PATH`` and plain paths."""
    from expkit.store import StoreBackend  # not at import: a run without stores never needs it

    return [StoreBackend("file", ("", "file"), _open)]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import FileStorageObserver``."""
    if name != "FileStorageObserver":
        return None
    from expkit_plugins.file_store.storage import FileStorageObserver

    return FileStorageObserver


def __getattr__(name: str) -> Any:
    # ``from expkit_plugins.file_store import FileStorageObserver`` keeps working.
    if name.startswith("__"):
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module("expkit_plugins.file_store.storage"), name)
