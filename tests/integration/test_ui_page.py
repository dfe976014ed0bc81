"""The browser client in a real headless Chromium, against the real ComfyUI and gunicorn.

Chromium is Debian's package (scripts/ensure-chromium.sh, run by `make test`), driven by
Playwright from PyPI; Playwright's own browser download is never used. Screenshots go to the
test's temporary directory; with UPDATE_SCREENSHOT=1 the desktop one is also copied to
docs/ui-screenshot.png (CI leaves the tree alone).
"""

import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from tests.integration.conftest import Api
from tests.support.images import png_bytes
from tests.support.page_server import serving
from tests.support.sidecar import wait_for

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
SLEEP = "sidecar_test_sleep"
# Assertions wait this long (ms) for the page to catch up; a slow CI machine stays green.
expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def api(sidecar) -> Api:
    """The sidecar on gunicorn's own port, even where the shared `api` fixture also goes
    through a proxy: what a proxy in front needs for these routes is its own configuration's
    concern (docs/ui.md says what that is)."""
    return Api(sidecar.url, process=sidecar)


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/ensure-chromium.sh (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, sidecar):
    """Open the page in a fresh browser context; fails the test on any script error."""
    contexts, errors = [], []

    def open_(path="/", base=None, **context_args):
        context = browser.new_context(**context_args)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((base or sidecar.url) + path)
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not errors, f"script errors on the page: {errors}"


def shown_job(page) -> str | None:
    return page.locator("#result").get_attribute("data-job-id")


def form_ready(page) -> None:
    """Wait until the form shows the chosen workflow's fields: a change loads them and
    rebuilds the form (aria-busy meanwhile), and typing into the old fields would race it."""
    expect(page.locator("#generate-form")).not_to_have_attribute("aria-busy", "true")


def choose_workflow(page, name: str) -> None:
    page.locator("#workflow").select_option(name)
    form_ready(page)


def progress_values(page, before: str | None, until_status: str, timeout: float = 60) -> list[int]:
    """aria-valuenow of the progress bar, sampled from the moment the result panel shows a job
    other than `before` until it shows until_status."""
    page.wait_for_function(
        "before => { const id = document.querySelector('#result').dataset.jobId;"
        " return id && id !== before; }",
        arg=before,
    )
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    result = page.locator("#result")
    while result.get_attribute("data-status") != until_status:
        assert time.monotonic() < deadline, f"the page never showed {until_status}: {seen}"
        value = int(page.locator("#progress").get_attribute("aria-valuenow"))
        if not seen or seen[-1] != value:
            seen.append(value)
        page.wait_for_timeout(50)
    return seen


