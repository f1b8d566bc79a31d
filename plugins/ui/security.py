"""Who may use the web view: the access token, the loopback guard and same-origin writes.

* Bound to a loopback address (the default), the server answers only requests that name
  a loopback host, so a web page elsewhere cannot reach it by DNS rebinding.
* Bound to any other address, every request needs the token the server printed: in the
  URL once (``?token=...``, then kept in a cookie, as Jupyter does), in the cookie, or in
  an ``Authorization: token ...`` header. Anything else is refused.
* A request that changes something (not GET or HEAD) must come from a page of this
  server (its ``Origin``) and carry the page's token in ``X-Expkit-Token``: another site
  open in the same browser can neither read the token nor forge the origin.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import URL, Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

TOKEN_HEADER = "x-expkit-token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
# Scripts, styles and images from this server only: nothing a stored name or value could
# inject runs, even if it slipped past escaping.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Artifacts are the run's own files: as documents they get no scripts and no origin.
ARTIFACT_POLICY = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cookie_name(port: int) -> str:
    """The token cookie of the server on ``port`` (cookies are shared across a host's ports)."""
    return f"expkit-ui-token-{port}"


class Guard:
    """ASGI middleware: refuse what the rules in the module doc refuse; add safety headers."""

    def __init__(self, app: Any, token: str, loopback: bool, port: int) -> None:
        self.app = app
        self.token = token
        self.loopback = loopback
        self.cookie = cookie_name(port)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/") or scope["path"] == "/api"

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = Headers(raw=message.get("headers", []))
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                if "content-security-policy" not in headers:
                    extra.append((b"content-security-policy", PAGE_POLICY.encode()))
                if api and "cache-control" not in headers:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        refusal = self.refusal(Request(scope))
        if refusal is None:
            await self.app(scope, receive, send_with_headers)
        else:
            await refusal(scope, receive, send_with_headers)

    def refusal(self, request: Request) -> Response | None:
        """The response that refuses ``request``, or ``None`` when it may go on."""
        host = request.headers.get("host", "")
        if self.loopback and not is_loopback(_hostname(host)):
            return PlainTextResponse(
                f"403: this expkit ui serves only loopback addresses, not {host!r}: "
                "open it at the address it printed",
                status_code=403,
            )
        if not self.loopback:
            given = request.query_params.get("token")
            if given is not None and self._valid(given):
                if request.method in SAFE_METHODS and not request.url.path.startswith("/api"):
                    return self._remember(request)
            elif not (
                self._valid(request.cookies.get(self.cookie)) or self._valid(_bearer(request))
            ):
                return PlainTextResponse(
                    "403: this expkit ui needs its access token: open the address with "
                    "?token=... that `expkit ui` printed",
                    status_code=403,
                )
        if request.method not in SAFE_METHODS:
            expected = f"{request.url.scheme}://{host}"
            if request.headers.get("origin") != expected or not self._valid(
                request.headers.get(TOKEN_HEADER)
            ):
                return PlainTextResponse(
                    "403: changes are accepted only from the expkit ui's own pages "
                    f"(same origin, with the page's {TOKEN_HEADER} header)",
                    status_code=403,
                )
        return None

    def _valid(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.token.encode())

    def _remember(self, request: Request) -> Response:
        """Keep the token in a cookie and show the page again without it in the address."""
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        target = URL(path=request.url.path, query=urlencode(params))
        response = RedirectResponse(str(target), status_code=303)
        response.set_cookie(
            self.cookie, self.token, httponly=True, samesite="strict", path="/", max_age=None
        )
        return response


def _hostname(host_header: str) -> str:
    """``127.0.0.1`` of ``127.0.0.1:8731``, ``::1`` of ``[::1]:8731``."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "token" else None
