"""Batches: many generate requests in one call, for curl scripts (POST /api/batch).

A batch is all or nothing where it can be: every item is validated and its graph rendered
before any is queued, so one bad item is a 400 naming its index and nothing runs. Queueing
then goes item by item through the one submission pipeline (api/submission.py); should
ComfyUI fail half way, the items already queued are cancelled and the error names the index
it stopped at. Following a batch (GET /api/batch/<id>?wait=) and fetching its images as one
zip (GET /api/batch/<id>/archive) read the job store only.
"""

from __future__ import annotations

import logging
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from api import cancellation, outputs, submission
from api.batch import Batch
from api.exceptions import (
    DuplicateIdempotencyKey,
    IdempotencyKeyReused,
    InvalidBatch,
    InvalidRequest,
    NotFound,
    SidecarError,
    UnsafePath,
)
from api.job import FINISHED, Job, JobStatus, image_name
from api.jobstore import JobStore
from api.object_storage import ObjectStorage
from api.sidecar import Sidecar
from api.tenancy import OPERATOR, Caller

log = logging.getLogger(__name__)

ZIP_CHUNK = 256 * 1024


@dataclass
class BatchSubmission:
    batch: Batch
    jobs: list[Job]
    replayed: bool = False


def items_of(body: object, limit: int) -> list[dict]:
    """The generate requests a batch body stands for: {"jobs": [{...}, ...]} or
    {"prompts": ["...", ...]}, each with the body's other fields as shared defaults."""
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object")
    shared = {k: v for k, v in body.items() if k not in ("jobs", "prompts")}
    if ("jobs" in body) == ("prompts" in body):
        raise InvalidRequest(
            "A batch has either jobs (a list of generate requests) or prompts (a list of"
            " prompts sharing the other fields)",
            {"field": "jobs"},
        )
    field = "jobs" if "jobs" in body else "prompts"
    entries = body[field]
    if not isinstance(entries, list) or not entries:
        raise InvalidRequest(f"{field} must be a non-empty list", {"field": field})
    if len(entries) > limit:
        raise InvalidRequest(
            f"A batch holds at most {limit} jobs (MAX_BATCH_SIZE); this one has {len(entries)}",
            {"field": field, "allowed": {"maxItems": limit}},
        )
    items = []
    for index, entry in enumerate(entries):
        if field == "prompts":
            if not isinstance(entry, str):
                raise InvalidBatch(
                    f"prompts[{index}] must be a string", {"index": index, "field": "prompt"}
                )
            items.append({**shared, "prompt": entry})
        else:
            if not isinstance(entry, dict):
                raise InvalidBatch(
                    f"jobs[{index}] must be a JSON object", {"index": index, "field": None}
                )
            items.append({**shared, **entry})
    return items


def submit(
    body: object, s: Sidecar, idempotency_key: str | None = None, caller: Caller = OPERATOR
) -> BatchSubmission:
    """Validate every item, then queue them all; see the module docstring."""
    items = items_of(body, s.config.max_batch_size)
    digest = submission.request_hash(body)
    if idempotency_key is not None:
        submission.check_idempotency_key(idempotency_key)
        existing = s.store.find_batch_by_idempotency_key(idempotency_key, caller.name)
        if existing is not None:
            return _replay(existing, digest, s.store)
    submission.check_capacity(s, caller, len(items))
    jobs = []
    for index, item in enumerate(items):
        try:
            jobs.append(submission.build_job(item, s, caller))
        except InvalidRequest as exc:
            details = exc.details if isinstance(exc.details, dict) else {"details": exc.details}
            raise InvalidBatch(
                f"Item {index} of the batch: {exc.message} (nothing was queued)",
                {"index": index, "code": exc.code, **details},
            ) from None
    batch = Batch(
        id=str(uuid.uuid4()),
        idempotency_key=idempotency_key,
        request_hash=digest,
        created_at=time.time(),
        owner=caller.name,
    )
    try:
        s.store.create_batch(batch)
    except DuplicateIdempotencyKey:
        # The same key arrived twice at once: the other request is queueing the batch.
        twin = s.store.find_batch_by_idempotency_key(idempotency_key, caller.name)
        return _replay(twin, digest, s.store)
    queued: list[Job] = []
    for index, job in enumerate(jobs):
        job.options["batch_id"] = batch.id
        try:
            queued.append(submission.enqueue(s, job).job)
        except SidecarError as exc:
            _undo(batch, queued, s)
            exc.extra.setdefault("batch_index", index)
            exc.message = f"Item {index} of the batch: {exc.message} (nothing stays queued)"
            raise
        s.store.set_batch_jobs(batch.id, [j.id for j in queued])
    log.info("batch %s queued: %d jobs", batch.id, len(queued))
    return BatchSubmission(s.store.get_batch(batch.id), queued)


