"""The five figures of a deployment against ComfyUI direct, the two taking turns in one run:
end-to-end latency, a burst, status reads, an image download, memory. bench/stack.py measures
the embedded store's stack with them, bench/cluster.py a cluster node on PostgreSQL."""

from __future__ import annotations

import random
import shutil
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from bench.clients import (
    ComfyClient,
    SidecarClient,
    burst_comfy,
    burst_sidecar,
    latency,
    quantile,
    session,
)
from bench.load import rates, rss_mb

Row = tuple[str, float, float | None, float | None, str]

# A 4 MB "image": random bytes behind a PNG signature.
IMAGE_NAME = "bench_4mb.png"
# Names of it read at random for "checked, new": enough that a round's ~3,000 reads seldom
# pick one nginx has kept a yes for.
ONCE_NAMES = 50_000


@dataclass
class Deployment:
    """One measured deployment: its addresses, the finished jobs in its store, its processes."""

    sidecar: str  # gunicorn itself
    nginx: str  # the shipped nginx in front of it, as a public deployment renders it
    nginx_checked: str  # the same nginx where every image request is checked by the sidecar
    static: str  # nginx serving the output folder as plain files, for comparison
    comfy: str  # ComfyUI itself
    output_dir: Path
    seeded: list[str]
    pids: Callable[[], list[int]]  # gunicorn's master and workers
    nginx_pids: Callable[[], list[int]]  # the public nginx's master and workers
    scratch: Path  # the load generator's scripts
    polled: Path | None = None  # the static server's /polled/ folder (bench/polling.py)
    # Given image names (in the output folder), a deployment whose one API key sees only its
    # own images, those among them, while it runs: (its nginx, the key, their signed URLs).
    tenant: Callable[[list[str]], AbstractContextManager[tuple[str, str, list[str]]]] | None = None


