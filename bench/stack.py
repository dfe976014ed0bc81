"""The real stack against ComfyUI direct, in one run: a CPU ComfyUI (the test helpers'), the
sidecar under gunicorn and the shipped nginx, each measurement taken against the sidecar and
against ComfyUI (or nginx's static file serving) in the same run, printed as one table.

Run with `make bench` (or `python -m bench.stack`). Prints numbers; never fails on timing.
Figures are medians over repeated runs; ratios are sidecar / direct (> 1 is slower for
latencies, < 1 is slower for rates).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests
import websocket

from api.config import Config
from api.job import JobStatus
from api.sqlite_store import SQLiteJobStore
from stack.__main__ import nginx_values
from stack.nginx import NginxProcess
from tests.integration.conftest import start_sidecar
from tests.support.comfyui import REPO_ROOT, ComfyUIProcess, comfyui_env, free_port
from tests.support.jobs import add_job

GRAPH = json.loads((REPO_ROOT / "workflows" / "pipeline_check.json").read_text())
FINAL = ("completed", "failed", "cancelled")
_colors = iter(random.Random(8).sample(range(1 << 24), 100_000))


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


# --- one job at a time --------------------------------------------------------------------


class SidecarClient:
    """submit -> long poll until final -> image bytes, as a client of the sidecar's API."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = session()
        self.phases: list[tuple[float, float, float, float]] = []

    def submit(self) -> str:
        body = {"workflow": "pipeline_check", "prompt": "bench", "width": 64, "height": 64}
        response = self.http.post(
            f"{self.base}/api/generate", json={**body, "color": next(_colors)}, timeout=30
        )
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

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

    def __init__(self, comfy: ComfyUIProcess) -> None:
        self.comfy = comfy
        self.http = session()
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"{comfy.ws_url}?clientId={self.client_id}")
        self.ws.settimeout(60)

    def submit(self) -> str:
        graph = json.loads(json.dumps(GRAPH))
        graph["1"]["inputs"].update(width=64, height=64, color=next(_colors))
        response = self.http.post(
            f"{self.comfy.url}/prompt",
            json={"prompt": graph, "client_id": self.client_id},
            timeout=30,
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
        history = self.http.get(f"{self.comfy.url}/history/{prompt_id}", timeout=30).json()
        outputs = history[prompt_id]["outputs"]
        image = next(img for node in outputs.values() for img in node.get("images", []))
        response = self.http.get(f"{self.comfy.url}/view", params=image, timeout=30)
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


# --- a burst --------------------------------------------------------------------------------


def burst_sidecar(base: str, jobs: int, clients: int) -> float:
    """`jobs` submissions from `clients` concurrent clients; seconds until every job is final
    (one long-polling watcher, as a dashboard would)."""
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


def burst_comfy(comfy: ComfyUIProcess, jobs: int, clients: int) -> float:
    watcher = ComfyClient(comfy)
    local = threading.local()

    def submit(_):
        if not hasattr(local, "http"):
            local.http = session()
        graph = json.loads(json.dumps(GRAPH))
        graph["1"]["inputs"].update(width=64, height=64, color=next(_colors))
        response = local.http.post(
            f"{comfy.url}/prompt",
            json={"prompt": graph, "client_id": watcher.client_id},
            timeout=60,
        )
        response.raise_for_status()
        return response.json()["prompt_id"]

    pending: set[str] = set()
    finished: set[str] = set()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(submit, i) for i in range(jobs)]
        submitted = None
        # Read the socket while submitting, or early completions would sit unread.
        for done in watcher.done_prompts(others=True):
            finished.add(done)
            if all(f.done() for f in futures):
                submitted = submitted or time.perf_counter() - start
                pending = {f.result() for f in futures}
                if pending <= finished:
                    break
    elapsed = time.perf_counter() - start
    watcher.close()
    return submitted, elapsed


# --- request rates (wrk, or Python threads without it) ----------------------------------------


