"""What a long-lived sidecar costs: memory and idle CPU over a month's store and many jobs.

`bench.stack` measures a fresh sidecar over 10,000 kept jobs. A deployment runs for weeks and
keeps JOB_RETENTION_DAYS (30) of jobs: this starts the sidecar under gunicorn (the bench's
settings, status files on as docker-compose.yml wires them, IDLE_UNLOAD_MINUTES set) over a
store of `--kept` finished jobs (copies of one, spread over 30 days; 2,000 of them with a status
file, as jobs once polled plainly), prints the RSS of gunicorn's processes after the start and
their CPU a second while idle, then sends `--rounds` rounds of `--per-round` jobs straight to
gunicorn from 8 clients (a quarter each: `?wait=`, plain polls, the event stream, long polls;
each then downloads its image, and every 50th job lists jobs and outputs and reads /api/health
and /metrics) and prints the RSS after each round, then the idle CPU (three windows: the first
holds the last round's tail). ComfyUI's output folder is emptied after each round (a full one
slows its saves, `bench.comfyui_saves`).
Run with `python -m bench.longrun` (part of `make bench`); figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from api.sqlite_store import SQLiteJobStore
from bench.clients import FINAL, SidecarClient
from bench.load import children, cpu_seconds, rss_mb
from bench.stack import bench_env, seed_jobs
from tests.integration.conftest import start_sidecar
from tests.support.comfyui import ComfyUIProcess, comfyui_env
from tests.support.sidecar import wait_for

CLIENTS = 8
POLLED_FILES = 2000
DAY = 86400.0


def keep_copies(db: Path, template: str, count: int) -> None:
    """`count` copies of the job `template` (new ids, no prompt or idempotency key), created
    over the last 30 days: one transaction, where the store's own calls took minutes."""
    conn = sqlite3.connect(db)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    now, spread = time.time(), 30 * DAY / count
    made = {
        "id": "lower(hex(randomblob(16)))",
        "prompt_id": "lower(hex(randomblob(16)))",
        "idempotency_key": "NULL",
        "created_at": f"{now} - n * {spread} - 5",
        "updated_at": f"{now} - n * {spread}",
        "finished_at": f"{now} - n * {spread}",
    }
    chosen = ", ".join(made.get(column, f'"{column}"') for column in columns)
    with conn:
        conn.execute(
            f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?)"
            f" INSERT INTO jobs ({', '.join(columns)})"
            f" SELECT {chosen} FROM seq, (SELECT * FROM jobs WHERE id = ?)",
            (count, template),
        )
    conn.close()


def rewritten(folder: Path) -> bool:
    """Whether every status file in the folder is more than the "{}" this bench wrote."""
    try:
        return all(
            entry.stat().st_size > 2 for entry in os.scandir(folder) if entry.name.endswith(".json")
        )
    except FileNotFoundError:  # replaced as it was read: not done yet
        return False


def idle_cpu(pids: list[int], seconds: float) -> float:
    """ms of CPU a second the processes use over `seconds` with nothing to do."""
    used, started = cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)  # a measuring window, not a wait for anything
    return (cpu_seconds(pids) - used) * 1000 / (time.monotonic() - started)


class Clients:
    """The bench's clients of one sidecar (bench.clients' SidecarClient, a pair a thread: one
    that submits with `?wait=`, one without): each job as one of four kinds of script does it."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._local = threading.local()

    def pair(self) -> tuple[SidecarClient, SidecarClient]:
        if not hasattr(self._local, "pair"):
            self._local.pair = (SidecarClient(self.base), SidecarClient(self.base, waits=True))
        return self._local.pair

    def job(self, n: int) -> None:
        plain, waiting = self.pair()
        http, base = plain.http, self.base
        kind = n % 4
        job = (waiting if kind == 0 else plain).send().json()
        if kind == 1:
            while job["status"] not in FINAL:  # a script polling every so often
                time.sleep(0.05)
                job = http.get(f"{base}/api/status/{job['job_id']}", timeout=30).json()
        elif kind == 2:
            events = f"{base}/api/status/{job['job_id']}/events"
            with http.get(events, stream=True, timeout=60) as stream:
                for line in stream.iter_lines():
                    if line.startswith(b"event: end"):
                        break
            job = http.get(f"{base}/api/status/{job['job_id']}", timeout=30).json()
        elif job["status"] not in FINAL:
            job = plain.wait(job["job_id"])  # long polls
        assert job["status"] == "completed", job
        image = http.get(base + job["image_url"], timeout=30)
        assert image.status_code == 200, image.status_code
        if n % 50 == 0:
            for path in ("/api/jobs?limit=20", "/api/outputs?limit=20", "/api/health", "/metrics"):
                http.get(base + path, timeout=30).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kept", type=int, default=100_000, help="finished jobs in the store")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=1000, help="jobs a round")
    args = parser.parse_args()
    python, comfy_dir = comfyui_env()
    root = Path(tempfile.mkdtemp(prefix="bench-longrun-"))
    comfy = ComfyUIProcess(python, comfy_dir, root / "comfyui")
    comfy.start()
    sidecar = None
    try:
        workspace = root / "sidecar" / "workspace"
        db = workspace / "sidecar" / "jobs.sqlite3"
        [template] = seed_jobs(SQLiteJobStore(db), 1)
        keep_copies(db, template, args.kept - 1)
        docs = workspace / "sidecar-status"
        docs.mkdir(parents=True)
        polled = sqlite3.connect(db).execute("SELECT id FROM jobs LIMIT ?", (POLLED_FILES,))
        for (job_id,) in polled:
            (docs / f"{job_id}.json").write_text("{}")  # out of step: the start rewrites them
        sidecar = start_sidecar(
            root / "sidecar", comfy, comfy.port, **bench_env(), STATUS_DOCS_DIR=str(docs),
            IDLE_UNLOAD_MINUTES="60",
        )  # fmt: skip
        # The start's full sweep has rewritten every file out of step with its row.
        wait_for(lambda: rewritten(docs), 120)
        master = sidecar._proc.pid
        pids = [master, *sorted(children(master))]
        clients = Clients(sidecar.url)
        clients.pair()[0].http.get(f"{sidecar.url}/api/health", timeout=30).raise_for_status()
        print(f"{args.kept:,} jobs kept, {POLLED_FILES:,} with a status file; RSS MB of"
              " gunicorn's master and workers")  # fmt: skip
        print(f"{'after':>18}  {'RSS MB':>24}  {'sum':>6}")

        def show(label: str) -> None:
            sizes = [rss_mb([pid])[0] for pid in pids]
            shown = ", ".join(f"{size:.1f}" for size in sizes)
            print(f"{label:>18}  {shown:>24}  {sum(sizes):6.1f}", flush=True)

        show("the start")
        started_idle = [idle_cpu(pids, 10) for _ in range(2)]
        done = 0
        for _ in range(args.rounds):
            with ThreadPoolExecutor(CLIENTS) as pool:
                list(pool.map(clients.job, range(done, done + args.per_round)))
            done += args.per_round
            for image in comfy.output_dir.glob("*.png"):
                image.unlink()
            show(f"{done:,} jobs")
        ended_idle = [idle_cpu(pids, 10) for _ in range(3)]
        print("idle CPU ms/s, windows of 10 s: after the start",
              ", ".join(f"{v:.2f}" for v in started_idle), "| after the last round",
              ", ".join(f"{v:.2f}" for v in ended_idle))  # fmt: skip
    finally:
        if sidecar is not None:
            sidecar.stop()
        comfy.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
