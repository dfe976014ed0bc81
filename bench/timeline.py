"""Where one job's time goes: the steps of a job, as the client, nginx's upstream (gunicorn),
the sidecar and ComfyUI each see them, against the same job sent to ComfyUI direct.

The stack is bench/stack.py's (a CPU ComfyUI, the sidecar under gunicorn behind the shipped
nginx). Its processes are started with bench/timeline_hooks/ on their path, which wraps a few
functions of ComfyUI's server and of the sidecar to stamp the time of each step (nothing in the
product is changed). Jobs run one at a time, the three clients taking turns: submitting with
`?wait=`, the three requests of a polling script, and ComfyUI direct. For each, every step
seen in nine jobs of ten is printed with its median time since the client sent the job, in the
order of those medians (steps in different processes overlap: the gap to the row above is a
difference of medians, not a duration). The stamps cost a few microseconds each, so the totals
run above bench.stack's.

Run with `python -m bench.timeline`. Prints numbers; never fails on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import requests

from api.postgres_store import PostgresJobStore
from api.sqlite_store import SQLiteJobStore
from bench.clients import ComfyClient, SidecarClient
from bench.cluster import default_node
from bench.stack import behind_nginx, bench_env, seed_jobs
from bench.timeline_hooks.sitecustomize import mark
from tests.integration.conftest import start_sidecar
from tests.support.comfyui import ComfyUIProcess, comfyui_env
from tests.support.postgres import PostgresProcess

HOOKS = Path(__file__).resolve().parent / "timeline_hooks"
START = "client sends the job"
# A step seen in fewer of the jobs than this (a reconciliation pass, a late retry) is left out.
SEEN_IN = 0.9


def _path_kind(url: str) -> str:
    path = url.split("?")[0].split("://", 1)[-1].partition("/")[2]
    for prefix in ("api/status", "api/image", "history", "view"):
        if path.startswith(prefix):
            return "/" + prefix
    return "/" + path


def stamp_requests() -> None:
    """Stamp each HTTP answer the bench's clients get, once its body is read."""
    send = requests.Session.send

    def timed(self, request, **kwargs):
        response = send(self, request, **kwargs)
        response.content  # noqa: B018 - read whole, as the clients do next
        mark(f"client has {request.method} {_path_kind(request.url)}")
        return response

    requests.Session.send = timed


def stamp_socket(client: ComfyClient) -> None:
    """Stamp the end of each run the direct client reads from ComfyUI's socket."""
    recv = client.ws.recv

    def timed():
        frame = recv()
        if isinstance(frame, str) and '"executing"' in frame and '"node": null' in frame:
            mark("client reads executing (end)")
        return frame

    client.ws.recv = timed


def read_marks(folder: Path) -> list[tuple[float, str]]:
    marks = []
    for file in folder.glob("*.log"):
        for line in file.read_text().splitlines():
            stamp, _, label = line.partition(" ")
            marks.append((float(stamp), label))
    return sorted(marks)


class Steps(dict):
    """One job's steps, {label: ms after the client sent it}, and when it was sent (`began`,
    Unix time: to find the job in a server's log)."""

    def __init__(self, began: float) -> None:
        super().__init__()
        self.began = began


def steps(marks: list[tuple[float, str]]) -> dict[str, list[Steps]]:
    """Each job's steps by client: {client: [{label: ms after the client sent it}]}; a label
    seen twice in a job is numbered (`label #2`)."""
    jobs: dict[str, list[Steps]] = defaultdict(list)
    job = None
    for stamp, label in marks:
        if label.startswith(START):
            job, seen = Steps(stamp), Counter()
            jobs[label[len(START) :].strip(" ()")].append(job)
            continue
        if job is None:
            continue
        seen[label] += 1
        job[label if seen[label] == 1 else f"{label} #{seen[label]}"] = (stamp - job.began) * 1000
    return jobs


def common_steps(jobs: list[dict[str, float]]) -> list[str]:
    """The steps seen in at least SEEN_IN of the jobs (the others: a pass, a retry...)."""
    counts = Counter(label for job in jobs for label in job)
    return [label for label, n in counts.items() if n >= SEEN_IN * len(jobs)]


