"""The cluster's figures, in one run: throughput with one node and with two, what the shared
PostgreSQL store costs against the embedded SQLite one on a single node, and the five figures
of bench/stack.py through a cluster node.

- Scaling: jobs of the test node that sleeps (`sidecar_test_sleep`, one step of SLEEP
  seconds) submitted all at once through nginx, to a cluster of one node and then of two, each
  node with its own CPU ComfyUI; jobs per second until every job is final. The sleep makes the
  backends, not this machine's cores, the bottleneck, as GPUs are in production.
- Store overhead: `pipeline_check` (a few milliseconds in ComfyUI) one job at a time, end to
  end (submit, long poll until final), against one sidecar on SQLite and one node on
  PostgreSQL sharing the same ComfyUI; and a burst of jobs from several clients.
- The five figures (bench/figures.py) of a cluster node on PostgreSQL with the cluster's
  defaults (COMFYUI_MAX_PENDING, LEASE_SECONDS, RECONCILE_INTERVAL), behind the shipped nginx,
  against its ComfyUI direct: what a deployment on the shared store gives one client.

Run with `make bench` (or `python -m bench.cluster`). Prints numbers; never fails on timing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from api.config import Config
from api.postgres_store import PostgresJobStore
from bench.figures import five, print_rows
from bench.load import load_generator
from bench.stack import behind_nginx, bench_env, seed_jobs
from stack.__main__ import nginx_values
from stack.nginx import NginxProcess
from tests.integration.conftest import start_sidecar
from tests.support.cluster import Node, start_comfyuis
from tests.support.comfyui import free_port
from tests.support.postgres import PostgresProcess, empty_database

FINAL = ("completed", "failed", "cancelled")


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def wait_final(http: requests.Session, base: str, job_id: str) -> dict:
    since = None
    while True:
        query = {"wait": 30} if since is None else {"wait": 30, "since": since}
        job = http.get(f"{base}/api/status/{job_id}", params=query, timeout=60).json()
        if job["status"] in FINAL:
            assert job["status"] == "completed", job
            return job
        since = job["version"]


def burst(base: str, body: dict, jobs: int, clients: int) -> float:
    """Jobs per second: `jobs` submissions from `clients` threads, until all are final."""
    start = time.perf_counter()

    def submit(i: int) -> str:
        http = session()
        answer = http.post(f"{base}/api/generate", json={**body, "prompt": f"b{i}"}, timeout=60)
        assert answer.status_code == 202, answer.text
        return answer.json()["job_id"]

    with ThreadPoolExecutor(clients) as pool:
        ids = list(pool.map(submit, range(jobs)))
    watcher = session()
    for job_id in ids:
        wait_final(watcher, base, job_id)
    return jobs / (time.perf_counter() - start)


def one_at_a_time(base: str, jobs: int) -> list[float]:
    """End-to-end milliseconds of `jobs` pipeline_check jobs, one after the other."""
    http = session()
    times = []
    for i in range(jobs):
        t0 = time.perf_counter()
        body = {"workflow": "pipeline_check", "prompt": "x", "color": i, "width": 64, "height": 64}
        job_id = http.post(f"{base}/api/generate", json=body, timeout=30).json()["job_id"]
        wait_final(http, base, job_id)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def balanced_nginx(root: Path, nodes: list[Node]) -> NginxProcess:
    values = nginx_values(
        Config.from_env(nodes[0].env),
        {"STACK_HTTP_PORT": str(free_port()), "STACK_COMFYUI_UI_PORT": str(free_port())},
    )
    values["NGINX_SIDECAR_UPSTREAM"] = f"127.0.0.1:{nodes[0].port}"
    values["NGINX_SIDECAR_EXTRA_SERVERS"] = " ".join(
        f"server 127.0.0.1:{n.port} resolve;" for n in nodes[1:]
    )
    values["NGINX_COMFYUI_UPSTREAM"] = f"127.0.0.1:{nodes[0].comfy.port}"
    return NginxProcess(root, values).start()


def scaling(root: Path, postgres: PostgresProcess, comfys: dict, args) -> dict[int, list]:
    body = {"workflow": "sidecar_test_sleep", "steps": 1, "seconds_per_step": args.sleep}
    rates: dict[int, list] = {1: [], 2: []}
    for size in (1, 2):
        url = postgres.database(f"scaling{size}")
        names = list(comfys)[:size]
        nodes = [Node(n, comfys[n], url, root / f"s{size}-{n}").start() for n in names]
        nginx = balanced_nginx(root / f"nginx{size}", nodes)
        try:
            burst(nginx.url, body, 4, 4)  # warm-up: every node's catalog and connections
            for _ in range(args.rounds):
                rates[size].append(burst(nginx.url, body, args.jobs, 8))
        finally:
            nginx.stop()
            for node in nodes:
                node.stop()
    return rates


def store_overhead(root: Path, postgres: PostgresProcess, comfy, args) -> dict[str, dict]:
    figures = {}
    url = postgres.database("overhead")
    empty_database(url)
    runs = {
        "sqlite": lambda: start_sidecar(
            root / "sqlite",
            comfy,
            comfy.port,
            RATE_LIMIT="",
            RATE_LIMIT_GENERATE="",
            MAX_UNFINISHED_JOBS="1000",
            LOG_LEVEL="warning",
        ),
        "postgresql": lambda: Node(
            "solo", comfy, url, root / "pg", COMFYUI_MAX_PENDING="1000", LOG_LEVEL="warning"
        ).start(),
    }
    for name, start in runs.items():
        process = start()
        base = process.url
        try:
            one_at_a_time(base, 5)  # warm-up
            latencies, bursts = [], []
            for _ in range(args.rounds):
                latencies += one_at_a_time(base, args.latency_jobs)
                bursts.append(
                    burst(
                        base,
                        {"workflow": "pipeline_check", "width": 64, "height": 64},
                        args.burst_jobs,
                        20,
                    )
                )
            figures[name] = {
                "p50": statistics.median(latencies),
                "p99": statistics.quantiles(latencies, n=100)[98],
                "burst": statistics.median(bursts),
            }
        finally:
            process.stop()
    return figures


def default_node(comfy, url: str, root: Path) -> Node:
    """A node on the store at `url` with the cluster's defaults (COMFYUI_MAX_PENDING,
    LEASE_SECONDS) and the bench's settings, started."""
    defaults = Config.from_env({})
    return Node(
        "node-1",
        comfy,
        url,
        root,
        **bench_env(),
        COMFYUI_MAX_PENDING=str(defaults.comfyui_max_pending),
        LEASE_SECONDS=str(defaults.lease_seconds),
    ).start()


