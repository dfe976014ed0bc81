"""API keys: named tenants with scopes, per-key rate limits, and failed attempts held back.

Keys come from API_KEYS: entries separated by commas or new lines, each one of

    <name>:<key>:<scope>    a named key (the name is what jobs record as their owner)
    <key>:<scope>           a key whose name is derived from it ("key-" + 12 hex digits of
    <key>                   its SHA-256, stable across restarts); <key> alone is admin

with scope one of `read` < `generate` < `admin` (each includes the ones before it), or
`metrics` (GET /metrics only, which admin keys may read too). A request
sends `Authorization: Bearer <key>` or `X-API-Key: <key>`. Every endpoint declares the scope it
needs with @requires; one that declares nothing needs `read` for GET and `admin` for anything
else, so a new endpoint is never open by accident. Health probes, the OpenAPI document and the
static page are public (the page asks for a key and sends it itself).

What a key may see once it is in (its own jobs, unless admin) is api/tenancy.py's business.
A signed image URL (IMAGE_URL_SECRET, api/image_links.py) stands for a key on GET /api/image/
<name>, for the one file it names (tenancy.SIGNED_URL).
With no keys configured, no request is checked here: api/access.py then admits only this
machine (see Config.loopback_only), and the caller is tenancy.OPERATOR.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, g, request

from api import image_links
from api.exceptions import ConfigError, Forbidden, TooManyAuthFailures, Unauthorized
from api.tenancy import OPERATOR, SIGNED_URL, Caller

if TYPE_CHECKING:
    from flask_limiter import Limiter

SCOPES = ("read", "generate", "admin")
# A scope of its own, outside the ladder: a Prometheus key reads /metrics and nothing else, and
# only it and admin keys read /metrics.
METRICS = "metrics"
PUBLIC = "public"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_SECRET = 16


def allows(scope: str, needed: str) -> bool:
    """Whether a key of `scope` may call an endpoint that needs `needed`."""
    if needed == METRICS:
        return scope in (METRICS, "admin")
    if scope == METRICS:
        return False
    return SCOPES.index(scope) >= SCOPES.index(needed)


@dataclass(frozen=True)
class ApiKey:
    name: str  # what jobs record as their owner, and what logs and rate limits show
    digest: str  # sha256 of the key: compared in constant time, never logged
    scope: str

    @property
    def caller(self) -> Caller:
        return Caller(self.name, self.scope)


def derived_name(digest: str) -> str:
    """The name of a key given without one: stable, and harmless to show."""
    return "key-" + digest[:12]


def _parse_entry(entry: str, number: int) -> ApiKey:
    # Errors name the entry by its position, never by its text: it holds a secret.
    where = f"API_KEYS entry {number}"
    parts = [part.strip() for part in entry.split(":")]
    if len(parts) == 1:
        name, secret, scope = None, parts[0], "admin"
    elif len(parts) == 2:
        name, (secret, scope) = None, parts
        if scope not in (*SCOPES, METRICS):
            raise ConfigError(
                f"{where}: expected <key>:<scope> with scope {', '.join(SCOPES)} or {METRICS},"
                " or a named key <name>:<key>:<scope>"
            )
    elif len(parts) == 3:
        name, secret, scope = parts
        if not NAME.match(name):
            raise ConfigError(
                f"{where}: the name must be 1-64 letters, digits, '.', '_' or '-' (starting"
                " with a letter or digit)"
            )
    else:
        raise ConfigError(f"{where}: too many ':' (formats: <name>:<key>:<scope>, <key>:<scope>)")
    if scope not in (*SCOPES, METRICS):
        raise ConfigError(
            f"{where}: unknown scope {scope!r} (use {', '.join(SCOPES)} or {METRICS})"
        )
    if len(secret) < MIN_SECRET:
        raise ConfigError(f"{where}: every key must be at least {MIN_SECRET} characters long")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return ApiKey(name or derived_name(digest), digest, scope)


def parse_keys(raw: str) -> tuple[ApiKey, ...]:
    """The keys of API_KEYS; ConfigError when one is malformed or two share a name or key."""
    entries = [e.strip() for e in raw.replace("\n", ",").split(",") if e.strip()]
    keys = [_parse_entry(entry, number) for number, entry in enumerate(entries, start=1)]
    names = [key.name for key in keys]
    for name in dict.fromkeys(n for n in names if names.count(n) > 1):
        raise ConfigError(f"API_KEYS: the name {name!r} is given to more than one key")
    if len({key.digest for key in keys}) != len(keys):
        raise ConfigError("API_KEYS: the same key is listed twice")
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


def current_caller() -> Caller | None:
    """Who the current request comes from: a key's Caller, the operator when no keys are
    configured, or None (keys are configured and none was sent: public endpoints only)."""
    return getattr(g, "caller", None)


def caller() -> Caller:
    """The current request's Caller, on an endpoint that needs a key (so there is one)."""
    return current_caller() or OPERATOR


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


