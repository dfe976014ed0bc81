"""Prometheus metrics (GET /metrics), shared by every gunicorn worker.

Counters and histograms are counted where things happen, in whichever worker that is. Under
gunicorn, prometheus_client's multiprocess mode keeps each process's values in files under
PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py empties it when the master starts and marks a dead
worker's files in child_exit), and a scrape, answered by any worker, adds them all up. Gauges
are not counted at all: numbers that describe the present (unfinished jobs, the outbox, whether
ComfyUI answers) are read from the job store at scrape time, so every worker reports the same
truth and no per-process gauge can go stale.

Metric objects belong to the app (app.extensions), not to prometheus_client's global registry,
so several apps in one process (the tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from api.job import UNFINISHED, Job
from api.jobstore import JobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class StoreCollector:
    """What the job store says now: unfinished jobs by state, the outbox, ComfyUI's state."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self):
        counts = self.store.counts(UNFINISHED)
        unfinished = GaugeMetricFamily(
            "sidecar_jobs_unfinished", "Jobs not finished yet, by state", labels=["state"]
        )
        for status in UNFINISHED:
            unfinished.add_metric([status.value], counts.get(status.value, 0))
        yield unfinished
        outbox = GaugeMetricFamily(
            "sidecar_deliveries_pending",
            "Webhooks and uploads waiting in the outbox, by kind",
            labels=["kind"],
        )
        pending = {"webhook": 0, "upload": 0}
        for (kind, state), count in self.store.delivery_counts().items():
            if state == "pending":
                pending[kind] = pending.get(kind, 0) + count
        for kind, count in sorted(pending.items()):
            outbox.add_metric([kind], count)
        yield outbox
        heartbeat = self.store.get_meta("tracker")
        state = heartbeat[0] if heartbeat else {}
        reachable = GaugeMetricFamily(
            "sidecar_comfyui_reachable",
            "1 when ComfyUI answered the tracker's last check, 0 when it did not",
        )
        reachable.add_metric([], 1.0 if state.get("comfyui_reachable") else 0.0)
        yield reachable
        socket = GaugeMetricFamily(
            "sidecar_tracker_websocket_connected", "1 while the tracker's WebSocket is up"
        )
        socket.add_metric([], 1.0 if state.get("websocket") == "connected" else 0.0)
        yield socket


class Metrics:
    """The sidecar's metrics; `multiproc_dir` set means gunicorn's multiprocess mode."""

    def __init__(self, store: JobStore, multiproc_dir: str = "") -> None:
        self.registry = CollectorRegistry()
        if multiproc_dir:
            # Values live in the folder's files; the registry only reads them all back.
            MultiProcessCollector(self.registry, path=multiproc_dir)
            own = None
        else:
            own = self.registry
        self.registry.register(StoreCollector(store))
        self.jobs_created = Counter(
            "sidecar_jobs_created", "Jobs created, by workflow", ["workflow"], registry=own
        )
        self.jobs_finished = Counter(
            "sidecar_jobs_finished",
            "Jobs finished, by workflow and final status",
            ["workflow", "status"],
            registry=own,
        )
        self.queue_wait = Histogram(
            "sidecar_job_queue_wait_seconds",
            "From a job's creation to ComfyUI starting it",
            ["workflow"],
            buckets=WAIT_BUCKETS,
            registry=own,
        )
        self.run_time = Histogram(
            "sidecar_job_run_seconds",
            "From ComfyUI starting a job to its end",
            ["workflow"],
            buckets=RUN_BUCKETS,
            registry=own,
        )
        self.websocket_connects = Counter(
            "sidecar_tracker_websocket_connects",
            "Times the tracker's WebSocket to ComfyUI (re)connected",
            registry=own,
        )
        self.reconciles = Counter(
            "sidecar_tracker_reconciles",
            "Reconciliation passes against ComfyUI's queue and history",
            ["outcome"],
            registry=own,
        )
        self.deliveries = Counter(
            "sidecar_deliveries",
            "Webhook and upload attempts, by kind and outcome (delivered, retry, failed, "
            "superseded)",
            ["kind", "outcome"],
            registry=own,
        )
        self.http_requests = Counter(
            "sidecar_http_requests",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=own,
        )
        self.idle_unloads = Counter(
            "sidecar_idle_unloads",
            "Times ComfyUI was asked to unload its models after IDLE_UNLOAD_MINUTES idle",
            registry=own,
        )

    def job_created(self, job: Job) -> None:
        self.jobs_created.labels(job.workflow).inc()

    def job_finished(self, job: Job) -> None:
        """A Finisher follow-up: runs once per job, where it was settled."""
        self.jobs_finished.labels(job.workflow, job.status.value).inc()
        if job.started_at is not None:
            self.queue_wait.labels(job.workflow).observe(max(job.started_at - job.created_at, 0))
            if job.finished_at is not None:
                self.run_time.labels(job.workflow).observe(max(job.finished_at - job.started_at, 0))

    def delivery(self, kind: str, outcome: str) -> None:
        self.deliveries.labels(kind, outcome).inc()

    def request(self, method: str, route: str, status: int) -> None:
        self.http_requests.labels(method, route, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
