"""What a job costs the stack when its clients poll, as the primary API's scripts do.

Each client submits a job, reads GET /api/status/<job_id> every POLL_SECONDS until it is
final, downloads the image, and starts again. The job sleeps in ComfyUI (`sidecar_test_sleep`,
8 steps with progress, `job_seconds` in all): a stand-in for a GPU, which costs this machine's
CPUs nothing, so the CPU time gunicorn (and nginx) use is what the stack adds. Measured over
`rounds` consecutive windows once every client has a job queued, each from the end of one job
to the end of another (so it holds whole jobs: a window of a fixed length holds a fraction of a
job more or less, an error of one job in the seven or eight one client ends in 30 s); the cost
per job is a window's CPU time divided by the jobs that ended in it, the median of the rounds,
and its share of the job's own time is the figure to keep under 1 %.

Beside it, the same clients poll plain files that nginx serves as it serves the status files
(`file_polling_cost`): what nginx costs a poll when it does nothing but send a file, the least
any server in front of the API can cost one. Times the polls a job takes, it says how much of
the 1 % is left for the sidecar: at 100 clients, none.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable

from bench.clients import FINAL, session
from bench.figures import Deployment
from bench.load import cpu_seconds

POLL_SECONDS = 2.0
STEPS = 8


def polling_cost(
    base: str,
    processes: dict[str, Callable[[], list[int]]],
    clients: int,
    job_seconds: float,
    window: float,
    rounds: int = 3,
) -> dict:
    """CPU seconds of each group of `processes` per finished job, with `clients` polling: the
    median of `rounds` windows of at least `window` seconds, each ending as a job ends."""
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"started": 0, "done": 0, "requests": 0}
    ended = threading.Condition(lock)  # notified as each job ends

    failures: list[BaseException] = []

    def client() -> None:
        try:
            poll()
        except BaseException as exc:  # a dead client would leave the ramp-up below waiting
            failures.append(exc)
            stop.set()

    def poll() -> None:
        http, pick = session(), random.Random()
        while not stop.is_set():
            body = {
                "workflow": "sidecar_test_sleep",
                "prompt": "poll",
                "steps": STEPS,
                "seconds_per_step": job_seconds / STEPS,
                "seed": pick.randrange(1 << 48),
            }
            job_id = http.post(f"{base}/api/generate", json=body, timeout=60).json()["job_id"]
            with lock:
                counts["started"] += 1
                counts["requests"] += 1
            while True:
                if stop.wait(POLL_SECONDS):
                    return
                job = http.get(f"{base}/api/status/{job_id}", timeout=60).json()
                with lock:
                    counts["requests"] += 1
                if job["status"] in FINAL:
                    break
            if job["status"] == "completed":
                http.get(base + job["image_url"], timeout=60).raise_for_status()
            with lock:
                counts["done"] += 1
                counts["requests"] += 1
                ended.notify_all()

    threads = _spread([threading.Thread(target=client, daemon=True) for _ in range(clients)])
    while counts["started"] < clients and not failures:
        time.sleep(0.1)
    if failures:
        raise RuntimeError(f"a polling client failed: {failures[0]!r}") from failures[0]
    time.sleep(POLL_SECONDS)

    def at_a_job_end() -> dict:
        """The counts, the CPU times and the time, as the next job ends."""
        with lock:
            done = counts["done"]
            while counts["done"] == done and not failures:
                ended.wait(1.0)
            seen = {"jobs": counts["done"], "requests": counts["requests"]}
        seen["cpu"] = {name: cpu_seconds(pids()) for name, pids in processes.items()}
        return {**seen, "seconds": time.monotonic()}

    measured = []
    start = at_a_job_end()
    for _ in range(rounds):
        time.sleep(window)
        end = at_a_job_end()
        if failures:
            break
        jobs = end["jobs"] - start["jobs"]
        measured.append(
            {
                "jobs": jobs,
                "seconds": end["seconds"] - start["seconds"],
                "requests": end["requests"] - start["requests"],
                "cpu": {name: (end["cpu"][name] - start["cpu"][name]) / jobs for name in processes},
            }
        )
        start = end
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    if failures:
        raise RuntimeError(f"a polling client failed: {failures[0]!r}") from failures[0]
    # What is still queued would keep ComfyUI sleeping for the next measurement.
    session().post(f"{base}/api/queue/clear", json={"include_running": True}, timeout=60)
    return {
        "clients": clients,
        "jobs": sum(m["jobs"] for m in measured),
        "seconds": sum(m["seconds"] for m in measured),
        "requests_per_job": sum(m["requests"] for m in measured) / sum(m["jobs"] for m in measured),
        "cpu_per_job": {
            name: statistics.median(m["cpu"][name] for m in measured) for name in processes
        },
        "rounds": [sum(m["cpu"].values()) for m in measured],
    }


def file_polling_cost(d: Deployment, clients: int, seconds: float, rounds: int = 3) -> float:
    """nginx's CPU seconds per poll when `clients` poll a plain file each, every POLL_SECONDS,
    with the body of a status answer: the median of `rounds` windows of `seconds`."""
    body = session().get(f"{d.nginx}/api/status/{d.seeded[0]}", timeout=60).content
    for n in range(clients):
        (d.polled / f"{n}.json").write_bytes(body)
    stop, lock, polls = threading.Event(), threading.Lock(), [0]
    failures: list[BaseException] = []

    def client(n: int) -> None:
        http = session()
        try:
            while not stop.wait(POLL_SECONDS):
                http.get(f"{d.static}/polled/{n}.json", timeout=60).raise_for_status()
                with lock:
                    polls[0] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = _spread(
        [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    )
    time.sleep(POLL_SECONDS)
    measured = []
    for _ in range(rounds):
        with lock:
            before, cpu = polls[0], cpu_seconds(d.nginx_pids())
        time.sleep(seconds)
        with lock:
            after, spent = polls[0], cpu_seconds(d.nginx_pids()) - cpu
        measured.append(spent / max(1, after - before))
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    if failures:
        raise RuntimeError(f"a polling client failed: {failures[0]!r}") from failures[0]
    return statistics.median(measured)


def _spread(threads: list[threading.Thread]) -> list[threading.Thread]:
    """The clients' threads started over one poll interval, as independent scripts are."""
    for thread in threads:
        thread.start()
        time.sleep(POLL_SECONDS / len(threads))
    return threads


