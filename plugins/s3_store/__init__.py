"""The S3 store: ``s3://BUCKET/PREFIX`` URLs, in Sacred's FileStorageObserver layout.

The layout and the code are in :mod:`expkit_plugins.s3_store.storage`, imported
(with boto3) only when a run or a reader uses an S3 store; install boto3 with
``expkit[s3]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expkit.observers import names_from
from expkit.pluginmanager import hookimpl

if TYPE_CHECKING:
    from expkit.store import Storage, StoreBackend

# ``from expkit_plugins.s3_store import S3Observer`` finds it in the storage module.
__getattr__ = names_from("expkit_plugins.s3_store.storage")


def _open(url: str) -> Storage:
    from expkit_plugins.s3_store.storage import S3Storage

    return S3Storage.from_url(url)


@hookimpl
def expkit_store_backends() -> list[StoreBackend]:
    """The S3 store claims ``s3://BUCKET/PREFIX``."""
    from expkit.store import StoreBackend  # not at import: a run without stores never needs it

    return [StoreBackend("s3", ("s3",), _open)]


@hookimpl
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import S3Observer``."""
    if name != "S3Observer":
        return None
    from expkit_plugins.s3_store.storage import S3Observer

    return S3Observer