def print_steps(name: str, jobs: list[dict[str, float]]) -> None:
    common = common_steps(jobs)
    at = {label: statistics.median(job[label] for job in jobs if label in job) for label in common}
    common.sort(key=at.get)
    print(f"\n{name} ({len(jobs)} jobs; ms: medians)")
    print(f"  {'step':52} {'after sending':>13} {'after the row above':>20}")
    before = 0.0
    for label in common:
        print(f"  {label:52} {at[label]:13.2f} {at[label] - before:20.2f}")
        before = at[label]


def print_slowest(name: str, jobs: list[Steps], count: int) -> None:
    """The `count` slowest jobs of a client (its last step latest), every step of each in the
    order it came, a step seen in fewer than nine jobs of ten marked `*`: what the medians
    leave out is where a slow job's time went."""
    common = set(common_steps(jobs))
    slowest = sorted(jobs, key=lambda job: max(job.values(), default=0.0), reverse=True)
    for rank, job in enumerate(slowest[:count], 1):
        total = max(job.values(), default=0.0)
        sent = datetime.fromtimestamp(job.began, UTC).strftime("%H:%M:%S.%f")
        print(f"\n{name}: slowest job {rank} of {len(jobs)} ({total:.2f} ms, sent {sent} UTC)")
        print(f"  {'step':52} {'after sending':>13} {'after the row above':>20}")
        before = 0.0
        for label, at in sorted(job.items(), key=lambda item: item[1]):
            rare = " " if label in common else "*"
            print(f"{rare} {label:52} {at:13.2f} {at - before:20.2f}")
            before = at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per client")
    parser.add_argument(
        "--without-status-files",
        action="store_true",
        help="no STATUS_DOCS_DIR: the sidecar answers every poll",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="a cluster node on a throwaway PostgreSQL (the cluster's defaults) instead",
    )
    parser.add_argument(
        "--slowest",
        type=int,
        default=0,
        metavar="N",
        help="also print every step of each client's N slowest jobs",
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sidecar-timeline-"))
    folder = root / "marks"
    folder.mkdir()
    # Inherited by ComfyUI and gunicorn (the test helpers start both with this environment).
    os.environ["TIMELINE_DIR"] = str(folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")])
    )
    python, comfy_dir = comfyui_env()
    comfy = ComfyUIProcess(python, comfy_dir, root / "comfyui")
    stack = contextlib.ExitStack()
    try:
        comfy.start()
        if args.cluster:
            postgres = stack.enter_context(PostgresProcess())
            url = postgres.database("timeline")
            seeded = seed_jobs(PostgresJobStore(url, pool_size=2), 3)
            node = default_node(comfy, url, root / "node")
            stack.callback(node.stop)
            sidecar = node.process
        else:
            sidecar_root = root / "sidecar"
            db = sidecar_root / "workspace" / "sidecar" / "jobs.sqlite3"
            seeded = seed_jobs(SQLiteJobStore(db), 3)
            docs = sidecar_root / "workspace" / "sidecar-status"
            docs = "" if args.without_status_files else docs
            sidecar = start_sidecar(
                sidecar_root, comfy, comfy.port, **bench_env(), STATUS_DOCS_DIR=str(docs)
            )
            stack.callback(sidecar.stop)
        with behind_nginx(root, sidecar, comfy, seeded) as deployment:
            clients = {
                "sidecar through nginx, ?wait=": SidecarClient(deployment.nginx, waits=True),
                "sidecar through nginx, ?wait=, the image": SidecarClient(
                    deployment.nginx, image_answer=True
                ),
                "sidecar through nginx, 3 requests": SidecarClient(deployment.nginx),
                "ComfyUI direct": ComfyClient(deployment.comfy),
            }
            for client in clients.values():  # warm-up: connections, first graph, caches
                for _ in range(3):
                    client.run_one()
            stamp_requests()  # this process's stamps go in the same folder, as the hooks'
            stamp_socket(clients["ComfyUI direct"])
            print(f"{args.jobs} jobs per client, one at a time, the clients taking turns ...")
            for _ in range(args.jobs):
                for name, client in clients.items():
                    mark(f"{START} ({name})")
                    client.run_one()
            mark(f"{START} (end)")
        jobs = steps(read_marks(folder))
        for name in clients:
            print_steps(name, jobs[name])
        for name in clients:
            print_slowest(name, jobs[name], args.slowest)
    finally:
        stack.close()
        comfy.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
