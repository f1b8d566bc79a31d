"""Shared by the web view's tests: the real ``expkit ui`` in a child process, and stores of
real runs to show."""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import select
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cli_helpers import EXPKIT, child_env

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(2)</script>"


class UiServer:
    """``expkit ui ARGS --port 0`` as a child process, and plain HTTP requests to it."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.cwd = cwd
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.url = ""
        self.token = ""

    def __enter__(self) -> UiServer:
        self.proc = subprocess.Popen(
            [EXPKIT, "ui", *self.args, "--port", "0"],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(**self.env),
        )
        fd = self.proc.stdout.fileno()
        pending = b""
        deadline = time.monotonic() + 60
        while not self.url:
            ready, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                self.proc.kill()
                _, err = self.proc.communicate()
                raise RuntimeError(f"expkit ui did not start: {self.lines} {err.decode()}")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode()
                self.lines.append(text)
                found = re.search(r"http://127\.0\.0\.1:\d+/(\?token=\S+)?", text)
                if found and not self.url:
                    self.url = found.group(0).split("?")[0].rstrip("/")
                    self.token = (found.group(1) or "").removeprefix("?token=")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> tuple[int, str, str]:
        """Ctrl-C the server; its exit code and the rest of its output."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(), err.decode()

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; status, headers (lower-case names) and body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = None if body is None else json.dumps(body).encode()
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()

    def get_json(self, path: str, **headers: str) -> Any:
        """The JSON of a GET that must succeed."""
        status, _, body = self.request("GET", path, headers=headers)
        assert status == 200, (status, body[:500])
        return json.loads(body)

    def write_headers(self) -> dict[str, str]:
        """What the page's own script sends with a change: its origin and token."""
        return {"Origin": f"http://127.0.0.1:{self.port}", "X-Expkit-Token": self.page_token()}

    def page_token(self) -> str:
        """The token a page carries (in its ``<meta name="expkit-token">``)."""
        status, _, body = self.request("GET", "/", headers=self._auth())
        assert status == 200, status
        found = re.search(rb'name="expkit-token" content="([^"]+)"', body)
        assert found is not None
        return found.group(1).decode()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}


def png_bytes(width: int = 160, height: int = 96) -> bytes:
    """A real PNG image: a blue-to-red gradient."""
    rows = b"".join(
        b"\0"
        + b"".join(
            bytes((int(255 * x / width), 60, 255 - int(255 * x / width))) for x in range(width)
        )
        for _ in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def make_runs(store: Path, work: Path) -> dict[str, Any]:
    """A file store of real runs: plain ones with metrics and artifacts, a failed one, a
    sweep of three points, a study of four trials; the ids by role."""
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    work.mkdir(parents=True, exist_ok=True)
    (work / "notes.txt").write_text("accuracy by class\nsetosa 1.0\nversicolor 0.93\n")
    (work / "confusion.png").write_bytes(png_bytes())
    ex = Experiment("svm")
    ex.observers.append(FileStorageObserver(store))

    @ex.config
    def cfg():
        C = 1.0  # the inverse of the regularisation strength
        kernel = "rbf"  # rbf, linear or poly
        steps = 200

    @ex.main
    def main(C, kernel, steps, _run):
        print(f"training an SVM with C={C} and a {kernel} kernel")
        for step in range(steps):
            loss = math.exp(-step / (40 * C)) + 0.05 * math.sin(step / 5)
            _run.log_scalar("loss", loss, step)
            _run.log_scalar("accuracy", 1 - loss / 2, step)
        _run.add_artifact(str(work / "notes.txt"), name="notes.txt")
        _run.add_artifact(str(work / "confusion.png"), name="confusion.png")
        if C < 0:
            raise ValueError("C must be positive")
        return round(1 - 0.3 / (1 + C), 4)

    ids: dict[str, Any] = {"plain": [], "sweep": [], "study": []}
    options = {"--capture": "sys"}
    for C, kernel in ((1.0, "rbf"), (10.0, "linear")):
        ids["plain"].append(ex.run(config_updates={"C": C, "kernel": kernel}, options=options)._id)
    try:
        ex.run(config_updates={"C": -1.0}, options=options)
    except ValueError:
        ids["failed"] = max((p.name for p in store.iterdir() if p.name.isdigit()), key=int)
    for index, C in enumerate((0.1, 1.0, 10.0)):
        sweep = {"id": "sw1", "index": index, "size": 3, "params": {"C": C}}
        run = ex.run(config_updates={"C": C}, meta_info={"sweep": sweep}, options=options)
        ids["sweep"].append(run._id)
    for trial, (C, kernel) in enumerate(
        ((0.5, "rbf"), (2.0, "linear"), (5.0, "rbf"), (0.2, "poly"))
    ):
        study = {"name": "tune-svm", "trial": trial}
        run = ex.run(
            config_updates={"C": C, "kernel": kernel}, meta_info={"study": study}, options=options
        )
        ids["study"].append(run._id)
    return ids


def big_run(store: Path, points: int) -> str:
    """A run that logged ``points`` values of one metric; its id."""
    from expkit import Experiment
    from expkit.observers import FileStorageObserver

    ex = Experiment("long")
    ex.observers.append(FileStorageObserver(store))

    @ex.main
    def main(_run):
        for i in range(points):
            _run.log_scalar("signal", math.sin(i / 500) + (i % 101) / 101, i)

    return ex.run(options={"--capture": "sys"})._id
