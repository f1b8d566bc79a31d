"""Shared fixtures of the test suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from http_server import RecordingServer
    from mongo_server import MemoryMongo


@pytest.fixture(autouse=True)
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's spool folder, ``tmp_path/spool`` (not made yet), set as ``EXPKIT_SPOOL``."""
    # Events of failing stores are spooled; tests must not leave them in the working directory.
    folder = tmp_path / "spool"
    monkeypatch.setenv("EXPKIT_SPOOL", str(folder))
    return folder


# --- MongoDB: the in-memory server of mongo_server.py, or EXPKIT_TEST_MONGO_URL's ---------


def _with_db(url: str, db: str) -> str:
    """``url`` pointing at database ``db``, still authenticating where it did before."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    hosts, _, old_db = rest.partition("/")
    options = [o for o in query.split("&") if o]
    if not any(o.lower().startswith("authsource=") for o in options) and "@" in hosts:
        options.append(f"authSource={old_db or 'admin'}")
    return f"{scheme}://{hosts}/{db}" + ("?" + "&".join(options) if options else "")


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MemoryMongo | None]:
    """The in-memory MongoDB with one user, or None when EXPKIT_TEST_MONGO_URL names a server."""
    pytest.importorskip("pymongo")
    if os.environ.get("EXPKIT_TEST_MONGO_URL"):
        yield None
        return
    pytest.importorskip("mockupdb")
    from mongo_server import PASSWORD, USER, MemoryMongo

    with MemoryMongo(users={USER: PASSWORD}) as server:
        yield server


@pytest.fixture
def memory_mongo(mongo_server: MemoryMongo | None) -> MemoryMongo:
    """The in-memory server itself, for tests that take it away or look inside it."""
    if mongo_server is None:
        pytest.skip(
            "needs the in-memory server of tests/mongo_server.py, not EXPKIT_TEST_MONGO_URL"
        )
    return mongo_server


@pytest.fixture
def mongo_url(mongo_server: MemoryMongo | None) -> Iterator[str]:
    """The URL (with a password on the in-memory server) of a fresh database, dropped after."""
    import pymongo

    db = f"expkit_test_{uuid.uuid4().hex[:12]}"
    if mongo_server is None:
        url = _with_db(os.environ["EXPKIT_TEST_MONGO_URL"], db)
    else:
        from mongo_server import PASSWORD, USER

        mongo_server.log.clear()  # the log holds this test's commands only
        url = mongo_server.url(db, USER, PASSWORD)
    yield url
    if mongo_server is not None:
        mongo_server.down = False  # a test that took the server away gives it back
    with pymongo.MongoClient(url, serverSelectionTimeoutMS=5000) as client:
        client.drop_database(db)


@pytest.fixture
def mongo_db(mongo_url: str) -> Iterator[Any]:
    """The test database, through a client of its own (what a reader such as Omniboard sees)."""
    import pymongo

    client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    yield client.get_default_database()
    client.close()


# --- HTTP: a local server standing in for Slack's and Telegram's APIs ---------------------


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingServer]:
    """A real HTTP server on a free port of 127.0.0.1 that records every request."""
    from http_server import RecordingServer

    # Reached directly, whatever proxy the machine's environment names.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = RecordingServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