def _replay(existing: Batch, digest: str, store: JobStore) -> BatchSubmission:
    if existing.request_hash != digest:
        raise IdempotencyKeyReused(
            "Idempotency-Key was already used for a different request", batch_id=existing.id
        )
    return BatchSubmission(existing, store.get_many(existing.job_ids), replayed=True)


def _undo(batch: Batch, queued: list[Job], s: Sidecar) -> None:
    """Take back what a batch that failed half way had queued."""
    try:
        if queued:
            cancellation.cancel_many(
                s.store.get_many([j.id for j in queued]), s.finisher, s.client, True, s.fleet
            )
    except SidecarError as exc:
        log.warning("batch %s failed half way; its queued jobs may still run: %s", batch.id, exc)
    if not queued:
        s.store.discard_batch(batch.id)


def find(store: JobStore, batch_id: str, caller: Caller = OPERATOR) -> tuple[Batch, list[Job]]:
    """The batch and its jobs, if this caller may see it (another key's batch is not found,
    like another key's job: api/tenancy.py)."""
    batch = store.get_batch(batch_id)
    if batch is None or not (caller.sees_all or batch.owner == caller.name):
        raise NotFound("Batch not found")
    return batch, store.get_many(batch.job_ids)


def wait_final(store: JobStore, batch: Batch, timeout: float) -> list[Job]:
    """The batch's jobs once every one is final, or when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = store.get_many(batch.job_ids)
        remaining = deadline - time.monotonic()
        waiting = next((job for job in jobs if job.status not in FINISHED), None)
        if waiting is None or remaining <= 0 or store.waits_stopped:
            return jobs
        # Woken when that job changes; then the whole batch is read again.
        store.wait_for_change(waiting.id, waiting.updated_at, remaining)


def cancel(s: Sidecar, batch_id: str, caller: Caller = OPERATOR) -> tuple[list[str], list[str]]:
    """Cancel the batch's unfinished jobs, pending and running; (cancelled, already final)."""
    _, jobs = find(s.store, batch_id, caller)
    final = [job.id for job in jobs if job.finished]
    cancelled, _, _ = cancellation.cancel_many(
        jobs, s.finisher, s.client, include_running=True, fleet=s.fleet
    )
    return cancelled, final


def archive_entries(jobs: list[Job]) -> list[tuple[str, Job, int]]:
    """(name in the zip, job, image index) for each image of the batch's completed jobs:
    numbered by the job's place in the batch, so the files sort in submission order."""
    entries = []
    for position, job in enumerate(jobs, start=1):
        if job.status != JobStatus.COMPLETED:
            continue
        for index, image in enumerate(job.outputs):
            if image.get("type") != "output":
                continue
            name = image_name(image).replace("/", "_")
            entries.append((f"{position:03d}_{name}", job, index))
    return entries


class _Pipe:
    """A write-only file for zipfile whose bytes are taken out as they come (streaming: no
    seek, so zipfile writes data descriptors instead of going back to patch headers)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def archive(jobs: list[Job], output_dir, storage: ObjectStorage | None) -> Iterator[bytes]:
    """The batch's images as a zip, streamed: read from the output folder, or from object
    storage for images no longer on this disk (S3_DELETE_LOCAL, another node)."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, job, index in archive_entries(jobs):
            source = _source(job, index, output_dir, storage)
            if source is None:
                log.warning("batch archive: %s of job %s is gone; left out", name, job.id)
                continue
            with zf.open(zipfile.ZipInfo(name, time.gmtime(job.finished_at)[:6]), "w") as out:
                for chunk in source:
                    out.write(chunk)
                    yield pipe.take()
            yield pipe.take()
    yield pipe.take()  # the central directory, written when the archive closes


def _source(job: Job, index: int, output_dir, storage: ObjectStorage | None):
    image = job.outputs[index]
    try:
        path = outputs.resolve(output_dir, image["filename"], image.get("subfolder", ""))
    except (FileNotFoundError, UnsafePath):
        keys = {entry["index"]: entry["key"] for entry in job.objects}
        if storage is not None and storage.enabled and index in keys:
            return storage.chunks(keys[index])
        return None
    return _file_chunks(path)


def _file_chunks(path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(ZIP_CHUNK):
            yield chunk