def five(d: Deployment, args, load, label: str = "") -> list[Row]:
    """The five figures as table rows (sidecar, direct, ratio, target); prints breakdowns."""
    rows: list[Row] = []
    tag = f" {label}" if label else ""

    print(f"latency{tag}: {args.jobs} jobs each, one at a time ...", flush=True)
    comfy_client = ComfyClient(d.comfy)
    clients = {
        "sidecar": SidecarClient(d.sidecar),
        "nginx": SidecarClient(d.nginx),
        # One request instead of two: the submission answers with the finished job.
        "nginx ?wait=": SidecarClient(d.nginx, waits=True),
        # And the image as its answer (Accept: image/png): a prompt in, an image out.
        "nginx ?wait= image": SidecarClient(d.nginx, image_answer=True),
        "direct": comfy_client,
    }
    times = latency(clients, args.jobs)
    comfy_client.close()
    for name in ("sidecar", "nginx", "nginx ?wait="):
        phases = clients[name].phases[3:]  # without the warm-up
        p50 = [statistics.median(p[i] for p in phases) for i in range(4)]
        print(
            f"  {name} p50 ms: POST /api/generate {p50[0]:.1f}, long poll {p50[1]:.1f}, "
            f"image {p50[2]:.1f}; created -> finished in the job record {p50[3]:.1f}"
        )
    for q in (50, 99):
        direct = quantile(times["direct"], q)
        for name, via in (
            ("sidecar", "gunicorn"),
            ("nginx", "nginx"),
            ("nginx ?wait=", "nginx, ?wait="),
            ("nginx ?wait= image", "nginx, ?wait=, the image"),
        ):
            mine = quantile(times[name], q)
            target = "≤ 1.25" if q == 50 else ""
            rows.append((f"end-to-end p{q} ms ({via})", mine, direct, mine / direct, target))

    print(f"burst{tag}: {args.burst} jobs from {args.burst_clients} clients ...", flush=True)
    runs: dict[str, list] = {"sidecar": [], "direct": []}
    for _ in range(args.rounds):
        runs["sidecar"].append(burst_sidecar(d.sidecar, args.burst, args.burst_clients))
        runs["direct"].append(burst_comfy(d.comfy, args.burst, args.burst_clients))
    for name, got in runs.items():
        print(
            f"  {name}: all submitted after {statistics.median(s for s, _ in got):.2f}s, "
            f"all done after {statistics.median(e for _, e in got):.2f}s (medians)"
        )
    mine = args.burst / statistics.median(e for _, e in runs["sidecar"])
    direct = args.burst / statistics.median(e for _, e in runs["direct"])
    rows.append(("burst jobs/s (gunicorn)", mine, direct, mine / direct, "≥ 0.95"))

    print(f"status reads{tag}: {args.connections} connections ...", flush=True)
    history = session().get(f"{d.comfy}/history", params={"max_items": 1000}, timeout=30).json()
    sample = random.Random(1).sample(d.seeded, min(1000, len(d.seeded)))
    got = rates(
        load,
        {
            "sidecar": (d.sidecar, [f"/api/status/{j}" for j in sample]),
            "nginx": (d.nginx, [f"/api/status/{j}" for j in sample]),
            "direct": (d.comfy, [f"/history/{p}" for p in list(history)[:1000]]),
        },
        args.rounds,
        seconds=args.seconds,
        connections=args.connections,
        lua_dir=d.scratch,
    )
    direct = got["direct"][0]
    for name, via, target in (("sidecar", "gunicorn", "≥ 1.0"), ("nginx", "nginx", "≥ 1.0")):
        rows.append((f"status reads req/s ({via})", got[name][0], direct, got[name][0] / direct,
                     target))  # fmt: skip

    print(f"image download{tag}: 4 MB PNG ...", flush=True)
    image = d.output_dir / IMAGE_NAME
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(4).randbytes(4 * 1024 * 1024 - 8))
    # The same file under many names: each read asks about a name nginx has not been told
    # about yet (a client downloading each new image once), where the repeated name is a yes
    # nginx keeps (a browser or a script reading it again).
    once = d.output_dir / "bench-once"
    once.mkdir(exist_ok=True)
    names = [f"bench-once/{i}.png" for i in range(ONCE_NAMES)]
    for name in names:
        (d.output_dir / name).hardlink_to(image)
    targets = {
        "public": (d.nginx, [f"/api/image/{IMAGE_NAME}"]),
        "checked": (d.nginx_checked, [f"/api/image/{IMAGE_NAME}"]),
        "checked once": (d.nginx_checked, [f"/api/image/{name}" for name in names]),
        "static": (d.static, [f"/static/{IMAGE_NAME}"]),
    }
    try:
        # A key that sees only its own images: nginx asks about each new name (no caller yes).
        with d.tenant(names) if d.tenant else nullcontext() as tenant:
            if tenant:
                url, key, signed = tenant
                paths = targets["checked once"][1]
                targets["tenant once"] = (url, paths, {"Authorization": f"Bearer {key}"})
                # The same new images by the signed URLs the key is handed (IMAGE_URL_SECRET).
                targets["tenant signed"] = (url, signed)
            got = rates(
                load,
                targets,
                args.rounds,
                seconds=args.seconds,
                connections=8,
                lua_dir=d.scratch,
            )
    finally:
        shutil.rmtree(once)
    static = got["static"][1] / 2**20
    for name, via in (
        ("public", "nginx, public"),
        ("checked", "nginx, checked, again"),
        ("checked once", "nginx, checked, new"),
        ("tenant once", "nginx, tenant key, new"),
        ("tenant signed", "nginx, tenant, signed URL"),
    ):
        if name in got:
            mine = got[name][1] / 2**20
            rows.append((f"image download MB/s ({via})", mine, static, mine / static, "≥ 0.9"))

    pids = d.pids()
    rss, pss = rss_mb(pids)
    rows.append((f"memory RSS MB ({len(pids)} processes)", rss, None, None, "≤ 150"))
    rows.append((f"memory PSS MB ({len(pids)} processes)", pss, None, None, ""))
    return rows


def print_rows(rows: list[Row]) -> None:
    print(f"{'measure':<46}{'sidecar':>10}{'direct':>10}{'ratio':>8}  target")
    for measure, mine, direct, ratio, target in rows:
        direct_text = f"{direct:>10.1f}" if direct is not None else f"{'-':>10}"
        ratio_text = f"{ratio:>8.2f}" if ratio is not None else f"{'-':>8}"
        print(f"{measure:<46}{mine:>10.1f}{direct_text}{ratio_text}  {target}")
    print(
        "direct = ComfyUI itself (POST /prompt + WebSocket + /history + /view; GET "
        "/history/<id>), or nginx serving the same file statically for the download"
    )


STATIC_SERVER = """# Benchmark only: the output directory as plain static files, for comparison
# with the API's image paths.
server {{
    listen 127.0.0.1:{port};
    location /static/ {{
        alias {outputs}/;
        expires 1h;
    }}
    # Plain files polled as nginx sends the status files (bench/polling.py): as they are, never
    # compressed or cached. The least a poll nginx answers can cost, for comparison.
    location /polled/ {{
        alias {polled}/;
        default_type application/json;
        gzip off;
        etag off;
        add_header Cache-Control "no-cache";
    }}
}}
"""
