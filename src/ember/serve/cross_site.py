"""Browser pages of other sites may not use the server: `Host` and `Origin` checks, and CORS.

A page on any site can make a browser POST to `http://127.0.0.1:8000` (a `text/plain` body needs
no preflight, so the request runs even though the page cannot read the answer), or rebind its
own DNS name to 127.0.0.1 and then read answers too: Ollama's CVE-2024-28224. Two checks stop
both, for every route but the probes':

- `Host` must name this server: localhost, 127.0.0.1, ::1, the `--host` it is bound to (any IP
  address when that is a wildcard such as 0.0.0.0: a rebinding page is reached by a name, never
  an address) or a name in `--allowed-hosts`; else 421.
- `Origin`, which browsers send on cross-site requests, must be the server's own or one of
  `--allowed-origins`; else 403. Allowed origins get CORS headers and their preflights answered.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.serve.api_errors import (
    APIError,
    CrossOriginError,
    MisdirectedRequestError,
    api_error_response,
    quoted,
)
from ember.serve.config import ServerConfig

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
_ANY = "*"
_ALLOWED_METHODS = b"GET, POST, DELETE, OPTIONS"
_PREFLIGHT_MAX_AGE = b"600"
# What a page may send besides the CORS-safelisted headers, when its preflight does not say.
_ALLOWED_HEADERS = b"authorization, content-type, x-request-id, openai-organization, openai-project"
# Response headers a page's script may read besides the safelisted ones: the id to quote in a
# report, and the tenant's limits (`rate_limits.py`) and when to retry.
_EXPOSED_HEADERS = (
    b"x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-limit-tokens, "
    b"x-ratelimit-remaining-requests, x-ratelimit-remaining-tokens, "
    b"x-ratelimit-reset-requests, x-ratelimit-reset-tokens"
)
# A preflight's Access-Control-Request-Headers, echoed only when it is a list of header names.
_HEADER_NAMES = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\s*,\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")


class CrossSiteGuard:
    def __init__(self, app: ASGIApp, config: ServerConfig, open_paths: frozenset[str]) -> None:
        self._app = app
        self._open_paths = open_paths
        bound = config.host.lower()
        self._any_host = _ANY in config.allowed_hosts
        self._any_address = bound in _WILDCARD_HOSTS
        self._hosts = frozenset(
            name.lower().rstrip(".") for name in (*LOOPBACK_NAMES, bound, *config.allowed_hosts)
        )
        self._any_origin = _ANY in config.allowed_origins
        self._origins = frozenset(origin.lower().rstrip("/") for origin in config.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open_paths:
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if host is not None and not self._host_allowed(host):
            await self._refuse(MisdirectedRequestError(self._host_message(host)), scope, send)
            return
        origin = headers.get("origin")
        if origin is None:
            await self._app(scope, receive, send)
            return
        if not self._origin_allowed(origin.lower().rstrip("/"), scope["scheme"], host):
            message = (
                f"requests from browser pages of {quoted(origin)} are refused; start the server "
                f"with --allowed-origins {origin} to allow that site"
            )
            await self._refuse(CrossOriginError(message), scope, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await _preflight(origin, headers.get("access-control-request-headers"), send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-expose-headers", _EXPOSED_HEADERS),
                    (b"vary", b"Origin"),
                ]
            await send(message)

        await self._app(scope, receive, send_with_cors)

    def _host_allowed(self, host: str) -> bool:
        if self._any_host:
            return True
        name = _host_name(host)
        if name is None:
            return False
        return name in self._hosts or (self._any_address and _is_address(name))

    def _host_message(self, host: str) -> str:
        names = ", ".join(sorted(name for name in self._hosts if name))
        ip = " or any IP address" if self._any_address else ""
        return (
            f"this server does not answer to the Host {quoted(host)}, only to {names}{ip}; "
            "start it with --allowed-hosts NAME[,NAME...] (or '*') to add names"
        )

    def _origin_allowed(self, origin: str, scheme: str, host: str | None) -> bool:
        if self._any_origin or origin in self._origins:
            return True
        # A page of the server's own origin (behind a proxy that serves both), not cross-site;
        # its Host has passed the check above, so it is not a rebound name.
        return host is not None and origin == f"{scheme}://{host.lower()}"

    async def _refuse(self, error: APIError, scope: Scope, send: Send) -> None:
        async def no_body() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        await api_error_response(error)(scope, no_body, send)


async def _preflight(origin: str, requested_headers: str | None, send: Send) -> None:
    """The answer to an allowed origin's preflight: the methods and headers it may use."""
    requested = (requested_headers or "").strip()
    allowed = (
        requested.encode("latin-1") if _HEADER_NAMES.fullmatch(requested) else _ALLOWED_HEADERS
    )
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", _ALLOWED_METHODS),
        (b"access-control-allow-headers", allowed),
        (b"access-control-expose-headers", _EXPOSED_HEADERS),
        (b"access-control-max-age", _PREFLIGHT_MAX_AGE),
        (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _host_name(host: str) -> str | None:
    """The name in a `Host` header (`name`, `name:port`, `[v6]:port`), lowercased; None if
    the header is not one."""
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
    else:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.lower().rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