def wrk_rate(base: str, paths: list[str], seconds: int, connections: int, lua_dir: Path):
    """(requests/s, bytes/s) of `paths` picked at random, over `connections` keep-alive
    connections."""
    script = lua_dir / f"paths{abs(hash(tuple(paths)))}.lua"
    listing = ",".join(json.dumps(p) for p in paths)
    script.write_text(
        f"local paths = {{{listing}}}\n"
        "request = function()\n"
        '  return wrk.format("GET", paths[math.random(#paths)])\n'
        "end\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  wrk against {base} reported errors:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    number, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()
    scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[unit]
    return rate, float(number) * scale


def python_rate(base: str, paths: list[str], seconds: int, connections: int, _lua_dir=None):
    """Fallback without wrk: threads with keep-alive sessions (the client's own CPU limits it)."""
    counts, sizes = [0] * connections, [0] * connections
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        http, pick = session(), random.Random(i)
        while time.perf_counter() < stop:
            response = http.get(base + pick.choice(paths), timeout=30)
            counts[i] += 1
            sizes[i] += len(response.content)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds, sum(sizes) / seconds


def rates(load, targets: dict[str, tuple[str, list[str]]], rounds: int, **kw) -> dict:
    """Median (requests/s, bytes/s) of each target, the targets taking turns each round."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (base, paths) in targets.items():
            runs[name].append(load(base, paths, **kw))
    return {
        name: (statistics.median(r for r, _ in got), statistics.median(b for _, b in got))
        for name, got in runs.items()
    }


# --- setup ----------------------------------------------------------------------------------


def seed_jobs(db: Path, count: int) -> list[str]:
    """`count` completed jobs, each with one image, inserted before the sidecar starts."""
    store = SQLiteJobStore(db)
    graph = json.loads(json.dumps(GRAPH))
    ids = []
    # One commit per write (finish() takes its own transaction); WAL with synchronous=NORMAL
    # does not sync each one, so this takes seconds, not minutes.
    for i in range(count):
        job_id = uuid.uuid4().hex
        add_job(
            store,
            job_id,
            None,
            client_id="bench",
            workflow="pipeline_check",
            prompt=f"seeded {i}",
            params={"seed": i},
            graph=graph,
        )
        store.mark_submitted(job_id, uuid.uuid4().hex)
        image = {"filename": f"PipelineCheck_{i:05d}_.png", "subfolder": "", "type": "output"}
        store.finish(job_id, JobStatus.COMPLETED, [image])
        ids.append(job_id)
    store.close()
    return ids


def rss_mb(pids: list[int]) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) in MB: RSS counts pages shared by master and workers once per
    process, PSS splits them."""
    rss = pss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


STATIC_SERVER = """# Benchmark only: the output directory as plain static files, for comparison
# with the X-Accel-Redirect path of /api/image/.
server {{
    listen 127.0.0.1:{port};
    location /static/ {{
        alias {outputs}/;
        expires 1h;
    }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100, help="latency: jobs per client")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--burst-clients", type=int, default=50)
    parser.add_argument("--seeded", type=int, default=10_000, help="jobs in the store")
    parser.add_argument("--seconds", type=int, default=5, help="per load run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per target (load, burst)")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    load = wrk_rate if shutil.which("wrk") else python_rate
    print(f"load generator: {'wrk' if load is wrk_rate else 'Python threads (no wrk)'}")

    root = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    python, comfy_dir = comfyui_env()
    comfy = ComfyUIProcess(python, comfy_dir, root / "comfyui")
    nginx = sidecar = None
    try:
        comfy.start()
        print(f"ComfyUI up in {comfy.startup_seconds:.1f}s")
        sidecar_root = root / "sidecar"
        db = sidecar_root / "workspace" / "sidecar" / "jobs.sqlite3"
        started = time.perf_counter()
        seeded = seed_jobs(db, args.seeded)
        print(f"seeded {len(seeded)} jobs in {time.perf_counter() - started:.1f}s")
        defaults = Config.from_env({})
        sidecar = start_sidecar(
            sidecar_root,
            comfy,
            comfy.port,
            # The tracker's defaults, not the integration tests' faster ones.
            RECONCILE_INTERVAL=str(defaults.reconcile_interval),
            LOST_JOB_GRACE=str(defaults.lost_job_grace),
            LOG_LEVEL="warning",
            RATE_LIMIT="",
            RATE_LIMIT_GENERATE="",
            MAX_UNFINISHED_JOBS="1000",
        )
        values = nginx_values(
            Config.from_env(sidecar.env),
            {"STACK_HTTP_PORT": str(free_port()), "STACK_COMFYUI_UI_PORT": str(free_port())},
        )
        values["NGINX_COMFYUI_UPSTREAM"] = f"127.0.0.1:{comfy.port}"
        static_port = free_port()
        static = root / "bench-static.conf.template"
        static.write_text(
            STATIC_SERVER.format(port=static_port, outputs=comfy.output_dir.resolve())
        )
        nginx = NginxProcess(root / "nginx", values, extra=[static])
        nginx.start()
        static_url = f"http://127.0.0.1:{static_port}"

        rows = []

        print(f"latency: {args.jobs} jobs each, one at a time ...", flush=True)
        comfy_client = ComfyClient(comfy)
        clients = {
            "sidecar": SidecarClient(sidecar.url),
            "nginx": SidecarClient(nginx.url),
            "direct": comfy_client,
        }
        times = latency(clients, args.jobs)
        comfy_client.close()
        for name in ("sidecar", "nginx"):
            phases = clients[name].phases[3:]  # without the warm-up
            p50 = [statistics.median(p[i] for p in phases) for i in range(4)]
            print(
                f"  {name} p50 ms: POST /api/generate {p50[0]:.1f}, long poll {p50[1]:.1f}, "
                f"image {p50[2]:.1f}; created -> finished in the job record {p50[3]:.1f}"
            )
        for label, q in (("p50", 50), ("p99", 99)):
            direct = quantile(times["direct"], q)
            for name, via in (("sidecar", "gunicorn"), ("nginx", "nginx")):
                mine = quantile(times[name], q)
                target = "≤ 1.25" if label == "p50" else ""
                rows.append((f"end-to-end {label} ms ({via})", mine, direct, mine / direct, target))

        print(f"burst: {args.burst} jobs from {args.burst_clients} clients ...", flush=True)
        runs = {"sidecar": [], "direct": []}
        for _ in range(args.rounds):
            runs["sidecar"].append(burst_sidecar(sidecar.url, args.burst, args.burst_clients))
            runs["direct"].append(burst_comfy(comfy, args.burst, args.burst_clients))
        for name, got in runs.items():
            print(
                f"  {name}: all submitted after "
                f"{statistics.median(s for s, _ in got):.2f}s, all done after "
                f"{statistics.median(e for _, e in got):.2f}s (medians)"
            )
        mine_rate = args.burst / statistics.median(e for _, e in runs["sidecar"])
        direct_rate = args.burst / statistics.median(e for _, e in runs["direct"])
        rows.append(
            ("burst jobs/s (gunicorn)", mine_rate, direct_rate, mine_rate / direct_rate, "≥ 0.95")
        )

        print(f"status reads: {args.connections} connections ...", flush=True)
        history = session().get(f"{comfy.url}/history", timeout=30).json()
        lua_dir = root / "lua"
        lua_dir.mkdir()
        sample = random.Random(1).sample(seeded, min(1000, len(seeded)))
        got = rates(
            load,
            {
                "sidecar": (sidecar.url, [f"/api/status/{j}" for j in sample]),
                "nginx": (nginx.url, [f"/api/status/{j}" for j in sample]),
                "direct": (comfy.url, [f"/history/{p}" for p in list(history)[:1000]]),
            },
            args.rounds,
            seconds=args.seconds,
            connections=args.connections,
            lua_dir=lua_dir,
        )
        direct = got["direct"][0]
        for name, via in (("sidecar", "gunicorn"), ("nginx", "nginx")):
            target = "≥ 1.0" if name == "sidecar" else ""
            rows.append(
                (f"status reads req/s ({via})", got[name][0], direct, got[name][0] / direct, target)
            )

        print("image download: 4 MB PNG ...", flush=True)
        name = "bench_4mb.png"
        (comfy.output_dir / name).write_bytes(
            b"\x89PNG\r\n\x1a\n" + random.Random(4).randbytes(4 * 1024 * 1024 - 8)
        )
        got = rates(
            load,
            {
                "accel": (nginx.url, [f"/api/image/{name}"]),
                "static": (static_url, [f"/static/{name}"]),
            },
            args.rounds,
            seconds=args.seconds,
            connections=8,
            lua_dir=lua_dir,
        )
        accel, static_rate = got["accel"][1] / 2**20, got["static"][1] / 2**20
        rows.append(
            ("image download MB/s (nginx)", accel, static_rate, accel / static_rate, "≥ 0.9")
        )

        pids = [sidecar._proc.pid, *sorted(sidecar.worker_pids())]
        rss, pss = rss_mb(pids)
        rows.append((f"memory RSS MB ({len(pids)} processes)", rss, None, None, "≤ 150"))
        rows.append((f"memory PSS MB ({len(pids)} processes)", pss, None, None, ""))

        print()
        print(f"{'measure':<38}{'sidecar':>10}{'direct':>10}{'ratio':>8}  target")
        for measure, mine, direct, ratio, target in rows:
            direct_text = f"{direct:>10.1f}" if direct is not None else f"{'-':>10}"
            ratio_text = f"{ratio:>8.2f}" if ratio is not None else f"{'-':>8}"
            print(f"{measure:<38}{mine:>10.1f}{direct_text}{ratio_text}  {target}")
        print(
            "direct = ComfyUI itself (POST /prompt + WebSocket + /history + /view; GET "
            "/history/<id>), or nginx serving the same file statically for the download"
        )
    finally:
        if nginx:
            nginx.stop()
        if sidecar:
            sidecar.stop()
        comfy.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
