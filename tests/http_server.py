"""A real local HTTP server that records the requests it gets: stands in for Slack and Telegram.

Also the experiment whose runs the notification tests watch end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs


@attrs.frozen
class Request:
    """One request the server got."""

    method: str
    path: str
    headers: dict
    body: bytes

    def json(self) -> Any:
        """The body, read as JSON."""
        return json.loads(self.body)


class RecordingServer:
    """Answers every POST with ``status`` and ``body``, keeping each request."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.status = 200
        self.body = b"ok"
        self.content_type = "text/plain"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                server.requests.append(Request("POST", self.path, dict(self.headers), body))
                self.send_response(server.status)
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args: Any) -> None:
                pass  # keep the test output clean

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # A short poll interval: shutdown() waits for the loop to notice.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        """Answer the next requests with ``status`` and ``body`` (JSON unless bytes)."""
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.content_type = content_type

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()


def ending_experiment(name: str, observer: Any, end: object = 42) -> Any:
    """An experiment observed by ``observer`` whose main returns ``end``, or raises it."""
    from expkit import Experiment

    ex = Experiment(name, interactive=True)
    ex.observers.append(observer)

    @ex.main
    def main():
        if isinstance(end, BaseException):
            raise end
        return end

    return ex
