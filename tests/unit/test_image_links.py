"""Signed image URLs (IMAGE_URL_SECRET): made as nginx's secure_link checks them, handed to keys
that see only their own jobs, and honoured by the sidecar itself for the one file they name."""

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest

from api import create_app, image_links
from api.config import Config, ConfigError
from api.job import JobStatus
from tests.support.jobs import add_job
from tests.unit.conftest import COMFY, SYSTEM_STATS, make_config

SECRET = "s3cret-0123456789abcdefghijklmnopqrstuv"
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 32
OTHER = b"\x89PNG\r\n\x1a\n" + b"\x02" * 32


def test_the_signature_is_nginxs_secure_link_md5():
    """secure_link_md5 "$secure_link_expires$uri <secret>": the binary MD5, base64url without
    padding, of the decoded path."""
    made = image_links.signed("/api/image/sub/a%20b.png", SECRET, 3600, now=1_000_000)
    url = urlsplit(made)
    assert url.path == "/api/image/sub/a%20b.png"
    args = parse_qs(url.query)
    expires = int(args["expires"][0])
    text = f"{expires}/api/image/sub/a b.png {SECRET}".encode()
    expected = base64.urlsafe_b64encode(hashlib.md5(text).digest()).decode().rstrip("=")
    assert args["signature"] == [expected]
    assert image_links.valid("/api/image/sub/a b.png", str(expires), expected, SECRET, 1_000_000)


def test_an_expiry_is_at_least_the_lifetime_and_moves_in_quarter_steps():
    now = 1_000_123
    first = image_links.expiry(3600, now)
    assert now + 3600 < first <= now + 3600 + 900
    assert first % 900 == 0
    # URLs signed within one step are the same; the next step moves them on.
    assert image_links.expiry(3600, now + 1) == first
    assert image_links.expiry(3600, first - 3600) == first + 900


def test_a_signature_holds_only_for_its_path_its_expiry_and_its_secret():
    now = 1_000_000
    expires = image_links.expiry(3600, now)
    good = image_links.signature("/api/image/a.png", expires, SECRET)
    assert image_links.valid("/api/image/a.png", str(expires), good, SECRET, now)
    refused = [
        ("/api/image/b.png", str(expires), good, SECRET),  # another file
        ("/api/image/a.png", str(expires + 1), good, SECRET),  # another expiry
        ("/api/image/a.png", str(expires), good, "x" * 32),  # another secret
        ("/api/image/a.png", str(expires), good[:-1] + "A", SECRET),
        ("/api/image/a.png", str(expires), "", SECRET),
        ("/api/image/a.png", None, good, SECRET),
        ("/api/image/a.png", "-5", good, SECRET),
        ("/api/image/a.png", "1e9", good, SECRET),
        ("/api/image/a.png", str(expires), good, ""),  # no secret: nothing is signed
    ]
    for path, until, given, secret in refused:
        assert not image_links.valid(path, until, given, secret, now), (path, until, given)
    # Expired: no longer valid at its expiry.
    assert not image_links.valid("/api/image/a.png", str(expires), good, SECRET, expires)


@pytest.mark.parametrize("secret", ["short", "has space " + "x" * 32, "dollar$" + "x" * 32])
def test_a_secret_nginx_could_not_quote_stops_the_start_unechoed(secret):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"IMAGE_URL_SECRET": secret})
    assert secret not in str(caught.value)
    assert "IMAGE_URL_SECRET=<hidden>: must be 32 or more letters" in str(caught.value)


def build(tmp_path, workflows_dir, fake_comfy, **overrides):
    fake_comfy.get(f"{COMFY}/system_stats", json=SYSTEM_STATS)
    config = make_config(
        tmp_path,
        workflows_dir,
        api_keys=f"alice:{ALICE}:generate, bob:{BOB}:generate, {ADMIN}",
        **overrides,
    )
    (config.comfyui_output_dir / "sub").mkdir(parents=True)
    (config.comfyui_output_dir / "sub" / "a b.png").write_bytes(PNG)
    (config.comfyui_output_dir / "a b.png").write_bytes(OTHER)  # Bob's, at the root
    client = create_app(config).test_client()
    store = client.application.extensions["sidecar"].store
    add_job(store, "j1", owner="alice", submitted=True)
    image = {"filename": "a b.png", "subfolder": "sub", "type": "output"}
    store.finish("j1", JobStatus.COMPLETED, [image])
    add_job(store, "j2", "p2", owner="bob", submitted=True)
    store.finish(
        "j2", JobStatus.COMPLETED, [{"filename": "a b.png", "subfolder": "", "type": "output"}]
    )
    return client


