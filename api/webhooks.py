"""Signed webhooks (Standard Webhooks), and the rules that keep them from reaching inside.

A webhook is one HTTP POST of a JSON body, signed with WEBHOOK_SECRET by the spec's library
(`standardwebhooks`): `webhook-id` (the delivery's id: the same on every retry, receivers
deduplicate on it), `webhook-timestamp` (this attempt's Unix time) and `webhook-signature`
(HMAC-SHA256 over id.timestamp.body). Each attempt is signed anew: receivers refuse timestamps
more than five minutes old, and a retry may come hours later.

Server-side request forgery: a client names the URL, and the sidecar sits on a private network
beside ComfyUI (and, in clouds, a metadata service). So a target is refused unless every address
its host resolves to is public, or WEBHOOK_ALLOWED_HOSTS names the host or a range holding the
address. The check happens when the request is made and again at every attempt, on the address
the connection then goes to (DNS can change in between), and redirects are never followed.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import urllib3
from standardwebhooks import Webhook

from api.exceptions import WebhookUrlRefused

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
USER_AGENT = "comfy-sidecar-webhooks/1"
MAX_URL_LENGTH = 2048
# Statuses worth another attempt; every other 4xx means the receiver will never take it.
RETRYABLE_STATUSES = (408, 429)


class TargetRefused(Exception):
    """The target resolves to an address webhooks may not reach (the message says which)."""


@dataclass(frozen=True)
class AllowList:
    """WEBHOOK_ALLOWED_HOSTS: host names, and CIDR ranges (or single addresses)."""

    names: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, raw: str) -> AllowList:
        names, networks = set(), []
        for entry in raw.replace("\n", ",").split(","):
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def allows_address(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def is_public(address: Address) -> bool:
    """Globally routable unicast: not loopback, private, link-local (cloud metadata),
    shared (CGNAT), reserved, unspecified or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: object, allowed: AllowList) -> str:
    """A webhook_url a request may name: http(s), a host, and no literal non-public address
    (host names are checked when resolved, at every attempt). Raises WebhookUrlRefused."""
    field = {"field": "webhook_url"}
    if not isinstance(url, str) or not url:
        raise WebhookUrlRefused("webhook_url must be an http:// or https:// URL", field)
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlRefused(f"webhook_url is longer than {MAX_URL_LENGTH} characters", field)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise WebhookUrlRefused(f"webhook_url is not a valid URL: {exc}", field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlRefused("webhook_url must be an http:// or https:// URL", field)
    if parts.username or parts.password:
        raise WebhookUrlRefused("webhook_url must not carry a user name or password", field)
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url
    if not is_public(literal) and not allowed.allows_address(literal):
        raise WebhookUrlRefused(
            f"webhook_url points at {literal}, a non-public address; webhooks may only reach"
            " public addresses unless WEBHOOK_ALLOWED_HOSTS allows it",
            field,
        )
    return url


def resolve(host: str, port: int, allowed: AllowList) -> Address:
    """The address to connect to, checked: every address the host has must be allowed (one
    private answer among public ones is how rebinding attacks start). Raises TargetRefused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise ConnectionError(f"{host} has no address")
    if not allowed.allows_name(host):
        for address in addresses:
            if not is_public(address) and not allowed.allows_address(address):
                raise TargetRefused(
                    f"{host} resolves to {address}, a non-public address (allow it with"
                    " WEBHOOK_ALLOWED_HOSTS)"
                )
    return addresses[0]


def body(event: str, status: dict) -> str:
    """The JSON a receiver gets: the job's status shape plus the event name."""
    return json.dumps({"event": event, **status}, separators=(",", ":"))


@dataclass(frozen=True)
class Attempt:
    """What one attempt came to."""

    delivered: bool
    retry: bool  # worth another attempt later
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None  # the receiver's Retry-After, in seconds


class WebhookSender:
    """Signs and sends one webhook attempt to a checked, pinned address."""

    def __init__(self, secret: str, allowed: AllowList, timeout: float) -> None:
        self.signer = Webhook(secret) if secret else None
        self.allowed = allowed
        self.timeout = timeout

    def headers(self, delivery_id: str, payload: str, now: datetime | None = None) -> dict:
        if self.signer is None:
            raise TargetRefused("WEBHOOK_SECRET is not set: webhooks are never sent unsigned")
        now = now or datetime.now(UTC)
        return {
            "webhook-id": delivery_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(delivery_id, now, payload),
        }

    def send(self, url: str, delivery_id: str, payload: str) -> Attempt:
        try:
            check_url(url, self.allowed)
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            address = resolve(parts.hostname, port, self.allowed)
            headers = self.headers(delivery_id, payload)
        except (TargetRefused, WebhookUrlRefused) as exc:
            return Attempt(False, False, error=f"refused: {getattr(exc, 'message', exc)}")
        except ConnectionError as exc:
            return Attempt(False, True, error=str(exc))
        headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                # The name the receiver expects, although the connection goes to the address
                # checked above (never resolved again).
                "Host": parts.netloc.rpartition("@")[2],
            }
        )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        timeout = urllib3.Timeout(connect=min(self.timeout, 5.0), read=self.timeout)
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(
                str(address),
                port,
                timeout=timeout,
                retries=False,
                server_hostname=parts.hostname,
                assert_hostname=parts.hostname,
            )
        else:
            pool = urllib3.HTTPConnectionPool(str(address), port, timeout=timeout, retries=False)
        try:
            response = pool.urlopen(
                "POST",
                path,
                body=payload.encode(),
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=True,
                assert_same_host=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            return Attempt(False, True, error=f"{type(exc).__name__}: {exc}")
        finally:
            pool.close()
        return judge(response.status, response.headers.get("Retry-After"), response.headers)


def judge(status: int, retry_after: str | None, headers=None) -> Attempt:
    """A receiver's answer: 2xx delivered; 5xx, 408 and 429 again later; 3xx (never
    followed) and other 4xx given up."""
    if 200 <= status < 300:
        return Attempt(True, False, status)
    wait = None
    if retry_after and retry_after.strip().isdigit():
        wait = float(retry_after.strip())
    if status >= 500 or status in RETRYABLE_STATUSES:
        return Attempt(False, True, status, f"the receiver answered {status}", wait)
    if 300 <= status < 400:
        location = (headers or {}).get("Location", "?")
        return Attempt(False, False, status, f"redirect to {location} not followed")
    return Attempt(False, False, status, f"the receiver answered {status}: not retried")
