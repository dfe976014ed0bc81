"""Request rates (wrk, or Python threads without it) and what processes cost (memory, CPU),
for the benchmarks."""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from bench.clients import session


def wrk_rate(
    base: str,
    paths: list[str],
    seconds: int,
    connections: int,
    lua_dir: Path,
    headers: dict[str, str] | None = None,
):
    """(requests/s, bytes/s) of `paths` picked at random, over `connections` keep-alive
    connections, each request with `headers`."""
    script = lua_dir / f"paths{abs(hash((tuple(paths), tuple((headers or {}).items()))))}.lua"
    listing = ",".join(json.dumps(p) for p in paths)
    sent = "".join(
        f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n"
        for name, value in (headers or {}).items()
    )
    script.write_text(
        sent + f"local paths = {{{listing}}}\n"
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


def python_rate(
    base: str,
    paths: list[str],
    seconds: int,
    connections: int,
    lua_dir: Path | None = None,  # wrk_rate's script folder: unused, taken alike
    headers: dict[str, str] | None = None,
):
    """Fallback without wrk: threads with keep-alive sessions (the client's own CPU limits it)."""
    counts, sizes = [0] * connections, [0] * connections
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        http, pick = session(), random.Random(i)
        http.headers.update(headers or {})
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


def load_generator():
    """wrk when installed (make bench installs it), else Python threads."""
    return wrk_rate if shutil.which("wrk") else python_rate


def rates(load, targets: dict[str, tuple], rounds: int, **kw) -> dict:
    """Median (requests/s, bytes/s) of each target, (base, paths) or (base, paths, headers),
    the targets taking turns each round."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (base, paths, *headers) in targets.items():
            runs[name].append(load(base, paths, headers=headers[0] if headers else None, **kw))
    return {
        name: (statistics.median(r for r, _ in got), statistics.median(b for _, b in got))
        for name, got in runs.items()
    }


def children(pid: int) -> list[int]:
    """The direct children of a process (nginx's workers, gunicorn's)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


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


def cpu_seconds(pids: list[int]) -> float:
    """CPU time the processes (every thread, ended ones included) used so far, to the
    nanosecond: each process's CPU clock (Linux's clock_getcpuclockid, made by hand: Python
    has no binding). /proc/<pid>/stat counts in clock ticks (10 ms), which put an error of up
    to 10 ms per process on a window's figure: a millisecond or more per job at one client."""
    total = 0.0
    for pid in pids:
        try:
            total += time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, SCHED)
        except OSError:
            continue  # gone
    return total
