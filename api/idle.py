"""Idle unload: giving the GPU back when nothing has run for IDLE_UNLOAD_MINUTES.

The embedded bridge shut itself down after an idle timeout; a sidecar beside a long-running
ComfyUI does the useful part of that instead: it asks ComfyUI to unload its models and free
memory (POST /free) once per idle period. It runs in the tracker's process (one per
deployment), after each reconciliation pass.

Idle means: no unfinished job in the sidecar, none in ComfyUI's queue (another client's work
counts too), for the whole period since the last activity (the newest job's creation, start or
end, or ComfyUI last seen busy). The moment of the last unload is kept in the job store, so a
restarted sidecar does not unload again for an idle period it already handled.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from api.comfyui import ComfyUIClient
from api.exceptions import ComfyUIError
from api.job import UNFINISHED
from api.jobstore import JobStore

log = logging.getLogger(__name__)

META_KEY = "idle_unload"


class IdleUnloader:
    """Decides, after each reconciliation, whether this idle period's unload is due."""

    def __init__(
        self, minutes: float, store: JobStore, client: ComfyUIClient, metrics: Any = None
    ) -> None:
        self.period = minutes * 60
        self.store = store
        self.client = client
        self.metrics = metrics
        self.started = time.time()
        self.busy_seen = 0.0  # when ComfyUI's queue was last seen holding work

    @property
    def enabled(self) -> bool:
        return self.period > 0

    def last_unload(self) -> float:
        found = self.store.get_meta(META_KEY)
        return float(found[0].get("at", 0)) if found else 0.0

    def check(self, now: float | None = None) -> bool:
        """Unload if this idle period is due and not yet handled; True when it did."""
        if not self.enabled:
            return False
        now = time.time() if now is None else now
        if self.store.count(UNFINISHED):
            return False
        activity = self.store.last_activity() or self.started
        last = max(activity, self.busy_seen)
        if now - last < self.period or self.last_unload() >= last:
            return False
        try:
            queue = self.client.queue()
            if queue.running_ids or queue.pending_ids:
                # Someone else's prompts: wait a whole period after they are done.
                self.busy_seen = now
                return False
            self.client.free()
        except ComfyUIError as exc:
            log.warning(
                "idle for %.0f minutes, but could not ask ComfyUI to unload: %s",
                (now - last) / 60,
                exc,
            )
            return False
        self.store.put_meta(META_KEY, {"at": now, "idle_since": last})
        if self.metrics is not None:
            self.metrics.idle_unloads.inc()
        log.info(
            "idle for %.1f minutes (IDLE_UNLOAD_MINUTES=%g): asked ComfyUI to unload its"
            " models and free memory",
            (now - last) / 60,
            self.period / 60,
        )
        return True