def test_generate_watch_progress_reuse_and_cancel_from_the_queue(open_page, api, tmp_path):
    page = open_page(viewport={"width": 1440, "height": 1000}, color_scheme="dark")

    # The default workflow is FLUX.2: size presets in steps of 16 fill width and height.
    expect(page.locator("#workflow")).to_have_value("flux2_turbo_default")
    page.locator('label[for="preset-1216x832"]').click()
    expect(page.get_by_label("Width")).to_have_value("1216")
    expect(page.get_by_label("Height")).to_have_value("832")
    # This ComfyUI has neither FLUX.2's nodes nor its models: the API's 422 is shown as is.
    page.get_by_label("Prompt").fill("a lighthouse on a cliff at dawn, film photo")
    page.get_by_role("button", name="Generate").click()
    alert = page.locator("#alerts .alert")
    expect(alert).to_contain_text("ComfyUI rejected the workflow")
    expect(alert).to_contain_text("EmptyFlux2LatentImage")

    # The test workflow sleeps between real progress events; its sizes step by 8, so no presets.
    choose_workflow(page, SLEEP)
    expect(page.locator(".presets")).to_have_count(0)
    expect(page.get_by_label("Prompt")).to_have_value("a lighthouse on a cliff at dawn, film photo")
    page.get_by_label("Steps").fill("12")
    page.get_by_text("More settings").click()
    page.get_by_label("Seconds per step").fill("0.25")
    page.get_by_label("Color").fill("#2f8f9d")
    before = shown_job(page)
    page.get_by_role("button", name="Generate").click()
    expect(alert).to_have_count(0)

    seen = progress_values(page, before, "completed")
    running = [v for v in seen if 0 < v < 100]
    assert len(running) >= 3 and running == sorted(running), f"progress bar: {seen}"
    image = page.locator("#result-image")
    expect(image).to_be_visible()
    assert page.evaluate("document.querySelector('#result-image').naturalWidth") > 0
    job_id = page.locator("#result").get_attribute("data-job-id")
    job = api.status(job_id)
    assert job["status"] == "completed" and job["parameters"]["steps"] == 12
    assert image.get_attribute("src").endswith(job["image_url"])
    expect(page.locator("#result-params")).to_contain_text(str(job["seed"]))
    # The seed was left random: the form shows the one the server drew, still unlocked.
    expect(page.get_by_label("Seed", exact=True)).to_have_value(str(job["seed"]))
    expect(page.locator("#seed-lock")).to_have_attribute("aria-pressed", "false")
    # The gallery, newest first, picks up the new image.
    expect(page.locator("#gallery-grid .tile img").first).to_have_attribute(
        "alt", job["output_image"]
    )

    page.get_by_role("button", name="Reuse these settings").click()
    expect(page.locator("#seed-lock")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_label("Seed", exact=True)).to_have_value(str(job["seed"]))
    expect(page.get_by_label("Steps")).to_have_value("12")
    expect(page.get_by_label("Color")).to_have_value("#2f8f9d")

    # A long job runs, another waits behind it: both appear in the queue panel.
    long = api.generate(
        prompt="a long one: sunset over the dunes", workflow=SLEEP, steps=400, seconds_per_step=0.1
    )
    waiting = api.generate(
        prompt="the one to cancel: a red fox in snow", workflow=SLEEP, steps=2, seconds_per_step=0
    )
    long_row = page.locator(f'#queue-list li[data-job-id="{long["job_id"]}"]')
    waiting_row = page.locator(f'#queue-list li[data-job-id="{waiting["job_id"]}"]')
    expect(long_row).to_contain_text("Running")
    expect(waiting_row).to_contain_text("#1 in queue")
    page.wait_for_timeout(600)  # let the gallery's images and the progress bars settle
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    waiting_row.get_by_role("button", name="Cancel job: the one to cancel").click()
    assert api.wait_final(waiting["job_id"], 20)["status"] == "cancelled"
    expect(waiting_row).to_have_count(0)
    assert api.status(long["job_id"])["status"] == "processing", "only that job was cancelled"
    # The running one: open it in the result panel from the queue, and cancel it there.
    long_row.get_by_role("button", name="Show job: a long one").click()
    result = page.locator("#result")
    expect(result).to_have_attribute("data-job-id", long["job_id"])
    expect(result).to_have_attribute("data-status", "processing")
    page.get_by_role("button", name="Cancel this job").click()
    assert api.wait_final(long["job_id"], 20)["status"] == "cancelled"
    expect(result).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#queue-list")).to_contain_text("Nothing queued")

    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, REPO / "docs" / "ui-screenshot.png")


