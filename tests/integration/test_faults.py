"""Jobs still finish when ComfyUI's events are lost, and health follows ComfyUI."""

from tests.support.sidecar import wait_for


def test_job_completes_when_the_trackers_websocket_is_cut_mid_job(api, proxy, sidecar):
    job = api.generate(prompt="cut", workflow="sidecar_test_sleep", steps=10, seconds_per_step=0.2)
    wait_for(
        lambda: api.status(job["job_id"])["status"] == "processing", 30, 0.05, "the job to start"
    )
    proxy.block_websockets(True)
    try:
        assert proxy.sever_all() >= 1
        wait_for(
            lambda: sidecar.tracker_state()["websocket"] == "disconnected",
            10,
            0.05,
            "the tracker to notice",
        )
        final = api.wait_final(job["job_id"], timeout=60)
        assert final["status"] == "completed", final
        assert final["output_image"]
        # Completion came from reconciliation: the socket could not come back meanwhile.
        assert sidecar.tracker_state()["websocket"] == "disconnected"
        assert proxy.blocked_websockets >= 1
    finally:
        proxy.block_websockets(False)
    wait_for(
        lambda: sidecar.tracker_state()["websocket"] == "connected",
        60,
        0.1,
        "the tracker to reconnect",
    )


def test_failure_is_detected_without_any_websocket_event(api, proxy, sidecar):
    proxy.block_websockets(True)
    try:
        proxy.sever_all()
        wait_for(
            lambda: sidecar.tracker_state()["websocket"] == "disconnected",
            10,
            0.05,
            "the tracker to notice",
        )
        job = api.generate(
            prompt="fail quietly",
            workflow="sidecar_test_sleep",
            steps=3,
            seconds_per_step=0.05,
            fail_at_step=1,
        )
        final = api.wait_final(job["job_id"], timeout=30)
        assert final["status"] == "failed"
        assert "forced failure at step 1" in final["error"]
    finally:
        proxy.block_websockets(False)
    wait_for(
        lambda: sidecar.tracker_state()["websocket"] == "connected",
        60,
        0.1,
        "the tracker to reconnect",
    )


def test_health_is_503_while_comfyui_is_down_and_recovers(api, comfy, sidecar):
    assert api.get("/api/health").status_code == 200
    comfy.stop()
    try:
        response = api.get("/api/health")
        assert response.status_code == 503
        assert response.json()["status"] == "unhealthy"
        assert response.json()["error"] == "ComfyUI not responding"
        refused = api.post("/api/generate", json={"prompt": "x", "workflow": "pipeline_check"})
        assert refused.status_code == 503
        assert refused.json()["error"] == "ComfyUI not responding"
        assert api.get("/health").json()["comfyui_available"] is False
    finally:
        comfy.start()
    assert api.get("/api/health").status_code == 200
    # The tracker reconnects by itself and new jobs run.
    wait_for(
        lambda: sidecar.tracker_state()["websocket"] == "connected",
        60,
        0.1,
        "the tracker to reconnect",
    )
    job = api.generate(
        prompt="after restart", workflow="sidecar_test_sleep", steps=2, seconds_per_step=0.05
    )
    assert api.wait_final(job["job_id"])["status"] == "completed"