def cluster_five(root: Path, postgres: PostgresProcess, comfy, args) -> list:
    """The five figures of one cluster node (the cluster's defaults, the shipped nginx)."""
    url = postgres.database("five")
    started = time.perf_counter()
    seeded = seed_jobs(PostgresJobStore(url, pool_size=2), args.seeded)
    print(f"seeded {len(seeded)} jobs in PostgreSQL in {time.perf_counter() - started:.1f}s")
    node = default_node(comfy, url, root / "five")
    try:
        # No tenant's row: tenant_deployment's sidecar is a single host's, not a node.
        with behind_nginx(root / "five", node.process, comfy, seeded, tenant=False) as deployment:
            return five(deployment, args, load_generator(), label="(cluster node)")
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="sleep jobs per scaling round")
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds each sleep job takes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-jobs", type=int, default=40)
    parser.add_argument("--burst-jobs", type=int, default=100)
    # The five figures, as bench/stack.py takes them.
    parser.add_argument("--five-jobs", dest="jobs_five", type=int, default=100)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--burst-clients", type=int, default=50)
    parser.add_argument("--seeded", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--five-rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    started = time.monotonic()
    try:
        with PostgresProcess() as postgres:
            comfys = start_comfyuis(root, {"a": True, "b": True})
            try:
                rates = scaling(root, postgres, comfys, args)
                stores = store_overhead(root, postgres, comfys["a"], args)
                five_args = argparse.Namespace(**{**vars(args), "jobs": args.jobs_five,
                                                  "rounds": args.five_rounds})  # fmt: skip
                rows = cluster_five(root, postgres, comfys["a"], five_args)
            finally:
                for comfy in comfys.values():
                    comfy.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)  # ComfyUIs' and nodes' folders: ~70 MB a run
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"\ncluster bench: {args.jobs} jobs of {args.sleep:g} s per round, {args.rounds} rounds")
    print(f"{'measure':44}{'value':>10}")
    print(f"{'jobs/s, one node':44}{one:>10.2f}")
    print(f"{'jobs/s, two nodes':44}{two:>10.2f}")
    print(f"{'two nodes / one node (target >= 1.9)':44}{two / one:>10.2f}")
    print(f"{'ideal jobs/s per node (1 / sleep)':44}{1 / args.sleep:>10.2f}")
    print(f"\n{'store':14}{'p50 ms':>10}{'p99 ms':>10}{'burst jobs/s':>14}")
    for name, f in stores.items():
        print(f"{name:14}{f['p50']:>10.1f}{f['p99']:>10.1f}{f['burst']:>14.1f}")
    sqlite, pg = stores["sqlite"], stores["postgresql"]
    print(f"{'pg / sqlite':14}{pg['p50'] / sqlite['p50']:>10.2f}{'':>10}"
          f"{pg['burst'] / sqlite['burst']:>14.2f}")  # fmt: skip
    rounded = {size: [round(r, 2) for r in found] for size, found in rates.items()}
    print(f"\nrounds: one node {rounded[1]}, two {rounded[2]}")
    print("\nthe five figures through a cluster node on PostgreSQL:")
    print_rows(rows)
    print(f"took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
