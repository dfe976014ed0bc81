"""Signed image URLs: what lets the shipped nginx send a tenant's image without asking.

With API keys, nginx asks the sidecar before it sends an image (images-off.conf): a caller who
may have every image is one cached answer, but a key that sees only its own jobs costs a Python
round trip for each new image (0.4-0.5 ms of gunicorn's CPU and as much of nginx's, on a 4 MB
file that nginx alone sends in 2.7 ms of these cores; docs/benchmarks.md). With IMAGE_URL_SECRET
set, the image URLs such a key is handed (image_url, images[].url, the progress socket's, the
outputs listing's, a save's, Content-Location) carry `?expires=<unix time>&signature=<base64url
md5>`, made as nginx's secure_link module checks them (`secure_link_md5 "$secure_link_expires$uri
<secret>"`), so nginx sends the file on its own (image-signed-on.conf); the sidecar honours
the same URL where it answers (no nginx in front, an image nginx does not have), so a signed URL
works the same way everywhere, with or without a key.

A signed URL is a bearer URL: whoever holds it reads that one image until it expires, key or
not, as with object storage's presigned URLs (docs/security.md). The expiry moves in steps of a
quarter of IMAGE_URL_SECONDS (at least that long, at most a quarter longer), so a status reads
the same, and keeps its ETag, for a quarter of that time. MD5 is what secure_link offers; the
secret at the end of the hashed text and 32 or more random characters make a signature
unforgeable without it (no collision helps: the attacker chooses no text that is hashed with
the secret but the path, and its image must be one the sidecar signed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from urllib.parse import unquote

EXPIRES = "expires"
SIGNATURE = "signature"
# Letters, digits, '-' and '_' only: the secret is written into nginx's configuration inside a
# quoted string, where '$', '"', ';' or a backslash would change what nginx hashes.
SECRET = re.compile(r"[A-Za-z0-9_-]{32,}")


def secret(raw: str) -> str:
    """IMAGE_URL_SECRET's parser: empty (off), or 32 or more letters, digits, '-', '_'."""
    value = raw.strip()
    if value and not SECRET.fullmatch(value):
        raise ValueError(
            "must be 32 or more letters, digits, '-' or '_' (e.g. the output of"
            " `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return value


def signs_for(config, caller) -> bool:
    """Whether this caller is handed signed image URLs: a secret is set and it sees only its
    own jobs (a caller who sees all is one cached yes of nginx's, and needs none)."""
    return bool(config.image_url_secret) and not caller.sees_all


def expiry(seconds: float, now: float | None = None) -> int:
    """When a URL signed now expires: `seconds` from now at least, rounded up to the next step
    of a quarter of it, so that URLs signed within one step are the same."""
    step = max(1, int(seconds) // 4)
    now = time.time() if now is None else now
    return (int(now + seconds) // step + 1) * step


def signature(path: str, expires: int, key: str) -> str:
    """nginx's secure_link_md5 of "<expires><path> <key>" for a decoded path ($uri)."""
    digest = hashlib.md5(f"{expires}{path} {key}".encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def signed(url: str, key: str, seconds: float, now: float | None = None) -> str:
    """`url` (a path as url_for builds it, percent-encoded, no query) with its expiry and
    signature."""
    expires = expiry(seconds, now)
    return f"{url}?{EXPIRES}={expires}&{SIGNATURE}={signature(unquote(url), expires, key)}"


def valid(path: str, expires: str | None, given: str | None, key: str, now: float | None = None):
    """Whether `given` signs the decoded `path` until `expires`, which has not passed."""
    if not (key and expires and given and expires.isdigit()):
        return False
    if int(expires) <= (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature(path, int(expires), key), given)
