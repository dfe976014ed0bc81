"""The master's multiprocess metrics folder (api/metrics_folder.py) under a real gunicorn: removed
when the master exits, and, when a kill left it behind, by the next start."""

from tests.support.sidecar import SidecarProcess


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
