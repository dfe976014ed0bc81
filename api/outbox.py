"""The outbox: what a finished job owes the outside world, and the worker that delivers it.

`plan()` decides, when a job ends, which deliveries it owes: one upload per output image (with
S3_BUCKET) and one webhook for the event (with a webhook_url and the event subscribed). The
Finisher (api/outcome.py) writes them in the transaction that ends the job.

`Outbox` sends them. Every process that runs background work starts DELIVERY_THREADS senders;
each claims one due delivery at a time with a lease (JobStore.claim_delivery), so any number of
processes, and later of nodes, can share one outbox: a row is attempted by one sender at once,
and a sender killed mid-attempt leaves a row whose lease runs out and that another sender
retries. That retry may repeat a webhook the receiver already got: webhooks are at least once,
and the unchanged webhook-id lets receivers drop the repeat. Failed attempts are retried with
exponential backoff and jitter until the delivery's retry window (DELIVERY_RETRY_HOURS) ends;
a webhook waits for its job's uploads, so its body carries the output_urls.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from api import outputs, webhooks
from api.config import Config
from api.delivery import (
    PROGRESS_EVENT,
    UPLOAD_EVENT,
    Delivery,
    DeliveryKind,
    DeliveryState,
    NewDelivery,
)
from api.exceptions import UnsafePath
from api.job import Job, JobStatus, image_path
from api.jobstore import JobStore
from api.object_storage import ObjectStorage

log = logging.getLogger(__name__)

DELIVERY_THREADS = 2
# A sender with nothing due, while deliveries wait (for a retry, a lease that must end), looks at
# the outbox this often and when the next one is due; with none waiting, every IDLE_WAKE: the
# process that writes a delivery wakes its own senders at once (Finisher.owed), so the looks
# only find what no one woke a sender for (a delivery a dead process held, and then only once
# its lease ends). Only one sender per process looks (each look costs an idle sidecar a
# thread's wake-up, on an idle host more CPU than the query); the others wake when it finds
# work, or after IDLE_WAKE.
IDLE_POLL = 5.0
IDLE_WAKE = 30.0
# Progress is news for minutes, not hours.
PROGRESS_RETRY_FOR = 600.0
EVENT_OF = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


def backoff(attempts: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before the next attempt: base * 2^(attempts-1), capped, with "equal jitter"
    (half fixed, half random) so that receivers coming back are not hit by every sender at
    the same instant; never sooner than the receiver's Retry-After."""
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    delay = delay / 2 + random.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class Outbox:
    """Plans a job's deliveries and runs this process's senders."""

    def __init__(
        self,
        config: Config,
        store: JobStore,
        storage: ObjectStorage,
        metrics: Any = None,
    ) -> None:
        self.config = config
        self.store = store
        self.storage = storage
        self.metrics = metrics
        self.sender = webhooks.WebhookSender(
            config.webhook_secret,
            webhooks.AllowList.parse(config.webhook_allowed_hosts),
            config.webhook_timeout,
        )
        # Longer than any one attempt (a webhook times out, an upload has its own timeouts), short
        # enough that a sender killed mid-attempt delays that delivery by a minute or so.
        self.lease = max(60.0, 3 * config.webhook_timeout)
        # In a cluster whose nodes do not share their output folders, an image can only be
        # uploaded by the node whose ComfyUI wrote it: its senders take only its uploads.
        self.uploads_of = config.node_id if config.clustered and not config.outputs_shared else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._progress_sent: dict[str, float] = {}  # prompt_id -> when (monotonic)

    # --- what a job owes -------------------------------------------------------------------

    @property
    def retry_for(self) -> float:
        return self.config.delivery_retry_hours * 3600

    def webhook_of(self, job: Job) -> tuple[str | None, tuple[str, ...]]:
        """The job's webhook target and the events it wants (the request's, or the
        server's defaults)."""
        url = job.options.get("webhook_url") or self.config.webhook_url or None
        events = tuple(job.options.get("webhook_events") or self.config.webhook_events)
        return url, events

    def plan(self, job: Job, status: JobStatus, images: list[dict]) -> list[NewDelivery]:
        """The deliveries a job owes when it ends with this status and these images."""
        owed: list[NewDelivery] = []
        if status == JobStatus.COMPLETED and self.storage.enabled:
            saved = [(i, image) for i, image in enumerate(images) if image.get("type") == "output"]
            keys = self.storage.keys_for(job, [image for _, image in saved])
            for (index, image), key in zip(saved, keys, strict=True):
                owed.append(
                    NewDelivery(
                        DeliveryKind.UPLOAD,
                        UPLOAD_EVENT,
                        key,
                        self.retry_for,
                        payload={"index": index, **image},
                    )
                )
        url, events = self.webhook_of(job)
        event = EVENT_OF[status]
        if url and event in events:
            owed.append(NewDelivery(DeliveryKind.WEBHOOK, event, url, self.retry_for))
        return owed

    def progress(self, prompt_id: str) -> None:
        """A job's progress moved (the tracker): a job.progress event, at most one per
        WEBHOOK_PROGRESS_INTERVAL per job, for jobs that asked for them."""
        now = time.monotonic()
        last = self._progress_sent.get(prompt_id)
        if last is not None and now - last < self.config.webhook_progress_interval:
            return
        if len(self._progress_sent) > 10_000:  # forget jobs long gone
            self._progress_sent.clear()
        # Noted for jobs without progress webhooks too: one look at the job per interval.
        self._progress_sent[prompt_id] = now
        job = self.store.find_by_prompt(prompt_id)
        if job is None or job.finished:
            return
        url, events = self.webhook_of(job)
        if not url or PROGRESS_EVENT not in events:
            return
        self.store.add_deliveries(
            job.id,
            [NewDelivery(DeliveryKind.WEBHOOK, PROGRESS_EVENT, url, PROGRESS_RETRY_FOR)],
            supersede_event=PROGRESS_EVENT,
        )
        self.wake()

    # --- the senders ------------------------------------------------------------------------

    def start(self, threads: int = DELIVERY_THREADS) -> None:
        for number in range(threads):
            thread = threading.Thread(
                target=self._run, args=(number == 0,), name=f"outbox-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def wake(self, *_: Any) -> None:
        """Something may be due now (a job just ended in this process)."""
        self._wake.set()

    def _run(self, looks: bool) -> None:
        """One sender; the one that `looks` reads the outbox every IDLE_POLL while deliveries
        wait and none is due (every IDLE_WAKE while none waits), the others wait to be woken (by
        it, or by a job that ends in this process)."""
        while not self._stop.is_set():
            try:
                due_in = self.store.seconds_until_next_delivery()
                waiting = due_in is not None
            except Exception:
                due_in, waiting = None, True  # unknown: look again soon
            # Claiming is a write: only when something is due (an idle sidecar would write
            # twice a second per sender, for nothing).
            if due_in is not None and due_in <= 0:
                if looks:
                    self._wake.set()  # the others may take the next ones meanwhile
                try:
                    worked = self.run_once()
                except Exception:
                    log.exception("the outbox sender failed; trying again shortly")
                    worked = False
                if worked:
                    continue
            if looks and waiting:
                wait = IDLE_POLL if due_in is None else min(IDLE_POLL, max(due_in, 0.01))
            else:
                wait = IDLE_WAKE
            self._wake.wait(wait)
            self._wake.clear()

    def run_once(self) -> bool:
        """Claim and attempt one due delivery; False when none was due."""
        owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        delivery = self.store.claim_delivery(owner, self.lease, self.uploads_of)
        if delivery is None:
            return False
        self.attempt(delivery, owner)
        return True

    def attempt(self, delivery: Delivery, owner: str) -> None:
        job = self.store.get(delivery.job_id)
        if job is None:
            self._settle(delivery, owner, DeliveryState.FAILED, error="the job no longer exists")
            return
        if delivery.kind == DeliveryKind.UPLOAD:
            self._upload(delivery, owner, job)
        else:
            self._post(delivery, owner, job)

    def _post(self, delivery: Delivery, owner: str, job: Job) -> None:
        if delivery.event == PROGRESS_EVENT and job.finished:
            self._settle(delivery, owner, DeliveryState.SUPERSEDED, error="the job ended")
            return
        object_url = self.storage.url if self.storage.enabled else None
        payload = webhooks.body(delivery.event, job.to_status(image_path, object_url))
        result = self.sender.send(delivery.target, delivery.id, payload)
        if result.delivered:
            state = DeliveryState.DELIVERED
        elif result.retry:
            state = DeliveryState.PENDING
        else:
            state = DeliveryState.FAILED
        retry_in = None
        if state == DeliveryState.PENDING:
            retry_in = backoff(
                delivery.attempts,
                self.config.delivery_retry_base,
                self.config.delivery_retry_max_delay,
                result.retry_after,
            )
        self._settle(delivery, owner, state, result.status, result.error, retry_in)
        if result.error and state == DeliveryState.FAILED:
            log.warning("webhook %s of job %s given up: %s", delivery.id, job.id, result.error)

    def _upload(self, delivery: Delivery, owner: str, job: Job) -> None:
        image = delivery.payload
        try:
            path = outputs.resolve(
                self.config.comfyui_output_dir, image["filename"], image.get("subfolder", "")
            )
        except (FileNotFoundError, UnsafePath) as exc:
            why = getattr(exc, "message", None) or "the file is not in the output folder"
            self._settle(delivery, owner, DeliveryState.FAILED, error=why)
            return
        try:
            self.storage.upload(path, delivery.target, outputs.media_type(path))
        except Exception as exc:  # botocore's errors have no useful common base
            retry_in = backoff(
                delivery.attempts,
                self.config.delivery_retry_base,
                self.config.delivery_retry_max_delay,
            )
            error = f"{type(exc).__name__}: {exc}"
            self._settle(delivery, owner, DeliveryState.PENDING, error=error, retry_in=retry_in)
            return
        stored = {"index": image["index"], "key": delivery.target}
        kept = self._settle(delivery, owner, DeliveryState.DELIVERED, stored_object=stored)
        if kept and self.storage.delete_local:
            try:
                path.unlink()
            except OSError as exc:
                log.warning("uploaded %s but could not delete it: %s", path, exc)

    def _settle(
        self,
        delivery: Delivery,
        owner: str,
        state: DeliveryState,
        status: int | None = None,
        error: str | None = None,
        retry_in: float | None = None,
        stored_object: dict | None = None,
    ) -> bool:
        kept = self.store.settle_delivery(
            delivery.id, owner, state, status, error, retry_in, stored_object
        )
        if not kept:
            log.warning("delivery %s: lease lost while attempting it", delivery.id)
            return False
        if self.metrics is not None:
            outcome = "retry" if state == DeliveryState.PENDING else state.value
            self.metrics.delivery(delivery.kind.value, outcome)
        if state == DeliveryState.DELIVERED and delivery.kind == DeliveryKind.UPLOAD:
            self.wake()  # the job's webhook may be due now
        return True


def redeliver(store: JobStore, job_id: str, retry_for: float, wake: Callable[[], None]) -> list:
    """POST /api/jobs/<job_id>/redeliver: its webhooks again, its failed uploads again."""
    again = store.redeliver(job_id, retry_for)
    if again:
        wake()
    return again
