"""The multiprocess metrics folder a master makes (api/metrics_folder.py): named after its pid,
and removed by a later start once that master is gone."""

import os
import subprocess
import sys
from pathlib import Path

from api import metrics_folder


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_new_folder_carries_this_process_s_pid(tmp_path):
    made = metrics_folder.make(str(tmp_path))
    assert os.path.isdir(made)
    assert os.path.basename(made).startswith(f"comfy-sidecar-metrics-{os.getpid()}-")


def test_a_dead_master_s_folder_is_removed_and_a_live_one_s_kept(tmp_path):
    dead = tmp_path / f"comfy-sidecar-metrics-{dead_pid()}-abc123"
    (dead / "counter_1.db").parent.mkdir()
    (dead / "counter_1.db").write_bytes(b"\0" * 64)
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    ) as live_master:
        live = tmp_path / f"comfy-sidecar-metrics-{live_master.pid}-def456"
        live.mkdir()
        made = metrics_folder.make(str(tmp_path))
        live_master.stdin.close()
    assert not dead.exists()
    assert live.is_dir()
    assert os.path.isdir(made)


def test_a_folder_of_this_pid_is_a_former_process_s(tmp_path):
    # A container restarted after a kill runs its master as pid 1 again.
    former = tmp_path / f"comfy-sidecar-metrics-{os.getpid()}-old"
    former.mkdir()
    assert metrics_folder.remove_stale(tmp_path) == [former]
    assert not former.exists()


def test_other_names_and_plain_files_are_left_alone(tmp_path):
    pid = dead_pid()
    kept = [
        tmp_path / "comfy-sidecar-metrics-abcdef",  # an older release's name: no pid
        tmp_path / f"other-{pid}-abc",
        tmp_path / f"comfy-sidecar-metrics-{pid}-",
    ]
    for folder in kept:
        folder.mkdir()
    plain = tmp_path / f"comfy-sidecar-metrics-{pid}-file"
    plain.write_text("not a folder")
    link = tmp_path / f"comfy-sidecar-metrics-{pid}-link"
    link.symlink_to(kept[0])
    assert metrics_folder.remove_stale(tmp_path) == []
    assert all(folder.is_dir() for folder in kept)
    assert plain.is_file() and link.is_symlink()


def test_an_unreadable_parent_removes_nothing(tmp_path):
    assert metrics_folder.remove_stale(tmp_path / "missing") == []


def test_prepare_makes_a_folder_of_the_master_s_own_when_none_is_named(tmp_path):
    environ = {}
    made = metrics_folder.prepare(environ, parent=str(tmp_path))
    assert made is not None and os.path.isdir(made)
    assert environ["PROMETHEUS_MULTIPROC_DIR"] == made


def test_prepare_empties_a_named_folder_and_does_not_own_it(tmp_path):
    named = tmp_path / "metrics"
    named.mkdir()
    (named / "counter_1.db").write_bytes(b"old counts")
    (named / "notes.txt").write_text("not ours")
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(named)}
    assert metrics_folder.prepare(environ) is None
    assert sorted(p.name for p in named.iterdir()) == ["notes.txt"]


def test_a_reload_of_the_same_master_keeps_the_counts(tmp_path):
    # gunicorn reads gunicorn.conf.py again on SIGHUP, in the same master.
    environ = {}
    made = metrics_folder.prepare(environ, parent=str(tmp_path))
    counts = Path(made) / "counter_7.db"
    counts.write_bytes(b"counts so far")
    assert metrics_folder.prepare(environ, parent=str(tmp_path)) == made
    assert environ["PROMETHEUS_MULTIPROC_DIR"] == made and counts.exists()

    named = tmp_path / "named"
    named.mkdir()
    environ = {"PROMETHEUS_MULTIPROC_DIR": str(named)}
    assert metrics_folder.prepare(environ) is None
    (named / "counter_8.db").write_bytes(b"counts so far")
    assert metrics_folder.prepare(environ) is None
    assert (named / "counter_8.db").exists()


def test_another_process_s_mark_is_a_first_start(tmp_path):
    # A new master started from one's environment (gunicorn's USR2, a script): its own start.
    named = tmp_path / "named"
    named.mkdir()
    (named / "counter_1.db").write_bytes(b"old counts")
    environ = {
        "PROMETHEUS_MULTIPROC_DIR": str(named),
        metrics_folder.PREPARED: f"{dead_pid()} ",
    }
    assert metrics_folder.prepare(environ) is None
    assert list(named.iterdir()) == []
    assert environ[metrics_folder.PREPARED] == f"{os.getpid()} "