def _signed_image_read(key: str) -> bool:
    """A GET or HEAD of an image by name whose URL the sidecar signed (api/image_links.py);
    the route serves it only under the very name signed."""
    return (
        request.endpoint == "images.image"
        and request.method in ("GET", "HEAD")
        and image_links.valid(
            request.script_root + request.path,
            request.args.get(image_links.EXPIRES),
            request.args.get(image_links.SIGNATURE),
            key,
        )
    )


def rate_limit_key() -> str:
    key = getattr(g, "api_key", None)
    return key.name if key is not None else (request.remote_addr or "127.0.0.1")


class FailedAttempts:
    """Wrong keys per client address, in a moving window; past the limit every request that
    presents a key from that address is refused before its key is even looked at, so guessing
    cannot go on (not even to learn that a guess was right). Counted per worker, in memory,
    like the other rate limits."""

    def __init__(self, limit: str) -> None:
        self.item = None
        if limit:
            # The `limits` library is loaded only where a limit is set (a few MB per worker).
            from limits import parse
            from limits.storage import MemoryStorage
            from limits.strategies import MovingWindowRateLimiter

            self.item = parse(limit)
            self._window = MovingWindowRateLimiter(MemoryStorage())

    def check(self, address: str) -> None:
        if self.item is not None and not self._window.test(self.item, address):
            stats = self._window.get_window_stats(self.item, address)
            raise TooManyAuthFailures(
                "Too many requests with a wrong API key from this address: try again later",
                retry_after=max(1, int(stats.reset_time - time.time()) + 1),
            )

    def record(self, address: str) -> None:
        if self.item is not None:
            self._window.hit(self.item, address)


def init_app(
    app: Flask,
    keys: tuple[ApiKey, ...],
    default_limit: str,
    failure_limit: str = "",
    limits: bool = True,
    image_url_secret: str = "",
) -> Limiter | None:
    """Check keys and scopes before every request; install the rate limiters (None: no
    limit is set, so none is installed)."""
    # Wrong keys can only be sent where keys are set.
    failures = FailedAttempts(failure_limit if keys else "")

    @app.before_request
    def _authenticate() -> None:
        g.api_key = None
        g.caller = None if keys else OPERATOR
        if request.method == "OPTIONS" or not keys:
            return
        needed = _needed_scope(app)
        presented = _presented_key()
        if presented is not None:
            address = request.remote_addr or "unknown"
            failures.check(address)
            digest = hashlib.sha256(presented.encode()).hexdigest()
            g.api_key = next((k for k in keys if hmac.compare_digest(k.digest, digest)), None)
            if g.api_key is None:
                failures.record(address)
            else:
                g.caller = g.api_key.caller
        if needed == PUBLIC:
            return
        if g.api_key is None:
            if image_url_secret and _signed_image_read(image_url_secret):
                g.caller = SIGNED_URL  # the signature stands for a key, for this one file
                return
            raise Unauthorized(
                "Missing or unknown API key: send Authorization: Bearer <key> or X-API-Key"
            )
        if not allows(g.api_key.scope, needed):
            raise Forbidden(
                f"This API key has scope '{g.api_key.scope}'; this endpoint needs '{needed}'"
            )

    if not limits:
        # Without any limit (RATE_LIMIT and RATE_LIMIT_GENERATE empty) a limiter would still
        # look every request up (a tenth of a status read), and its libraries cost memory.
        return None
    from flask_limiter import Limiter

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