def key(value: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"} if value else {}


def test_a_tenant_is_handed_signed_urls_that_read_its_image_without_a_key(
    tmp_path, workflows_dir, fake_comfy
):
    client = build(tmp_path, workflows_dir, fake_comfy, image_url_secret=SECRET)
    status = client.get("/api/status/j1", headers=key(ALICE)).get_json()
    url = status["image_url"]
    assert url.startswith("/api/image/sub/a%20b.png?expires=")
    assert status["images"][0]["url"] == url
    # As nginx would check it: the decoded path and the secret.
    args = parse_qs(urlsplit(url).query)
    assert image_links.valid(
        "/api/image/sub/a b.png", args["expires"][0], args["signature"][0], SECRET
    )
    got = client.get(url)
    assert got.status_code == 200 and got.data == PNG
    assert client.head(url).status_code == 200
    # With its key too; the plain URL still needs the key.
    assert client.get(url, headers=key(ALICE)).data == PNG
    assert client.get("/api/image/sub/a b.png").status_code == 401
    # An admin key sees every image through nginx's cached yes: its URLs are plain.
    assert client.get("/api/status/j1", headers=key(ADMIN)).get_json()["image_url"] == (
        "/api/image/sub/a%20b.png"
    )


def test_a_signed_url_reads_nothing_but_the_file_it_names(tmp_path, workflows_dir, fake_comfy):
    client = build(tmp_path, workflows_dir, fake_comfy, image_url_secret=SECRET)
    url = client.get("/api/status/j1", headers=key(ALICE)).get_json()["image_url"]
    path, query = url.split("?")
    # Another file under the same signature: 401, as without one.
    assert client.get(f"/api/image/a%20b.png?{query}").status_code == 401
    # Bob's signed URL, for his file at the root, with ?subfolder= naming Alice's folder:
    # not the file signed.
    bobs = client.get("/api/status/j2", headers=key(BOB)).get_json()["image_url"]
    assert client.get(bobs).data == OTHER
    assert client.get(f"{bobs}&subfolder=sub").status_code == 404
    # A job id in place of the name, with a signature made for it: no job is anyone's.
    job_url = image_links.signed("/api/image/j1", SECRET, 3600)
    assert client.get(job_url).status_code == 404
    # Tampered, expired, or made with another secret: a key is needed again.
    expires = parse_qs(query)["expires"][0]
    assert (
        client.get(f"{path}?expires={expires}&signature=AAAAAAAAAAAAAAAAAAAAAA").status_code == 401
    )
    old = image_links.signature("/api/image/sub/a b.png", 1000, SECRET)
    assert client.get(f"{path}?expires=1000&signature={old}").status_code == 401
    assert client.get(image_links.signed(path, "y" * 32, 3600)).status_code == 401
    # Only reads.
    assert client.post(url).status_code in (401, 405)
    assert client.get(url.replace("/api/image/", "/api/status/")).status_code in (401, 404)


def test_without_a_secret_urls_are_plain_and_signatures_mean_nothing(
    tmp_path, workflows_dir, fake_comfy
):
    client = build(tmp_path, workflows_dir, fake_comfy)
    assert client.get("/api/status/j1", headers=key(ALICE)).get_json()["image_url"] == (
        "/api/image/sub/a%20b.png"
    )
    forged = image_links.signed("/api/image/sub/a%20b.png", "", 3600)
    assert client.get(forged).status_code == 401


def test_a_tenants_etag_follows_the_urls_expiry(tmp_path, workflows_dir, fake_comfy):
    client = build(tmp_path, workflows_dir, fake_comfy, image_url_secret=SECRET)
    answer = client.get("/api/status/j1", headers=key(ALICE))
    expires = parse_qs(urlsplit(answer.get_json()["image_url"]).query)["expires"][0]
    assert answer.headers["ETag"].endswith(f'-{expires}"')
    again = client.get(
        "/api/status/j1", headers={**key(ALICE), "If-None-Match": answer.headers["ETag"]}
    )
    assert again.status_code == 304
    assert "-" + expires not in client.get("/api/status/j1", headers=key(ADMIN)).headers["ETag"]


def test_a_tenants_kept_status_never_outlives_its_signed_urls(tmp_path, workflows_dir, fake_comfy):
    client = build(
        tmp_path,
        workflows_dir,
        fake_comfy,
        image_url_secret=SECRET,
        image_url_seconds=20.0,
        status_cache_seconds=30.0,
    )
    # URLs that hold 20 s at least: the answer is kept for 10 s, not the 30 configured.
    tenants = client.get("/api/status/j1", headers=key(ALICE))
    assert tenants.headers["Cache-Control"] == "private, max-age=10"
    # Plain URLs need no such care.
    admins = client.get("/api/status/j1", headers=key(ADMIN))
    assert admins.headers["Cache-Control"] == "private, max-age=30"


def test_a_tenants_listing_and_saved_copies_carry_signed_urls(tmp_path, workflows_dir, fake_comfy):
    client = build(tmp_path, workflows_dir, fake_comfy, image_url_secret=SECRET)
    items = client.get("/api/outputs", headers=key(ALICE)).get_json()["items"]
    assert [item["name"] for item in items] == ["sub/a b.png"]
    assert items[0]["url"].startswith("/api/image/sub/a%20b.png?expires=")
    assert client.get(items[0]["url"]).data == PNG
    saved = client.post("/api/save/j1", json={"filename": "mine"}, headers=key(ALICE))
    assert saved.status_code == 201
    url = saved.get_json()["url"]
    assert url.startswith("/api/image/mine.png?expires=")
    assert client.get(url).data == PNG
    # An admin key's listing: plain URLs, as before.
    admins = client.get("/api/outputs", headers=key(ADMIN)).get_json()["items"]
    assert all("?" not in item["url"] for item in admins)
