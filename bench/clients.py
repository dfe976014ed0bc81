"""The benchmarks' clients: one of the sidecar's API and one of ComfyUI itself, each doing what
a program of theirs does for one job, and the two ways of running many jobs (one at a time, a
burst)."""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import requests
import websocket

from tests.support.comfyui import REPO_ROOT

GRAPH = json.loads((REPO_ROOT / "workflows" / "pipeline_check.json").read_text())
FINAL = ("completed", "failed", "cancelled")
# A different colour for every job, so ComfyUI's cache never answers for one.
_colors = iter(random.Random(8).sample(range(1 << 24), 1_000_000))


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


class SidecarClient:
    """submit -> long poll until final -> image bytes, as a client of the sidecar's API; with
    `waits`, submit with ?wait= (the answer is the finished job) -> image bytes; with
    `image_answer` too, submit with ?wait= and Accept: image/png (the answer is the image)."""

    def __init__(self, base: str, waits: bool = False, image_answer: bool = False) -> None:
        self.base = base
        self.waits = waits or image_answer
        self.image_answer = image_answer
        self.http = session()
        self.phases: list[tuple[float, float, float, float]] = []

    def send(self) -> requests.Response:
        body = {"workflow": "pipeline_check", "prompt": "bench", "width": 64, "height": 64}
        response = self.http.post(
            f"{self.base}/api/generate",
            params={"wait": 30} if self.waits else None,
            json={**body, "color": next(_colors)},
            headers={"Accept": "image/png"} if self.image_answer else None,
            timeout=60,
        )
        # With ?wait=, 202 when the sidecar had no watcher slot free: follow the job.
        assert response.status_code in ((200, 202) if self.waits else (202,)), response.text
        return response

    def post(self) -> dict:
        job = self.send().json()
        return self.wait(job["job_id"]) if self.waits and job["status"] not in FINAL else job

    def submit(self) -> str:
        return self.post()["job_id"]

    def wait(self, job_id: str) -> dict:
        since = None
        while True:
            query = {"wait": 30} if since is None else {"wait": 30, "since": since}
            response = self.http.get(f"{self.base}/api/status/{job_id}", params=query, timeout=60)
            assert response.status_code == 200, response.text
            job = response.json()
            if job["status"] in FINAL:
                assert job["status"] == "completed", job
                return job
            since = job["version"]

    def run_one(self) -> None:
        t0 = time.perf_counter()
        if self.image_answer:
            response = self.send()
            if response.status_code == 202:  # no watcher slot: the image as any client gets it
                job = self.wait(response.json()["job_id"])
                response = self.http.get(self.base + job["image_url"], timeout=30)
            assert response.status_code == 200 and response.content[:4] == b"\x89PNG", response
            return
        if self.waits:
            job = self.post()
            t1 = t2 = time.perf_counter()
        else:
            job_id = self.submit()
            t1 = time.perf_counter()
            job = self.wait(job_id)
            t2 = time.perf_counter()
        image = self.http.get(self.base + job["image_url"], timeout=30)
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG", image.status_code
        t3 = time.perf_counter()
        # The job's own timestamps: created (in the POST) -> finished (the tracker settled it).
        settled = (iso_seconds(job["finished_at"]) - iso_seconds(job["created_at"])) * 1000
        self.phases.append(((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000, settled))


class ComfyClient:
    """POST /prompt with client_id, WebSocket until `executing` null for that prompt,
    /history/<id>, /view: what a direct client of ComfyUI does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = session()
        self.client_id = uuid.uuid4().hex
        ws_url = url.replace("http", "ws", 1) + "/ws"
        self.ws = websocket.create_connection(f"{ws_url}?clientId={self.client_id}")
        self.ws.settimeout(60)

    def submit(self, http: requests.Session | None = None) -> str:
        graph = json.loads(json.dumps(GRAPH))
        graph["1"]["inputs"].update(width=64, height=64, color=next(_colors))
        response = (http or self.http).post(
            f"{self.url}/prompt", json={"prompt": graph, "client_id": self.client_id}, timeout=60
        )
        response.raise_for_status()
        return response.json()["prompt_id"]

    def done_prompts(self, others: bool = False):
        """Yields the prompt id of each `executing` node=null message (and None for every
        other message if `others`)."""
        while True:
            frame = self.ws.recv()
            message = json.loads(frame) if isinstance(frame, str) else {}
            data = message.get("data") or {}
            if message.get("type") == "executing" and data.get("node") is None:
                yield data.get("prompt_id")
            elif others:
                yield None

    def run_one(self) -> None:
        prompt_id = self.submit()
        for done in self.done_prompts():
            if done == prompt_id:
                break
        history = self.http.get(f"{self.url}/history/{prompt_id}", timeout=30).json()
        outputs = history[prompt_id]["outputs"]
        image = next(img for node in outputs.values() for img in node.get("images", []))
        response = self.http.get(f"{self.url}/view", params=image, timeout=30)
        assert response.status_code == 200 and response.content[:4] == b"\x89PNG"

    def close(self) -> None:
        self.ws.close()


def latency(clients: dict, jobs: int) -> dict[str, list[float]]:
    """`jobs` jobs per client, one at a time, the clients taking turns (same conditions)."""
    times: dict[str, list[float]] = {name: [] for name in clients}
    for client in clients.values():  # warm-up: connections, first graph, caches
        for _ in range(3):
            client.run_one()
    for _ in range(jobs):
        for name, client in clients.items():
            start = time.perf_counter()
            client.run_one()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def burst_sidecar(base: str, jobs: int, clients: int) -> tuple[float, float]:
    """`jobs` submissions from `clients` concurrent clients; (seconds until all were
    submitted, seconds until every job is final), one long-polling watcher, as a dashboard."""
    local = threading.local()

    def submit(_):
        if not hasattr(local, "client"):
            local.client = SidecarClient(base)
        return local.client.submit()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        ids = list(pool.map(submit, range(jobs)))
    submitted = time.perf_counter() - start
    watcher = SidecarClient(base)
    for job_id in ids:
        watcher.wait(job_id)
    return submitted, time.perf_counter() - start


def burst_comfy(url: str, jobs: int, clients: int) -> tuple[float, float]:
    watcher = ComfyClient(url)
    local = threading.local()

    def submit(_):
        if not hasattr(local, "http"):
            local.http = session()
        return watcher.submit(local.http)

    finished: set[str] = set()
    start = time.perf_counter()
    submitted = None
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(submit, i) for i in range(jobs)]
        # Read the socket while submitting, or early completions would sit unread.
        for done in watcher.done_prompts(others=True):
            finished.add(done)
            if all(f.done() for f in futures):
                submitted = submitted or time.perf_counter() - start
                if {f.result() for f in futures} <= finished:
                    break
    elapsed = time.perf_counter() - start
    watcher.close()
    return submitted, elapsed
