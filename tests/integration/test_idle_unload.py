"""IDLE_UNLOAD_MINUTES against the real ComfyUI: no unload while a job runs (for longer than
the idle period), one unload once nothing ran for the period, and only one per idle period.

ComfyUI's unloads are counted inside ComfyUI (tests/comfyui/sidecar_test_nodes.py counts its
unload_all_models calls, which is where POST /free ends up) and by the sidecar's metrics."""

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.sidecar import wait_for

PERIOD_MINUTES = 0.1  # 6 s
SLEEP = {"workflow": "sidecar_test_sleep"}


def unloads(comfy) -> int:
    return requests.get(f"{comfy.url}/sidecar_test/unloads", timeout=10).json()["count"]


def metric(api, name: str, **labels) -> float:
    text = api.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_idle_unload_fires_once_and_never_while_a_job_runs(own_sidecar, comfy):
    before = unloads(comfy)
    _, _, api = own_sidecar(IDLE_UNLOAD_MINUTES=str(PERIOD_MINUTES))
    # Longer than the idle period; queued as soon as the sidecar answers.
    job = api.generate(prompt="busy", steps=70, seconds_per_step=0.1, **SLEEP)
    assert api.wait_final(job["job_id"], timeout=60)["status"] == "completed"
    assert unloads(comfy) == before  # not while it ran
    assert metric(api, "sidecar_idle_unloads_total") == 0

    wait_for(lambda: unloads(comfy) == before + 1, 30, 0.1, "ComfyUI to unload its models")
    assert metric(api, "sidecar_idle_unloads_total") == 1

    # Once per idle period: a whole period more of idle checks (the tracker checks after each
    # reconciliation, every RECONCILE_INTERVAL = 0.5 s) does not unload again.
    passes = metric(api, "sidecar_tracker_reconciles_total", outcome="ok")
    wait_for(
        lambda: metric(api, "sidecar_tracker_reconciles_total", outcome="ok") >= passes + 16,
        30,
        0.2,
        "a whole idle period of checks",
    )
    assert unloads(comfy) == before + 1
    assert metric(api, "sidecar_idle_unloads_total") == 1
