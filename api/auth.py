"""API keys with scopes, and per-key rate limits.

Keys come from API_KEYS: entries separated by commas or new lines, each `<key>` (every scope)
or `<key>:<scope>` with one of `read` < `generate` < `admin` (each includes the ones before it),
or `metrics` (GET /metrics only, which admin keys may read too).
A request sends `Authorization: Bearer <key>` or `X-API-Key: <key>`. Every endpoint declares
the scope it needs with @requires; one that declares nothing needs `read` for GET and `admin`
for anything else, so a new endpoint is never open by accident. Health probes, the OpenAPI
document and the static page are public (the page asks for a key and sends it itself).

With no keys configured, no request is checked: the sidecar then binds to loopback only
(see Config.bind_host) unless ALLOW_UNAUTHENTICATED says otherwise, and says so at startup.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from api.exceptions import ConfigError, Forbidden, Unauthorized

SCOPES = ("read", "generate", "admin")
# A scope of its own, outside the ladder: a Prometheus key reads /metrics and nothing else, and
# only it and admin keys read /metrics.
METRICS = "metrics"
PUBLIC = "public"


def allows(scope: str, needed: str) -> bool:
    """Whether a key of `scope` may call an endpoint that needs `needed`."""
    if needed == METRICS:
        return scope in (METRICS, "admin")
    if scope == METRICS:
        return False
    return SCOPES.index(scope) >= SCOPES.index(needed)


@dataclass(frozen=True)
class ApiKey:
    digest: str  # sha256 of the key: compared in constant time, never logged
    scope: str

    @property
    def name(self) -> str:
        """A stable, harmless identifier (for rate limits and logs)."""
        return "key-" + self.digest[:12]


def parse_keys(raw: str) -> tuple[ApiKey, ...]:
    keys = []
    for entry in raw.replace("\n", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        secret, _, scope = entry.partition(":")
        scope = scope.strip() or "admin"
        if scope not in (*SCOPES, METRICS):
            raise ConfigError(
                f"API_KEYS: unknown scope {scope!r} (use {', '.join(SCOPES)} or {METRICS})"
            )
        if len(secret) < 16:
            raise ConfigError("API_KEYS: every key must be at least 16 characters long")
        keys.append(ApiKey(hashlib.sha256(secret.encode()).hexdigest(), scope))
    return tuple(keys)


def requires(scope: str) -> Callable:
    """Declare the scope a view needs ("public" for none)."""

    def mark(view: Callable) -> Callable:
        view.required_scope = scope
        return view

    return mark


def declared_scope(view: Callable | None) -> str | None:
    """The scope a view declared with @requires, if any."""
    return getattr(view, "required_scope", None)


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def _needed_scope(app: Flask) -> str:
    declared = declared_scope(app.view_functions.get(request.endpoint or ""))
    if declared:
        return declared
    if request.endpoint is None:  # 404/405: let the router answer in the error shape
        return PUBLIC
    return "read" if request.method in ("GET", "HEAD", "OPTIONS") else "admin"


def rate_limit_key() -> str:
    key = getattr(g, "api_key", None)
    return key.name if key is not None else get_remote_address()


def init_app(app: Flask, keys: tuple[ApiKey, ...], default_limit: str) -> Limiter:
    """Check keys and scopes before every request; install the rate limiter."""

    @app.before_request
    def _authenticate() -> None:
        g.api_key = None
        if request.method == "OPTIONS" or not keys:
            return
        needed = _needed_scope(app)
        presented = _presented_key()
        if presented is not None:
            digest = hashlib.sha256(presented.encode()).hexdigest()
            g.api_key = next((k for k in keys if hmac.compare_digest(k.digest, digest)), None)
        if needed == PUBLIC:
            return
        if g.api_key is None:
            raise Unauthorized(
                "Missing or unknown API key: send Authorization: Bearer <key> or X-API-Key"
            )
        if not allows(g.api_key.scope, needed):
            raise Forbidden(
                f"This API key has scope '{g.api_key.scope}'; this endpoint needs '{needed}'"
            )

    limiter = Limiter(
        rate_limit_key,
        app=app,
        default_limits=[default_limit] if default_limit else [],
        headers_enabled=True,
        storage_uri="memory://",
        # Probes and documentation are never limited.
        default_limits_exempt_when=lambda: _needed_scope(app) == PUBLIC,
    )
    return limiter