def test_phone_sized_keyboard_only_and_long_polls_without_event_source(open_page, api, tmp_path):
    # No EventSource (as behind a proxy that breaks streams): the page falls back to long polls.
    page = open_page(
        "/ui/",
        viewport={"width": 375, "height": 812},
        color_scheme="light",
        is_mobile=True,
        has_touch=True,
    )
    page.add_init_script("delete window.EventSource")
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    assert page.evaluate("typeof window.EventSource") == "undefined"
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375, "sideways scrolling"

    # Keyboard only: choose the workflow, type, submit with Ctrl+Enter.
    page.locator("#workflow").focus()
    page.keyboard.press("End")  # options are sorted; the sleep workflow is the last one
    expect(page.locator("#workflow")).to_have_value(SLEEP)
    form_ready(page)
    page.keyboard.press("Tab")
    expect(page.get_by_label("Prompt")).to_be_focused()
    page.keyboard.type("typed without a mouse")
    for _ in range(3):  # width, height, steps
        page.keyboard.press("Tab")
    expect(page.get_by_label("Steps")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("6")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Seed", exact=True)).to_be_focused()
    page.keyboard.type(str(2**64 - 1))  # typing a seed locks it
    before = shown_job(page)
    page.keyboard.press("Control+Enter")

    seen = progress_values(page, before, "completed")
    assert any(0 < v < 100 for v in seen), f"progress bar: {seen}"
    job = api.status(page.locator("#result").get_attribute("data-job-id"))
    assert job["prompt"] == "typed without a mouse" and job["status"] == "completed"
    assert job["seed"] == 2**64 - 1
    expect(page.locator("#result-image")).to_be_visible()
    # Seeds past 2^53 stay exact on the way back too.
    expect(page.locator("#result-params")).to_contain_text(str(2**64 - 1))
    page.get_by_role("button", name="Reuse these settings").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Seed", exact=True)).to_have_value(str(2**64 - 1))
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 375, "sideways scrolling"
    page.screenshot(path=str(tmp_path / "ui-phone.png"), full_page=True)


def test_gallery_pages_and_shows_an_output_large(open_page, api):
    page = open_page(viewport={"width": 1024, "height": 800})
    total = api.get("/api/outputs?limit=1").json()["total"]
    status = page.locator("#gallery-status")
    expect(status).to_contain_text(f"of {total}")
    tiles = page.locator("#gallery-grid .tile")
    shown = tiles.count()
    assert 0 < shown <= total
    expect(status).to_have_text(re.compile(rf"^1\D{shown} of {total}$"))
    if total > shown:
        page.get_by_role("button", name="Older").click()
        expect(status).to_have_text(re.compile(rf"^{shown + 1}\D"))
        page.get_by_role("button", name="Newer").click()
        expect(status).to_have_text(re.compile(rf"^1\D{shown} of"))
    name = tiles.first.locator("img").get_attribute("alt")
    tiles.first.click()
    expect(page.locator("#result")).to_have_attribute("data-status", "file")
    expect(page.locator("#result-image")).to_be_visible()
    expect(page.locator("#result-params")).to_contain_text(name)
    expect(page.locator("#health")).to_have_class("pill health-ok")


def test_parameters_the_page_has_never_seen_render_from_their_schema(open_page, api):
    """A workflow description with LoRAs (the `loras` request field) and new parameters: the
    form builds inputs from the JSON Schema keywords and sends what they hold."""
    page = open_page(viewport={"width": 1280, "height": 900})
    detail = api.get(f"/api/workflows/{SLEEP}").json()
    detail["loras"] = {"supported": True, "max": 2}
    detail["parameters"]["sampler"] = {
        "name": "sampler",
        "type": "string",
        "enum": ["euler", "dpmpp_2m"],
        "default": "euler",
        "description": "A sampler.",
    }
    detail["parameters"]["tiled"] = {"name": "tiled", "type": "boolean", "default": False}
    page.route(f"**/api/workflows/{SLEEP}", lambda route: route.fulfill(json=detail))
    sent = []

    def refuse(route):
        sent.append(json.loads(route.request.post_data))
        body = {"error": "loras: no such file", "code": "invalid_request"}
        route.fulfill(status=400, json={**body, "details": {"field": "loras"}})

    page.route("**/api/generate", refuse)
    choose_workflow(page, SLEEP)
    page.get_by_role("button", name="Add LoRA").click()
    page.get_by_label("LoRA 1 file").fill("detail_tweaker.safetensors")
    page.get_by_label("LoRA 1 strength").fill("0.8")
    page.get_by_role("button", name="Add LoRA").click()
    page.get_by_label("LoRA 2 file").fill("style:v2.safetensors")
    expect(page.get_by_role("button", name="Add LoRA")).to_be_disabled()  # max 2
    page.get_by_text("More settings").click()
    page.get_by_label("Sampler").select_option("dpmpp_2m")
    page.get_by_label("Tiled").check()
    page.get_by_label("Seed", exact=True).fill("18446744073709551615")  # typing locks it
    page.get_by_label("Prompt").fill("schema test")
    page.get_by_role("button", name="Generate").click()

    expect(page.locator("#alerts .alert")).to_contain_text("loras: no such file")
    expect(page.locator("#e-loras")).to_have_text("loras: no such file")
    body = sent[0]
    assert body["loras"] == ["detail_tweaker.safetensors:0.8", "style:v2.safetensors:1"]
    assert (body["sampler"], body["tiled"], body["workflow"]) == ("dpmpp_2m", True, SLEEP)
    assert body["seed"] == 2**64 - 1, "the seed must reach the API exactly, past 2^53"
    assert "negative_prompt" not in body


def test_through_nginx_the_page_streams_progress_and_shows_the_image(open_page, nginx):
    """The shipped nginx in front: the page, its files, the event stream and the image
    (sent by nginx itself) all work at the same paths."""
    page = open_page(base=nginx.url, viewport={"width": 1280, "height": 900})
    choose_workflow(page, SLEEP)
    page.get_by_label("Prompt").fill("through nginx")
    page.get_by_label("Steps").fill("6")
    before = shown_job(page)
    page.get_by_role("button", name="Generate").click()
    seen = progress_values(page, before, "completed")
    assert any(0 < v < 100 for v in seen), f"progress bar: {seen}"
    expect(page.locator("#result-image")).to_be_visible()
    assert page.evaluate("document.querySelector('#result-image').naturalWidth") > 0
    assert page.locator("#result-image").get_attribute("src").startswith(nginx.url + "/api/image/")


KEY = "page-test-key-0123456789"


def test_with_api_keys_the_page_asks_for_a_key_and_sends_it(open_page, own_sidecar):
    process, _, _ = own_sidecar(API_KEYS=f"{KEY}:generate")
    page = open_page(base=process.url, viewport={"width": 1280, "height": 900})
    panel = page.locator("#key-panel")
    expect(panel).to_be_visible()
    expect(page.get_by_label("API key", exact=True)).to_be_focused()
    page.get_by_label("API key", exact=True).fill(KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(panel).to_be_hidden()
    expect(page.locator("#key-status")).to_be_visible()

    choose_workflow(page, SLEEP)
    page.get_by_label("Prompt").fill("with a key")
    page.get_by_label("Steps").fill("6")
    before = shown_job(page)
    page.get_by_role("button", name="Generate").click()
    # EventSource cannot send the key: the page reads the stream with fetch instead.
    seen = progress_values(page, before, "completed")
    assert any(0 < v < 100 for v in seen), f"progress bar: {seen}"
    image = page.locator("#result-image")
    expect(image).to_be_visible()
    assert image.get_attribute("src").startswith("blob:"), "images are fetched with the key"
    assert page.evaluate("document.querySelector('#result-image').naturalWidth") > 0
    job_id = shown_job(page)
    headers = {"Authorization": f"Bearer {KEY}"}
    job = requests.get(f"{process.url}/api/status/{job_id}", headers=headers, timeout=10).json()
    assert job["status"] == "completed" and job["prompt"] == "with a key"
    assert requests.get(f"{process.url}/api/status/{job_id}", timeout=10).status_code == 401
    log = process.log_path.read_text()
    assert f"/api/status/{job_id}/events" in log, "the job was followed by its event stream"


ATTACK_PAGE = """<!doctype html>
<html><body>
<iframe name="sink"></iframe>
<form id="clear" method="post" target="sink"
      action="{api}/api/queue/clear?include_running=true">
  <input name="include_running" value="true">
</form>
<form id="upload" method="post" target="sink" enctype="multipart/form-data"
      action="{api}/api/upload">
  <input type="file" name="image" id="file"><input name="overwrite" value="true">
</form>
<script>
  // What a page may send anywhere without asking first: a "simple" request.
  function sendText() {{
    return fetch("{api}/api/generate", {{
      method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
      body: JSON.stringify({{prompt: "sent by another site", workflow: "pipeline_check"}}),
    }});
  }}
</script>
</body></html>
"""


@contextmanager
def another_site(api_base: str):
    """A page on another origin (this machine, another port) aimed at the API."""
    with serving(ATTACK_PAGE.format(api=api_base).encode(), "text/html") as base:
        yield f"{base}/"


@pytest.mark.parametrize("via", ["direct", "nginx"])
def test_a_page_on_another_site_can_neither_clear_the_queue_nor_upload(
    browser, api, sidecar, comfy, request, via, job_count
):
    """A form post or a simple fetch from any page a user of this machine opens reaches the
    API without asking first; each is refused, and nothing changes."""
    base = sidecar.url if via == "direct" else request.getfixturevalue("nginx").url
    # Long enough to outlast the page's three attempts on a loaded machine; cancelled below.
    running = api.generate(
        prompt="must keep running", workflow=SLEEP, steps=1000, seconds_per_step=0.1
    )
    wait_for(lambda: api.status(running["job_id"])["status"] == "processing", 30)
    before = job_count()
    name = f"dropped_{uuid.uuid4().hex}.png"
    context = browser.new_context()
    try:
        page = context.new_page()
        with another_site(base) as site:
            page.goto(site)
            with page.expect_response(lambda r: "/api/queue/clear" in r.url) as cleared:
                page.locator("#clear").evaluate("form => form.submit()")
            assert cleared.value.status == 403
            page.set_input_files(
                "#file", files=[{"name": name, "mimeType": "image/png", "buffer": png_bytes()}]
            )
            with page.expect_response(lambda r: "/api/upload" in r.url) as uploaded:
                page.locator("#upload").evaluate("form => form.submit()")
            assert uploaded.value.status == 403
            with page.expect_response(lambda r: "/api/generate" in r.url) as sent:
                page.evaluate("sendText()")
            assert sent.value.status == 403
    finally:
        context.close()
    assert api.status(running["job_id"])["status"] == "processing"
    assert not (comfy.input_dir / name).exists()
    assert job_count() == before
    assert api.delete(f"/api/queue/{running['job_id']}").status_code == 200
