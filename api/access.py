"""Who may reach the API at all, checked before any key is looked at.

- **Only this machine without keys.** With no API_KEYS (and no ALLOW_UNAUTHENTICATED) the
  sidecar listens on loopback, but a proxy on the same host (nginx, an SSH tunnel, a port
  forward) can still bring the world in. So the caller's address, as it is after the trusted
  proxy hops (TRUST_PROXY_HOPS), must be a loopback address too.
- **Only our own names (DNS rebinding).** A web page on attacker.example can make its name
  resolve to 127.0.0.1; the browser then sends the page's requests, with
  `Host: attacker.example`, to the sidecar, and lets the page read the answers. Without keys
  the Host must therefore be a loopback name or one listed in ALLOWED_HOSTS (which, when set,
  is checked with keys too).
- **No cross-site writes.** A page on any site can make a browser send a form (urlencoded,
  multipart or text/plain) to any address, without asking first. So a request that changes
  something must come from the API's own origin (or one of CORS_ORIGINS) when a browser says
  where it comes from (`Origin`, `Sec-Fetch-Site`), and its body must be of the type the
  endpoint takes: JSON, which no form can send, or multipart for uploads, whose origin is
  checked as said. WebSocket handshakes get the same origin check (browsers let any page open
  a socket to any address). Clients that are not browsers send neither header and are not
  affected: `curl -X POST .../api/queue/clear` works as it always did.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from flask import Flask, request

from api.config import Config
from api.exceptions import CrossSiteRequest, HostNotAllowed, NotLocal, UnsupportedMedia

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"


def is_loopback_address(address: str | None) -> bool:
    """127.0.0.0/8, ::1 and ::ffff:127.x; no address at all is a local (Unix) socket."""
    if not address:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def host_name(host: str) -> str:
    """The name part of a Host header: no port, no brackets, lower case, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_loopback_name(name: str) -> bool:
    """localhost, *.localhost (RFC 6761: browsers resolve them to loopback themselves, so a
    rebinding attacker cannot own one) and loopback addresses."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_hosts(raw: str) -> tuple[str, ...]:
    """ALLOWED_HOSTS as names (".example.com" kept as a suffix)."""
    return tuple(
        host_name(h) if not h.strip().startswith(".") else h.strip().lower()
        for h in raw.split(",")
        if h.strip()
    )


def host_allowed(name: str, allowed: tuple[str, ...]) -> bool:
    """A loopback name, a listed one, or under a listed ".suffix" ("*" allows any)."""
    if is_loopback_name(name) or "*" in allowed:
        return True
    return any(
        name == h or (h.startswith(".") and (name == h[1:] or name.endswith(h))) for h in allowed
    )


def _netloc(value: str) -> str:
    """host[:port] with the scheme's default port left out, for comparing origins."""
    value = value.strip().lower()
    for default in (":80", ":443"):
        if value.endswith(default):
            return value[: -len(default)]
    return value


def same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names the host the request was sent to."""
    parts = urlsplit(origin)
    return bool(parts.scheme and parts.netloc) and _netloc(parts.netloc) == _netloc(host)


def _has_body() -> bool:
    return (
        bool(request.content_length)
        or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )


def _body_media(app: Flask) -> str:
    """The media type the endpoint's body is declared with (@operation), JSON by default."""
    declared = getattr(app.view_functions.get(request.endpoint or ""), "openapi", None)
    return getattr(declared, "body_media", None) or JSON


def _type_matches(mimetype: str, wanted: str) -> bool:
    if wanted == JSON:
        return mimetype == JSON or (
            mimetype.startswith("application/") and mimetype.endswith("+json")
        )
    return mimetype == wanted


def init_app(app: Flask, config: Config) -> None:
    """Install the checks, in order: the caller's address, the Host, the origin of writes
    (init_body_types adds the body's type, once the key is known)."""
    loopback_only = config.loopback_only
    allowed = parse_hosts(config.allowed_hosts)
    check_host = loopback_only or bool(allowed)
    origins = {o.strip().rstrip("/").lower() for o in config.cors_origins.split(",") if o.strip()}

    def check_origin() -> None:
        origin = request.headers.get("Origin")
        if origin is not None:
            if origin.rstrip("/").lower() in origins or same_origin(origin, request.host):
                return
            raise CrossSiteRequest(
                f"Requests that change something must come from this API's own origin; this"
                f" one came from a page on {origin[:100]!r} (CORS_ORIGINS lists the others)"
            )
        if request.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            raise CrossSiteRequest("This request was sent by a page of another site")

    @app.after_request
    def _no_sniffing(response):
        # A browser must take every answer for the type it says it is (JSON, an image),
        # never guess a script or a page from its bytes.
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.before_request
    def _admit() -> None:
        if loopback_only and not is_loopback_address(request.remote_addr):
            raise NotLocal(
                "Without API keys only this machine may use the API (set API_KEYS to open it"
                " to others; docs/security.md)"
            )
        if check_host and request.host and not host_allowed(host_name(request.host), allowed):
            raise HostNotAllowed(
                f"This API does not answer to the host name {host_name(request.host)[:100]!r}"
                " (the operator can add it to ALLOWED_HOSTS)"
            )
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.method in UNSAFE_METHODS or upgrade:
            check_origin()


def init_body_types(app: Flask) -> None:
    """Refuse a state-changing request whose body is not of the type its endpoint takes (after
    authentication: an anonymous caller learns nothing about the endpoint)."""

    @app.before_request
    def _body_type() -> None:
        if request.method not in UNSAFE_METHODS or not _has_body():
            return
        wanted = _body_media(app)
        if not _type_matches(request.mimetype, wanted):
            raise UnsupportedMedia(
                f"This endpoint takes a {wanted} body (Content-Type: {wanted}); got"
                f" {request.mimetype or 'no Content-Type'}"
            )
