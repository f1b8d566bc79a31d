"""``GoogleCloudStorageObserver``: not provided; importing it says what to use instead."""

from __future__ import annotations

from expkit.pluginmanager import hookimpl

INSTEAD = (
    "expkit has no GoogleCloudStorageObserver. Use S3Observer or the S3 store (expkit[s3]) "
    "against Google Cloud Storage's S3-compatible XML API, with an HMAC key in "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: --store "
    "'s3://BUCKET/PATH?endpoint_url=https://storage.googleapis.com', or S3Observer(BUCKET, "
    "PATH) with AWS_ENDPOINT_URL=https://storage.googleapis.com; or a FileStorageObserver on "
    "the bucket mounted with gcsfuse. Both keep the layout Sacred's GCS observer wrote "
    "(<basedir>/<id>/run.json, ...)"
)


# Last: a third-party plugin that does provide a GoogleCloudStorageObserver wins.
@hookimpl(trylast=True)
def expkit_observer_class(name: str) -> type | None:
    """``from expkit.observers import GoogleCloudStorageObserver`` fails with what to use."""
    if name == "GoogleCloudStorageObserver":
        raise ImportError(INSTEAD)
    return None
