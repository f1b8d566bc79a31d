"""Start the web view: open the stores, listen, print the address, serve until Ctrl-C."""

from __future__ import annotations

import secrets
import socket
import sys
import threading
import webbrowser
from typing import Any

from expkit.errors import UsageError
from expkit.nodes import ExitCode
from expkit.utils import redact_url
from expkit_plugins.runs import reader_for, store_url
from expkit_plugins.ui.security import is_loopback
from expkit_plugins.ui.stores import StoreView


def serve(config: Any) -> int:
    """Carry out ``expkit ui``: serve the stores given with ``--store`` (or the default)."""
    import uvicorn

    from expkit_plugins.ui.app import create_app

    if config.getoption("paths"):
        raise UsageError("expkit ui takes no paths: name stores with --store URL (repeatable)")
    host = config.getoption("ui_host")
    port = _port(config.getoption("ui_port"))
    beat = config.settings.beat_interval or 10.0
    stores = _open_stores(config, beat)
    try:
        sock = _listen(host, port)
        port = sock.getsockname()[1]
        token = secrets.token_urlsafe(24)
        loopback = is_loopback(host)
        app = create_app(
            stores,
            token=token,
            loopback=loopback,
            port=port,
            allow_delete=bool(config.getoption("ui_allow_delete")),
            beat_interval=beat,
        )
        for store in stores:
            store.listing()  # read now: a store that cannot be read is said before serving
        addresses = _addresses(host, port, None if loopback else token)
        _announce(stores, host, addresses, loopback)
        if config.getoption("ui_open"):
            threading.Thread(target=webbrowser.open, args=(addresses[0],), daemon=True).start()
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="off",
                log_level="warning",
                access_log=False,
                proxy_headers=False,  # nobody's X-Forwarded-For decides who a client is
                server_header=False,
                timeout_graceful_shutdown=2,
            )
        )
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # uvicorn stops on Ctrl-C, then passes it on: stopping is what was asked
        print("expkit ui stopped", flush=True)
        return ExitCode.OK
    finally:
        for store in stores:
            store.close()


def _open_stores(config: Any, beat: float) -> list[StoreView]:
    from expkit_plugins.ui.views import prepare

    urls = list(config.getoption("stores") or ()) or [store_url(config)]
    stores: list[StoreView] = []
    try:
        for index, url in enumerate(dict.fromkeys(urls)):
            reader = reader_for(config.pluginmanager, url)
            stores.append(StoreView(index, url, reader, lambda listing: prepare(listing, beat)))
    except BaseException:
        for store in stores:
            store.close()
        raise
    return stores


def _port(port: int) -> int:
    # Checked here, before any store is opened: the socket functions take a port modulo
    # 65536 (70000 would serve on 4464) and blame a negative one on the host.
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be a number from 0 to 65535 (0: any free one), got {port}")
    return port


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free one), or a one-line UsageError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host!r} is no address of this machine: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "; pick another with --port (0: any free one)" if exc.errno == 98 else ""
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    sock.setblocking(False)
    return sock


def _addresses(host: str, port: int, token: str | None) -> list[str]:
    """The addresses to open: the one bound, and this machine's name when bound to all."""
    query = f"?token={token}" if token else ""
    names = [host]
    if host in ("0.0.0.0", "::", ""):
        names = [socket.gethostname(), "127.0.0.1"]
    return [f"http://{_bracketed(name)}:{port}/{query}" for name in names]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _announce(stores: list[StoreView], host: str, addresses: list[str], loopback: bool) -> None:
    shown = ", ".join(redact_url(s.url) for s in stores)
    print(f"expkit ui: {len(stores)} store(s): {shown}", flush=True)
    if loopback:
        print(f"serving on {addresses[0]}  (this machine only; Ctrl-C to stop)", flush=True)
        return
    print(f"serving on {host}; open it with its access token (Ctrl-C to stop):", flush=True)
    for address in addresses:
        print(f"    {address}", flush=True)
    sys.stdout.flush()