def print_costs(results: list[dict], job_seconds: float) -> None:
    names = list(results[0]["cpu_per_job"])
    header = "".join(f"{name + ' ms/job':>18}" for name in names)
    print(
        f"{'clients':>8}{'jobs':>6}{'requests/job':>14}{header}{'% of a job':>12}  target"
        "  (% in each window)"
    )
    for r in results:
        cpu = r["cpu_per_job"]
        share = 100 * sum(cpu.values()) / job_seconds
        costs = "".join(f"{cpu[name] * 1000:>18.1f}" for name in names)
        windows = " ".join(f"{100 * cost / job_seconds:.2f}" for cost in r["rounds"])
        print(
            f"{r['clients']:>8}{r['jobs']:>6}{r['requests_per_job']:>14.1f}{costs}"
            f"{share:>11.2f}%  < 1%    ({windows})"
        )
    print(
        f"(each job sleeps {job_seconds:g} s in ComfyUI with {STEPS} progress steps; clients "
        f"poll every {POLL_SECONDS:g} s; jobs: in all windows; ms/job: medians over the windows; "
        f"% of a job = all the columns / {job_seconds:g} s)"
    )
    floors = [r for r in results if "file_poll" in r]
    if floors:
        header = f"{'nginx ms/poll, a plain file':>30}{'times requests/job':>21}{'% of a job':>12}"
        print(f"{'clients':>8}{header}")
        for r in floors:
            per_job = r["file_poll"] * r["requests_per_job"]
            print(
                f"{r['clients']:>8}{r['file_poll'] * 1000:>30.3f}{per_job * 1000:>18.1f} ms"
                f"{100 * per_job / job_seconds:>11.2f}%"
            )
        print(
            "(the same clients polling plain files that nginx sends as it sends the status files:"
            " the least nginx can cost a job's requests, whatever answers them)"
        )
