"""A throwaway PostgreSQL cluster for the tests, in a temporary folder on a loopback port.

:class:`PostgresServer` runs the machine's own PostgreSQL binaries (``initdb``,
``pg_ctl``): a new cluster with durability turned off (the tests' data is thrown
away), TCP on ``127.0.0.1`` only with password authentication (SCRAM-SHA-256),
and one login role, :data:`USER` with :data:`PASSWORD`, that may create
databases, so that every URL a test uses carries a password a test can look for.
The superuser ``postgres`` logs in only through the cluster's own Unix socket.

``initdb`` refuses to run as root, and the tests run as root in CI: there every
server command runs as the ``postgres`` user (``runuser -u postgres --``) in a
folder that user owns. As any other user the commands run directly.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

# The login role of the suite's cluster: every URL of it carries this password.
USER, PASSWORD = "expkit", "pg-Yh4tQ9wLp2"
_SERVER_USER = "postgres"
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    # Thrown away after the session: no need to reach the disk.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Fifty concurrent runs, each with a connection or two, plus the tests' own.
    "max_connections": "300",
    "shared_buffers": "32MB",
}
_INITDB_OPTIONS = (
    f"--username={_SERVER_USER} --encoding=UTF8 --locale=C --no-sync "
    "--auth-local=trust --auth-host=scram-sha-256"
).split()


def find_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on ``PATH``, else the newest Debian install."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    versions = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    versions.sort(key=lambda bindir: int(bindir.parent.name) if bindir.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """A PostgreSQL cluster of its own in a temporary folder, for one test session."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="expkit-postgres-"))
        self.data = self.root / "data"
        self.port = 0
        self._as_server_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root needs runuser (util-linux) to start PostgreSQL")
            # initdb refuses root: the cluster belongs to the postgres user.
            try:
                shutil.chown(self.root, user=_SERVER_USER, group=_SERVER_USER)
            except LookupError:
                raise RuntimeError(
                    f"running as root needs the user {_SERVER_USER!r} (Debian's postgresql "
                    "package makes it) to own the test cluster"
                ) from None
            self._as_server_user = ["runuser", "-u", _SERVER_USER, "--"]

    # --- life cycle ------------------------------------------------------------

    def start(self) -> PostgresServer:
        """Make the cluster, start it and create the login role; returns ``self``."""
        self._server_command("initdb", "--pgdata", str(self.data), *_INITDB_OPTIONS)
        settings = "".join(f"{key} = '{value}'\n" for key, value in _SETTINGS.items())
        settings += f"unix_socket_directories = '{self.root}'\n"
        for attempt in range(3):
            # Another process may take the free port before the server binds it: try another.
            self.port = free_port()
            with open(self.data / "postgresql.conf", "a", encoding="utf-8") as f:
                f.write(f"{settings}port = {self.port}\n")  # the last setting of a name wins
            try:
                self.resume()
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
        with self.admin() as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        return self

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl stop -m fast``): clients are cut off."""
        self._server_command("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))

    def resume(self) -> None:
        """Start the (stopped) server again on its port and wait until it answers."""
        log = str(self.root / "server.log")
        self._server_command("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", log)

    @property
    def running(self) -> bool:
        """Whether the server runs (was started and not stopped)."""
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        """Stop the server if it runs and remove its folder."""
        if self.running:
            try:
                self.stop()
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- use -------------------------------------------------------------------

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        """A ``postgresql://`` URL of the login role, with its password, for ``database``."""
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str = "postgres") -> Any:
        """A connection of the superuser through the cluster's Unix socket, in autocommit."""
        import psycopg

        return psycopg.connect(
            host=str(self.root),
            port=self.port,
            user=_SERVER_USER,
            dbname=database,
            autocommit=True,
        )

    def log(self) -> str:
        """What the server wrote to its log."""
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _server_command(self, name: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_server_user, str(self.bindir / name), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(
                done.returncode, [name, *args], done.stdout, done.stderr + self.log()[-2000:]
            )


def tables_text(url: str) -> str:
    """Every row of every table of the PostgreSQL database at ``url``, as text."""
    import psycopg

    with psycopg.connect(url) as conn:
        query = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        tables = [name for (name,) in conn.execute(query)]
        rows = [conn.execute(f"SELECT t::text FROM {table} t").fetchall() for table in tables]
    return "\n".join(str(text) for part in rows for (text,) in part)


def password_of(url: str) -> str:
    """The password in a database URL (percent-decoded), or ``""``."""
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(url).password or "")
