"""A local S3 service for the tests: moto's S3 server in a process of its own on 127.0.0.1.

The S3 store's tests reach it as they would reach AWS: real boto3 clients over a real
socket, in the test process and in the ``expkit`` processes it starts. Nothing goes to
the network. :meth:`MotoS3.stop` takes the server away (a run's store then fails) and
:meth:`MotoS3.start` brings it back on the same port, empty, as moto keeps everything
in memory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from sql_server import free_port

# The credentials every S3 test runs with: moto takes any; the secret must never be printed.
KEY_ID = "AKIAEXPKITTEST" + secrets.token_hex(3).upper()
SECRET = "expkit-test-secret-" + secrets.token_urlsafe(18)

# Variables through which the developer's own AWS setup could reach a test.
_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_CA_BUNDLE",
)
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")


def s3_environment(home: Path) -> dict[str, Any]:
    """The environment of a test that uses S3: the suite's credentials, no AWS config files,
    no instance metadata lookups, no proxies (``None`` removes a variable)."""
    env: dict[str, Any] = {name: None for name in (*_AWS_VARIABLES, *_PROXY_VARIABLES)}
    env.update(
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
    )
    return env


def client_for(url: str) -> Any:
    """A boto3 client of the server the store URL ``url`` names: what a user's own code sees."""
    import boto3

    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return boto3.client("s3", endpoint_url=query["endpoint_url"][0])


def object_key(url: str, name: str) -> tuple[str, str]:
    """The bucket and key of ``name`` (``"3/run.json"``) under the store URL ``url``."""
    parts = urllib.parse.urlsplit(url)
    return parts.netloc, "/".join(p for p in (parts.path.strip("/"), name) if p)


def stored_objects(url: str) -> dict[str, bytes]:
    """Every object of the store's bucket, by key."""
    bucket = urllib.parse.urlsplit(url).netloc
    client = client_for(url)
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            objects[item["Key"]] = body
    return objects


class MotoS3:
    """moto's S3 server as a child process on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The endpoint URL boto3 is given."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str, prefix: str = "runs") -> str:
        """The store URL of ``prefix`` in ``bucket`` on this server."""
        return f"s3://{bucket}/{prefix}?endpoint_url={self.endpoint}"

    def start(self, timeout: float = 30.0) -> MotoS3:
        """Start the server (again, on the same port) and wait until it answers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto's S3 server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Take the server away, with everything it stored."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    @property
    def running(self) -> bool:
        """Whether the server process is up."""
        return self.proc is not None and self.proc.poll() is None

    def answers(self) -> bool:
        """Whether the server answers HTTP now."""
        try:
            with _opener.open(f"{self.endpoint}/moto-api/data.json", timeout=1):
                return True
        except OSError:
            return False

    def reset(self) -> None:
        """Forget every bucket (between tests, so that the server's memory stays small)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with contextlib.suppress(OSError), _opener.open(request, timeout=10):
            pass

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Straight to 127.0.0.1, whatever proxy the environment names.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
