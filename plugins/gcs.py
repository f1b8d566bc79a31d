"""``GoogleCloudStorageObserver``: not provided; importing it says what to use instead."""

from __future__ import annotations

from expkit.pluginmanager import hookimpl

INSTEAD = (
    "expkit has no GoogleCloudStorageObserver. Use S3Observer against Google Cloud "
    "Storage's S3-compatible XML API (endpoint https://storage.googleapis.com with HMAC "
    "keys), or a FileStorageObserver on the bucket mounted with gcsfuse: both keep the "
    "layout Sacred's GCS observer wrote (<basedir>/<id>/run.json, ...)"
)


# Last: a third-party plugin that does provide a GoogleCloudStorageObserver wins.
@hookimpl(trylast=True)
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import GoogleCloudStorageObserver`` fails with what to use."""
    if name == "GoogleCloudStorageObserver":
        raise ImportError(INSTEAD)
    return None
