"""The master's multiprocess metrics folder (api/metrics_folder.py) under a real gunicorn: removed
when the master exits, and, when a kill left it behind, by the next start; a reload (SIGHUP)
keeps it, and the counts in it."""

import os
import signal
import urllib.error
import urllib.request

from tests.support.sidecar import SidecarProcess, wait_for


def folders(tmp_path, pid=None):
    return sorted(tmp_path.glob(f"comfy-sidecar-metrics-{pid or ''}*"))


def sidecar(tmp_path, name):
    # The master's own folder (none named), made in this test's temporary folder.
    env = {
        "WORKSPACE_PATH": str(tmp_path / name),
        "TRACKER_ENABLED": "false",
        "PROMETHEUS_MULTIPROC_DIR": "",
        "TMPDIR": str(tmp_path),
    }
    return SidecarProcess(env, tmp_path / f"{name}.log")


def test_a_killed_master_s_folder_is_removed_by_the_next_start(tmp_path):
    killed = sidecar(tmp_path, "killed").start()
    try:
        (left,) = folders(tmp_path, killed._proc.pid)
    finally:
        killed.kill()
    assert left.is_dir()  # nothing ran to remove it

    second = sidecar(tmp_path, "second").start()
    try:
        assert not left.exists()
        (own,) = folders(tmp_path)
        assert own.name.startswith(f"comfy-sidecar-metrics-{second._proc.pid}-")
    finally:
        second.stop()
    assert folders(tmp_path) == []  # an orderly exit removes its own


def not_found_count(process) -> float:
    """What /metrics counts of the status reads of unknown jobs (404s)."""
    with urllib.request.urlopen(process.url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    route = 'route="/api/status/<job_id>",status="404"'
    lines = [line for line in text.splitlines() if line.startswith("sidecar_http_requests_total")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if route in line)


def read_unknown_jobs(process, times: int) -> None:
    for _ in range(times):
        try:
            urllib.request.urlopen(process.url + "/api/status/no-such-job", timeout=10)
        except urllib.error.HTTPError as answer:
            assert answer.code == 404


def test_a_reload_keeps_the_counts_and_the_folder_is_still_removed_at_exit(tmp_path):
    process = sidecar(tmp_path, "reloaded").start()
    try:
        (own,) = folders(tmp_path, process._proc.pid)
        read_unknown_jobs(process, 5)
        assert not_found_count(process) == 5
        # SIGHUP: gunicorn reads its configuration again and replaces every worker.
        before = process.worker_pids()
        os.kill(process._proc.pid, signal.SIGHUP)
        wait_for(
            lambda: (
                len(process.worker_pids() - before) == 2 and not (process.worker_pids() & before)
            ),
            30,
            message="the reload's new workers",
        )
        read_unknown_jobs(process, 2)
        assert not_found_count(process) == 7  # counters do not go back
        assert folders(tmp_path) == [own]
    finally:
        process.stop()
    assert folders(tmp_path) == []
