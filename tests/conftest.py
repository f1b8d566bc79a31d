"""Shared fixtures of the test suite."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from http_server import RecordingServer
    from mongo_server import MemoryMongo
    from s3_server import MotoS3
    from sql_server import PostgresServer


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


# --- PostgreSQL: a throwaway cluster of sql_server.py, or EXPKIT_TEST_POSTGRES_URL's -----------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    """The suite's own PostgreSQL cluster, or None when EXPKIT_TEST_POSTGRES_URL names a server."""
    pytest.importorskip("psycopg")
    if os.environ.get("EXPKIT_TEST_POSTGRES_URL"):
        yield None
        return
    from sql_server import PostgresServer, find_binaries

    bindir = find_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql)")
    with PostgresServer(bindir) as server:
        yield server


@pytest.fixture
def local_postgres(postgres_server: PostgresServer | None) -> PostgresServer:
    """The suite's own cluster, for tests that stop it or read its files."""
    if postgres_server is None:
        pytest.skip("needs the cluster of tests/sql_server.py, not EXPKIT_TEST_POSTGRES_URL")
    return postgres_server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer | None) -> Iterator[str]:
    """The URL (with a password) of a fresh database, dropped after the test."""
    with _postgres_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url(postgres_server: PostgresServer | None) -> Iterator[str]:
    """The URL of a fresh database that the tests of one module share."""
    with _postgres_database(postgres_server) as url:
        yield url


@contextlib.contextmanager
def _postgres_database(postgres_server: PostgresServer | None) -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    if postgres_server is None:
        server_url = make_url(os.environ["EXPKIT_TEST_POSTGRES_URL"])
    else:
        server_url = make_url(postgres_server.url())
    db = f"expkit_test_{uuid.uuid4().hex[:12]}"
    admin = server_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        # Copying the template's files is much faster than logging them (PostgreSQL 15+).
        quick = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
        conn.execute(f"CREATE DATABASE {db}{quick}")
    yield server_url.set(database=db).render_as_string(hide_password=False)
    if postgres_server is not None and not postgres_server.running:
        postgres_server.resume()  # a test that stopped the server gives it back
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


# --- S3: moto's S3 server in a process of its own (tests/s3_server.py) ------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """The suite's local S3 service on 127.0.0.1."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    from s3_server import MotoS3

    with MotoS3() as server:
        yield server


@pytest.fixture
def s3_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's S3 credentials in the environment (children inherit them); no AWS config
    of the developer's, no proxies."""
    from s3_server import s3_environment

    for name, value in s3_environment(tmp_path).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.fixture
def s3_url(s3_server: MotoS3, s3_env: None) -> Iterator[str]:
    """The store URL of a new bucket (created by the store's first run) on the local server."""
    yield s3_server.url(f"expkit-test-{uuid.uuid4().hex[:12]}")
    if not s3_server.running:
        s3_server.start()  # a test that took the server away gives it back
    s3_server.reset()
