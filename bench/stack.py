"""The real stack against ComfyUI direct, in one run: a CPU ComfyUI (the test helpers'), the
sidecar under gunicorn and the shipped nginx, configured as docker-compose.yml runs them, each
measurement taken against the sidecar and against ComfyUI (or nginx's static file serving) in
the same run, printed as one table; then what a job costs the stack when 1, 10 and 100
clients poll for it.

Run with `make bench` (or `python -m bench.stack`). Prints numbers; never fails on timing.
Figures are medians over repeated runs; ratios are sidecar / direct (> 1 is slower for
latencies, < 1 is slower for rates).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

from api import image_links
from api.config import Config
from api.job import JobStatus, image_path
from api.jobstore import JobStore
from api.sqlite_store import SQLiteJobStore
from bench.clients import GRAPH
from bench.figures import STATIC_SERVER, Deployment, five, print_rows
from bench.load import children, load_generator, wrk_rate
from bench.polling import file_polling_cost, polling_cost, print_costs
from stack.__main__ import SIDECAR_BEHIND_NGINX, nginx_values
from stack.nginx import NginxProcess
from tests.integration.conftest import start_sidecar
from tests.support.comfyui import ComfyUIProcess, comfyui_env, free_port
from tests.support.jobs import add_job
from tests.support.sidecar import SidecarProcess

# As docker-compose.yml runs the sidecar behind the shipped nginx (plus the bench's own needs:
# no rate limits, room for the bursts), for a public deployment: no API keys, open to anyone
# who reaches nginx (here: loopback only), so nginx sends images itself.
PUBLIC = {"ALLOW_UNAUTHENTICATED": "true", "API_HOST": "127.0.0.1"}


def bench_env() -> dict[str, str]:
    defaults = Config.from_env({})
    return {
        **SIDECAR_BEHIND_NGINX,
        **PUBLIC,
        # The tracker's defaults, not the integration tests' faster ones.
        "RECONCILE_INTERVAL": str(defaults.reconcile_interval),
        "LOST_JOB_GRACE": str(defaults.lost_job_grace),
        "LOG_LEVEL": "warning",
        "RATE_LIMIT": "",
        "RATE_LIMIT_GENERATE": "",
        "MAX_UNFINISHED_JOBS": "1000",
    }


def seed_jobs(store: JobStore, count: int) -> list[str]:
    """`count` completed jobs, each with one image."""
    ids = []
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
            graph=GRAPH,
        )
        store.mark_submitted(job_id, uuid.uuid4().hex)
        image = {"filename": f"PipelineCheck_{i:05d}_.png", "subfolder": "", "type": "output"}
        store.finish(job_id, JobStatus.COMPLETED, [image])
        ids.append(job_id)
    store.close()
    return ids


@contextmanager
def behind_nginx(
    root: Path,
    sidecar: SidecarProcess,
    comfy: ComfyUIProcess,
    seeded: list[str],
    tenant: bool = True,
):
    """The sidecar behind two of the shipped nginx, as a public deployment renders it and with
    every image checked by the sidecar (as with keys), plus nginx serving the output folder as
    static files: the Deployment the five figures measure, while it runs. `tenant`: with a
    sidecar of the same kind for a key that sees only its own images (tenant_deployment)."""
    config = Config.from_env(sidecar.env)
    outputs = comfy.output_dir
    static_port = free_port()
    template = root / "bench-static.conf.template"
    polled = root / "polled"
    polled.mkdir(exist_ok=True)
    template.write_text(
        STATIC_SERVER.format(port=static_port, outputs=outputs.resolve(), polled=polled.resolve())
    )
    nginxes = []
    try:
        for name, extra, static in (("nginx", {}, [template]),
                                    ("nginx-checked", {"API_KEYS_SET": "yes"}, [])):  # fmt: skip
            nginxes.append(shipped_nginx(root / name, config, sidecar, comfy, extra, static))
        scratch = root / "lua"
        scratch.mkdir(exist_ok=True)
        public = nginxes[0]
        yield Deployment(
            sidecar=sidecar.url,
            nginx=public.url,
            nginx_checked=nginxes[1].url,
            static=f"http://127.0.0.1:{static_port}",
            comfy=comfy.url,
            output_dir=outputs,
            seeded=seeded,
            pids=lambda: [sidecar._proc.pid, *sorted(sidecar.worker_pids())],
            nginx_pids=lambda: [public._proc.pid, *children(public._proc.pid)],
            scratch=scratch,
            polled=polled,
            tenant=(lambda names: tenant_deployment(root, comfy, names)) if tenant else None,
        )
    finally:
        for nginx in nginxes:
            nginx.stop()


def shipped_nginx(
    root: Path,
    config: Config,
    sidecar: SidecarProcess,
    comfy: ComfyUIProcess,
    extra: dict[str, str] | None = None,
    static: Sequence[Path] = (),
) -> NginxProcess:
    """The shipped nginx as `make stack` renders it for `config` (and `extra` values), in
    front of `sidecar` and `comfy`, with the `static` server blocks beside it; started."""
    values = nginx_values(
        config, {"STACK_HTTP_PORT": str(free_port()), "STACK_COMFYUI_UI_PORT": str(free_port())}
    )
    values.update(extra or {}, NGINX_SIDECAR_UPSTREAM=f"127.0.0.1:{sidecar.port}")
    values["NGINX_COMFYUI_UPSTREAM"] = f"127.0.0.1:{comfy.port}"
    return NginxProcess(root, values, extra=list(static)).start()


# The one key of tenant_deployment's sidecar, named "tenant", with the generate scope.
TENANT_KEY = "bench-tenant-0123456789abcdef"
# Its IMAGE_URL_SECRET: the key's image URLs are signed, for the "signed URL" row.
TENANT_SECRET = "bench-image-url-secret-0123456789abcdef"


@contextmanager
def tenant_deployment(root: Path, comfy: ComfyUIProcess, names: list[str]):
    """A sidecar whose one API key sees only its own images (`names`, files of the output
    folder recorded as its job's), behind the shipped nginx as a deployment with keys renders
    it, with signed image URLs on (IMAGE_URL_SECRET): nginx asks the sidecar about each new
    name read with the key, and sends one read by its signed URL at once. Yields (nginx's URL,
    the key, the signed URLs of `names`, as the sidecar hands them to the key)."""
    sidecar_root = root / "tenant"
    store = SQLiteJobStore(sidecar_root / "workspace" / "sidecar" / "jobs.sqlite3")
    add_job(store, "bench-tenant-job", "bench-tenant-prompt", submitted=True, owner="tenant")
    first = {"filename": names[0].rpartition("/")[2], "subfolder": names[0].rpartition("/")[0]}
    # Finished, nothing for its tracker to do; its first image, to compare URLs with.
    store.finish("bench-tenant-job", JobStatus.COMPLETED, [{**first, "type": "output"}])
    for name in names:
        store.add_file("bench-tenant-job", name)
    store.close()
    env = {
        **bench_env(),
        "API_KEYS": f"tenant:{TENANT_KEY}:generate",
        "IMAGE_URL_SECRET": TENANT_SECRET,
    }
    del env["ALLOW_UNAUTHENTICATED"]
    sidecar = start_sidecar(sidecar_root, comfy, comfy.port, **env)
    try:
        config = Config.from_env(sidecar.env)
        nginx = shipped_nginx(root / "nginx-tenant", config, sidecar, comfy)
        try:
            signed = [
                image_links.signed(image_path({"filename": name}), TENANT_SECRET, 3600)
                for name in names
            ]
            # The bench's URLs are the ones the sidecar hands out.
            status = requests.get(
                f"{nginx.url}/api/status/bench-tenant-job",
                headers={"Authorization": f"Bearer {TENANT_KEY}"},
                timeout=30,
            ).json()
            if status["image_url"] != signed[0]:
                raise RuntimeError(f"signed URLs differ: {status['image_url']} {signed[0]}")
            yield nginx.url, TENANT_KEY, signed
        finally:
            nginx.stop()
    finally:
        sidecar.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100, help="latency: jobs per client")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--burst-clients", type=int, default=50)
    parser.add_argument("--seeded", type=int, default=10_000, help="jobs in the store")
    parser.add_argument("--seconds", type=int, default=5, help="per load run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per target (load, burst)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pollers", default="1,10,100", help="polling clients per measurement")
    parser.add_argument("--job-seconds", type=float, default=2.0, help="polled jobs' length")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per polling window")
    parser.add_argument("--polling-rounds", type=int, default=3, help="windows per measurement")
    args = parser.parse_args()
    load = load_generator()
    print(f"load generator: {'wrk' if load is wrk_rate else 'Python threads (no wrk)'}")

    root = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    python, comfy_dir = comfyui_env()
    comfy = ComfyUIProcess(python, comfy_dir, root / "comfyui")
    sidecar = None
    try:
        comfy.start()
        print(f"ComfyUI up in {comfy.startup_seconds:.1f}s")
        sidecar_root = root / "sidecar"
        db = sidecar_root / "workspace" / "sidecar" / "jobs.sqlite3"
        started = time.perf_counter()
        seeded = seed_jobs(SQLiteJobStore(db), args.seeded)
        print(f"seeded {len(seeded)} jobs in {time.perf_counter() - started:.1f}s")
        docs = sidecar_root / "workspace" / "sidecar-status"  # as docker-compose.yml has it
        sidecar = start_sidecar(
            sidecar_root, comfy, comfy.port, **bench_env(), STATUS_DOCS_DIR=str(docs)
        )
        with behind_nginx(root, sidecar, comfy, seeded) as deployment:
            rows = five(deployment, args, load)
            stack = {"gunicorn": deployment.pids, "nginx": deployment.nginx_pids}
            costs = []
            for clients in map(int, args.pollers.split(",")):
                print(f"polling cost: {clients} clients every 2 s ...", flush=True)
                cost = polling_cost(
                    deployment.nginx,
                    stack,
                    clients,
                    args.job_seconds,
                    args.window,
                    args.polling_rounds,
                )
                print(f"the same polls of plain files: {clients} clients ...", flush=True)
                cost["file_poll"] = file_polling_cost(
                    deployment, clients, args.window / 2, args.polling_rounds
                )
                costs.append(cost)

        print()
        print_rows(rows)
        print()
        print_costs(costs, args.job_seconds)
    finally:
        if sidecar:
            sidecar.stop()
        comfy.stop()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
