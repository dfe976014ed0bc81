"""What the rest of the sidecar asks of a job store, and nothing more.

The routes, submission, cancellation and the tracker use only these methods, so a second store
(a shared PostgreSQL one for several nodes) can sit beside the embedded SQLite one
(api/sqlite_store.py) without touching them. Rules every implementation keeps:

- a job is written before it is submitted to ComfyUI, and found again by its prompt_id or by
  its owner and Idempotency-Key (the same key from two API keys makes two jobs);
- a job's `owner` (the API key's name) never changes, and the output files of a completed job
  (and the copies saved from it) are its owner's: `owns_file` and `files_of` answer from them;
- state only moves forwards: `finish` takes a job from queued/processing to a final state once
  (later calls return False), progress never decreases, and nothing updates a finished job's
  status again;
- every change to a job moves its `updated_at`, which watchers compare to see that it changed;
- the outbox (webhooks and uploads a job owes) is written in the transaction that finishes the
  job, and a delivery is claimed with a lease: a worker that dies mid-attempt leaves a row that
  another takes over when the lease runs out, and a late report from a lapsed lease changes
  nothing (every report names the claim's owner token);
- times (leases, retries, expiry) come from the store's clock, never from the caller's, so
  nodes whose clocks differ agree; callers pass durations.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from api.batch import Batch
from api.delivery import Delivery, DeliveryState, NewDelivery
from api.job import FINISHED, Job, JobStatus


@dataclass
class NodeInfo:
    """What a node of a cluster tells the others about itself (with every heartbeat)."""

    id: str
    comfyui_url: str
    api_url: str = ""
    output_dir: str = ""  # its COMFYUI_OUTPUT_DIR (read by the others when OUTPUTS_SHARED)
    version: str = ""
    comfyui_reachable: bool = False
    comfyui_version: str | None = None
    devices: list[dict] = field(default_factory=list)
    workflows: list[str] = field(default_factory=list)  # the ones its ComfyUI can run
    cannot_run: dict[str, str] = field(default_factory=dict)  # workflow -> why not
    current_job: str | None = None
    held: int = 0  # unfinished jobs it holds
    max_pending: int = 0
    pid: int = 0
    heartbeat_interval: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NodeInfo:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class JobStore(ABC):
    """The durable record of every job, shared by every worker (and, in a cluster, every node)."""

    # True for a store every node of a cluster shares (jobs are claimed, not pushed).
    shared = False

    # --- creating and finding -------------------------------------------------------------

    @abstractmethod
    def create(self, job: Job) -> None:
        """Insert a new queued job. Raises DuplicateIdempotencyKey when its key is taken.
        (Nothing is read back: submitting goes on with the job it has.)"""

    @abstractmethod
    def get(self, job_id: str) -> Job | None:
        """The job, or None."""

    @abstractmethod
    def find_by_prompt(self, prompt_id: str) -> Job | None:
        """The job ComfyUI runs under this prompt_id, or None."""

    @abstractmethod
    def find_by_idempotency_key(self, key: str, owner: str | None = None) -> Job | None:
        """The job this owner (None: no API keys) created with this Idempotency-Key, or None."""

    @abstractmethod
    def discard(self, job_id: str) -> None:
        """Remove a job ComfyUI never took (it refused the graph or could not be reached)."""

    # --- the job's life ---------------------------------------------------------------------

    @abstractmethod
    def mark_submitted(
        self,
        job_id: str,
        prompt_id: str,
        planned: str | None = None,
        number: float | None = None,
    ) -> bool:
        """ComfyUI confirmed the submission under this prompt_id (and queue `number`, its run
        order, when known); with `planned`, only while the job still has the prompt_id it was
        sent with (False: it was taken back)."""

    @abstractmethod
    def mark_resubmitted(self, job_id: str, prompt_id: str, number: float | None = None) -> None:
        """ComfyUI lost a job that had not started and it was queued again (attempts + 1), as
        prompt_id with queue `number`; nothing changes for a job that is final."""

    @abstractmethod
    def mark_processing(self, prompt_id: str, node: str | None = None) -> bool:
        """The prompt started running (or moved on to `node`): its place in the queue is 0;
        False if the job is final."""

    @abstractmethod
    def record_progress(self, prompt_id: str, value: int, maximum: int, node: str | None) -> bool:
        """A progress event: step `value` of `maximum`; job progress never goes backwards."""

    @abstractmethod
    def finish(
        self,
        job_id: str,
        status: JobStatus,
        outputs: list[dict] | None = None,
        error: str | None = None,
        error_details: Any = None,
        deliveries: Sequence[NewDelivery] = (),
        prompt_id: str | None = None,
        unclaimed: bool = False,
        node: str | None = None,
        ran_for: float | None = None,
    ) -> Job | None:
        """Move an unfinished job to a final state and, in the same transaction, write the
        deliveries it owes into the outbox (and supersede its pending job.progress events);
        the output files among `outputs` become the job's (see owns_file) in the same step.
        Returns the finished job as written (without its graph: the statement that writes it
        returns it, where a read after cost every job a query); None, with nothing written,
        if it already was final. With prompt_id, only while the job still runs as that prompt
        (a run a node lost, and that was queued again, is not finished by the node that lost
        it); with unclaimed, only while no node of a cluster holds it (a job cancelled while it
        waits for one). `node`: the run's last node, when it was not yet recorded (see
        Tracker._write_held), as its current_node. `ran_for`: how many seconds before now its
        run started, recorded as its started_at when it has none (its start's write found no
        row: a run of a server that ignores the prompt_id asked for can end before its job
        records the one it got), never before the job was created."""

    @abstractmethod
    def set_queue_positions(self, positions: dict[str, int | None]) -> None:
        """Each unfinished job's place in ComfyUI's queue, by prompt_id; only rows whose
        position changed are updated (their watchers wake)."""

    @abstractmethod
    def add_file(self, job_id: str, name: str) -> None:
        """A file in the output folder (relative name) that came from this job: a saved copy."""

    @abstractmethod
    def owns_file(self, owner: str, name: str) -> bool:
        """Whether a job of this owner produced (or was saved as) this output file."""

    @abstractmethod
    def files_of(self, owner: str) -> set[str]:
        """The names of every output file this owner's jobs produced or were saved as."""

    @abstractmethod
    def record_option(self, job_id: str, key: str, value: Any) -> None:
        """Record one fact about a job's result in its options (e.g. where it was saved)."""

    # --- reading many -----------------------------------------------------------------------

    @abstractmethod
    def unfinished(self, node: str | None = None, graph: bool = True) -> list[Job]:
        """Every queued or processing job, oldest first (with node: the ones it holds).
        `graph=False`: each with an empty graph, not decoded (the largest column): for
        bookkeeping, never to submit."""

    @abstractmethod
    def unfinished_states(self, node: str | None = None) -> list[Job]:
        """The same jobs as unfinished(), with only the columns that say where each stands
        (ids, status, place, queue number, deadline, times): its JSON columns (the graph,
        params, options, outputs...) at their defaults, not read. For the reconciliation's
        passes, which read every unfinished row several times a run (decoding those columns
        was a third of a pass); never to finish, resubmit or show a job (read it whole)."""

    @abstractmethod
    def page(
        self,
        statuses: Iterable[str] | None,
        limit: int,
        offset: int,
        newest_by: str = "created_at",
        owner: str | None = None,
    ) -> tuple[list[Job], int]:
        """One page of jobs, newest first by created_at or finished_at, and how many match;
        only the owner's when one is given."""

    @abstractmethod
    def count(self, statuses: Iterable[str] | None = None, owner: str | None = None) -> int:
        """How many jobs have one of these statuses (all jobs when None), of one owner when
        one is given."""

    @abstractmethod
    def counts(self, statuses: Iterable[str] | None = None) -> dict[str, int]:
        """How many jobs there are of each status (every status word present); with
        `statuses`, of those only (the unfinished ones: a look at an index range, where the
        finished ones are counted over every job kept)."""

    @abstractmethod
    def version(self, job_id: str) -> tuple[float, str] | None:
        """(updated_at, status) of a job: a cheap check for whether it changed."""

    # A waiter also re-reads its row this often: an announcement of a change can be lost.
    recheck_seconds: float = 1.0
    # Set by stop_waits(): this process is stopping, and every wait ends at once.
    waits_stopped: bool = False

    def stop_waits(self) -> None:
        """End every wait of this process now, and each one after, as if its time had run
        out: the worker is stopping (SIGTERM: a restart, a reload, `docker compose up` with a
        new image), and a long poll, a waiting submission or an event stream answers with
        what it has (a submission's 202 and its job's URL) instead of being cut off when the
        worker is killed at the end of the grace period (api/gunicorn_idle.py)."""
        self.waits_stopped = True
        self._wake_every_waiter()

    @abstractmethod
    def _wake_every_waiter(self) -> None:
        """Set the Event of every watch() of this process."""

    @abstractmethod
    def versions_since(self, after: float) -> dict[str, tuple[float, str]]:
        """job id -> (version, status) of every unfinished job and of every job changed after
        `after` (a Unix time; 0: every job)."""

    @abstractmethod
    def versions_of(self, job_ids: Sequence[str]) -> dict[str, tuple[float, str]]:
        """job id -> (version, status) of each of these jobs that exists."""

    @abstractmethod
    def watch(self, job_id: str) -> AbstractContextManager[threading.Event]:
        """An Event set when a writer, in any process (or on any node), announces a change
        to the job after committing it."""

    def wait_for_change(
        self, job_id: str, since: float | None, timeout: float, after_final: bool = False
    ) -> bool:
        """Block until the job changes after version `since` (or now, when None), ends, or
        is gone; False when `timeout` seconds pass first. With `after_final`, a final job
        counts only when it changes again (the follow-ups a final row still gets: its
        save_to_disk copy, its uploads)."""

        def changed(updated_at: float, status: str) -> bool:
            nonlocal since
            if since is not None and updated_at != since:
                return True
            if status in FINISHED and not after_final:
                return True
            if since is None:
                since = updated_at
            return False

        return self._wait(job_id, changed, timeout)

    def wait_for_end(self, job_id: str, timeout: float) -> bool:
        """Block until the job is final or gone, whatever changes on the way (one small read
        per change, not the row); False when `timeout` seconds pass first."""
        return self._wait(job_id, lambda _, status: status in FINISHED, timeout)

    def _wait(self, job_id: str, done: Callable[[float, str], bool], timeout: float) -> bool:
        # Subscribed before the row is read, so a change between the read and the wait
        # still wakes it.
        deadline = time.monotonic() + timeout
        with self.watch(job_id) as woken:
            version = self.version(job_id)
            while True:
                if version is None:
                    return True  # gone (purged): the caller answers 404
                if done(*version):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.waits_stopped:
                    return False
                announced = woken.wait(min(remaining, self.recheck_seconds))
                woken.clear()
                if announced:
                    version = self.announced_version(job_id, version)
                else:
                    version = self.version(job_id)

    def announced_version(self, job_id: str, seen: tuple[float, str]) -> tuple[float, str] | None:
        """The job's version once a change to it was announced, `seen` the one the waiter
        had: read from the store, unless the announcement itself said a newer one."""
        return self.version(job_id)

    @abstractmethod
    def now(self) -> float:
        """The store's clock (Unix seconds): what deadlines and leases are compared with."""

    @abstractmethod
    def last_created_at(self) -> float | None:
        """When the newest job was created."""

    @abstractmethod
    def purge(self, finished_before: float, limit: int = 500) -> list[Job]:
        """Delete jobs finished before a time, with their deliveries; returns them (for their
        files)."""

    @abstractmethod
    def get_many(self, job_ids: Sequence[str], graph: bool = True) -> list[Job]:
        """The jobs with these ids that exist, in the order given (`graph`: as unfinished)."""

    @abstractmethod
    def last_activity(self) -> float | None:
        """The latest moment any job was created, started or finished. A finished job's start
        is never after its end, so only the unfinished jobs' starts are read: every part of it
        is an index's edge, not a look at every job kept."""

    # --- the outbox: webhooks and uploads owed by jobs -------------------------------------

    @abstractmethod
    def add_deliveries(
        self, job_id: str, deliveries: Sequence[NewDelivery], supersede_event: str | None = None
    ) -> None:
        """Write deliveries for a job outside of finish() (job.progress events); pending ones
        of `supersede_event` for the same job and target are superseded first."""

    @abstractmethod
    def claim_delivery(
        self, owner: str, lease_seconds: float, uploads_of: str | None = None
    ) -> Delivery | None:
        """Take the next due delivery for `lease_seconds` (attempts + 1), or None. A webhook is
        due only once its job has no upload pending: receivers get output_urls. With
        uploads_of (a cluster's node), only the uploads of jobs that node ran are taken."""

    @abstractmethod
    def settle_delivery(
        self,
        delivery_id: str,
        owner: str,
        state: DeliveryState,
        status: int | None = None,
        error: str | None = None,
        retry_in: float | None = None,
        stored_object: dict | None = None,
    ) -> bool:
        """Record an attempt of a delivery this owner claimed: DELIVERED, FAILED, or PENDING
        again in `retry_in` seconds (FAILED instead when that is past its retry window). An
        upload's `stored_object` ({"index", "key"}) joins its job's objects in the same
        transaction. False when the claim was lost (the lease ran out and another took it)."""

    @abstractmethod
    def deliveries(self, job_id: str) -> list[Delivery]:
        """A job's deliveries, oldest first."""

    @abstractmethod
    def redeliver(self, job_id: str, retry_for: float) -> list[Delivery]:
        """Send a job's webhooks again (same ids) and retry its uploads that were not
        delivered, now, with a new retry window; returns the deliveries made pending."""

    @abstractmethod
    def seconds_until_next_delivery(self) -> float | None:
        """How long until a pending delivery is due (0 when one is), or None when none is."""

    @abstractmethod
    def delivery_counts(self) -> dict[tuple[str, str], int]:
        """How many deliveries there are of each (kind, state)."""

    # --- batches ----------------------------------------------------------------------------

    @abstractmethod
    def create_batch(self, batch: Batch) -> Batch:
        """Insert a batch. Raises DuplicateIdempotencyKey when its key is taken."""

    @abstractmethod
    def set_batch_jobs(self, batch_id: str, job_ids: Sequence[str]) -> None:
        """The batch's jobs, in submission order."""

    @abstractmethod
    def get_batch(self, batch_id: str) -> Batch | None:
        """The batch, or None."""

    @abstractmethod
    def find_batch_by_idempotency_key(self, key: str, owner: str | None = None) -> Batch | None:
        """The batch this API key (owner) created with this Idempotency-Key, or None."""

    @abstractmethod
    def discard_batch(self, batch_id: str) -> None:
        """Remove a batch whose submission failed."""

    # --- small facts shared between processes (client id, tracker heartbeat) --------------

    @abstractmethod
    def put_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under a key."""

    @abstractmethod
    def get_meta(self, key: str) -> tuple[Any, float] | None:
        """(value, when it was stored), or None."""

    @abstractmethod
    def setdefault_meta(self, key: str, value: Any) -> Any:
        """Store the value unless the key has one; return the stored value."""

    def close(self) -> None:  # noqa: B027 - optional: stores without resources need nothing
        """Release connections (worker exit)."""


def open_store(config: Any) -> JobStore:
    """The store JOB_STORE_URL names: the embedded SQLite one, or a cluster's PostgreSQL."""
    if config.clustered:
        from api.postgres_store import PostgresJobStore  # psycopg only where it is used

        return PostgresJobStore(config.job_store_url)
    from api.sqlite_store import SQLiteJobStore

    return SQLiteJobStore(config.database_path)
