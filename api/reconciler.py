"""Reconciliation: every unfinished job compared with ComfyUI's /queue and /history, and settled.

ComfyUI does not buffer or replay WebSocket events, so this is what makes every job end, even
if every event about it was lost. One pass (`reconcile_once`):
  - finds jobs whose POST /prompt answer never arrived, by the job id in extra_data;
  - stores each job's place in ComfyUI's queue;
  - stops and fails jobs past their deadline;
  - settles jobs that ComfyUI has finished (their /history entry);
  - handles jobs ComfyUI lost (a restart, a cleared queue): resubmitted from the stored graph,
    or failed with the reason.
It also purges finished jobs past JOB_RETENTION_DAYS.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from api import cancellation, comfyui, outputs
from api.config import Config
from api.exceptions import ComfyUIRejected, UnsafePath
from api.graphs import edit
from api.job import Job, JobStatus
from api.jobstore import JobStore
from api.outcome import Finisher, RunStarts, settle_from_history

if TYPE_CHECKING:
    from api.fleet import Fleet

log = logging.getLogger(__name__)

RECENT_HISTORY = 64  # history entries searched for jobs whose submission was not confirmed
# A pass asked for by a `status` event may leave /queue alone (`_nothing_waits`) only if one
# looked within this many RECONCILE_INTERVALs: those events come with each submission and end
# of a run, so with runs of a few seconds nearly every pass is one, and a job whose submitter
# died unconfirmed is still found within two intervals.
LOOK_EVERY = 2
# While places are ranked from the rows (`_ranked`), /queue is read at least this many
# RECONCILE_INTERVALs apart all the same: every change to ComfyUI's queue comes with a `status`
# event whose count catches a prompt gone or added, except two at once (another client's
# prompt added as one of the sidecar's is lost), which this look finds.
RANKED_LOOK_EVERY = 15


class Reconciler:
    """Settles jobs from ComfyUI's /queue and /history; one runs per deployment (the tracker's)."""

    def __init__(
        self,
        config: Config,
        store: JobStore,
        client: comfyui.ComfyUIClient,
        client_id: str,
        finisher: Finisher | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.config = config
        self.starts = RunStarts()  # the runs the tracker's socket saw start
        self.store = store
        self.client = client
        self.client_id = client_id
        self.finisher = finisher or Finisher(store)
        self.fleet = fleet
        # In a cluster this node reconciles the jobs it holds; alone, every job.
        self.node = fleet.node if fleet is not None else None
        # prompt_id -> when it was first seen missing from both /queue and /history
        self._missing_since: dict[str, float] = {}
        # The last pass found unfinished jobs (or this is a cluster's node, which always
        # looks): the tracker keeps its WebSocket's liveness proven (Tracker._read).
        self.watching = True
        # When a pass last saw every unfinished job accounted for: by reading /queue, or by the
        # socket following them all (monotonic).
        self._looked_at = 0.0
        # What the last read of the rows found (`_nothing_waits`, `_calm`): whether a job shows a
        # place above 0, and the first deadline of an unfinished job (the store's clock).
        self._placed = True
        self._first_deadline: float | None = None

    def settle_from_history(self, prompt_id: str) -> bool:
        ran_for = self.starts.ran_for(prompt_id)
        return settle_from_history(self.finisher, self.client, prompt_id, ran_for=ran_for)

    def reconcile_once(
        self,
        events_flowing: bool = False,
        followed: str | None = None,
        queue_remaining: int | None = None,
        holds: int | None = None,
    ) -> None:
        """Compare every unfinished job with ComfyUI's queue and history, and settle it.

        events_flowing: the tracker's WebSocket has been up since the last pass and brought a
        frame within the last RECONCILE_INTERVAL, so a job that has just left the queue is
        being settled from its events (/history is asked about it only if it is still
        unsettled at the next pass); followed: the prompt whose run that socket follows from
        its start; queue_remaining: this pass was asked for by a `status` event, and ComfyUI's
        last one said it holds this many prompts (waiting and running); holds: what the last
        `status` event said, whatever asked for the pass. Then a pass asks ComfyUI nothing
        when nothing needs it (`_followed`, `_nothing_waits`) or when ComfyUI holds only this
        sidecar's prompts (`_ranked`), and a pass asked for by a `status` event reads nothing
        at all when the last one left nothing to do (`_calm`)."""
        # A cluster's node also looks for orphans in /queue: it always asks.
        local = events_flowing and self.fleet is None
        if local and self._calm(queue_remaining):
            return
        # Where each stands, nothing more (the graph, params, options: decoded for nothing on
        # every pass): a job this pass finishes or resubmits is read again whole.
        jobs = self.store.unfinished_states(self.node)
        self.watching = bool(jobs) or self.fleet is not None
        if self.fleet is not None:
            self.fleet.handle_cancel_requests()
        deadlines = [j.deadline for j in jobs if j.deadline is not None]
        self._first_deadline = min(deadlines, default=None)
        self._placed = any(j.queue_position for j in jobs)
        if not jobs and self.fleet is None:
            self._missing_since.clear()
            self._looked_at = time.monotonic()
            return
        if local:
            if self._followed(jobs, followed):
                self._looked_at = time.monotonic()
                return
            now = self.store.now()
            if self._nothing_waits(queue_remaining, now):
                return
            held = self._held_by_comfyui(jobs, holds, followed)
            ranked = self._ranked(held, holds, now)
            if ranked is not None:
                self._place(held, ranked)
                return
        queue = self.client.queue()
        self._looked_at = time.monotonic()
        if self.fleet is not None:
            self.fleet.stop_orphans(queue)
        adopted = self._adopt_unconfirmed(jobs, queue)
        self._place(jobs, queue.positions())
        # A job created, or confirmed by its own POST /prompt, while /queue was being read may
        # be missing from the snapshot: the next pass looks at it (asking /history now would
        # only cost ComfyUI a request, many during a burst of submissions).
        unconfirmed = {j.id for j in jobs if not j.submitted} - adopted
        now = self.store.now()
        # The jobs this pass may act on (past their deadline, not in the queue, just adopted)
        # are read again: one may have ended, or been confirmed, while /queue was read. The
        # others (in a long queue, nearly all) are only looked at.
        acting = adopted | {
            j.id
            for j in jobs
            if j.prompt_id
            and (
                (j.deadline is not None and now > j.deadline)
                or not (queue.is_running(j.prompt_id) or queue.is_pending(j.prompt_id))
            )
        }
        fresh = {j.id: j for j in self.store.get_many(list(acting), graph=False)} if acting else {}
        seen: set[str] = set()
        for listed in jobs:
            job = fresh.get(listed.id) if listed.id in acting else listed
            if job is None or job.finished or not job.prompt_id:
                continue  # purged, or ended meanwhile
            prompt_id = job.prompt_id
            seen.add(prompt_id)
            if job.id in unconfirmed and job.submitted:
                continue
            running, pending = queue.is_running(prompt_id), queue.is_pending(prompt_id)
            if job.deadline is not None and now > job.deadline:
                self._time_out(job, running, pending)
                continue
            if running or pending:
                self._missing_since.pop(prompt_id, None)
                if running and job.status == JobStatus.QUEUED:
                    self.store.mark_processing(prompt_id)
                continue
            if events_flowing and job.submitted and prompt_id not in self._missing_since:
                # The time it went missing counts towards LOST_JOB_GRACE all the same.
                self._missing_since[prompt_id] = now
                continue
            if self.settle_from_history(prompt_id):
                self._missing_since.pop(prompt_id, None)
                continue
            self._handle_missing(job, now)
        for prompt_id in list(self._missing_since):
            if prompt_id not in seen:
                del self._missing_since[prompt_id]

    def _followed(self, jobs: list[Job], followed: str | None) -> bool:
        """Whether the live WebSocket accounts for every unfinished job: the one running is
        the run it follows, none waits in ComfyUI's queue (whose place only /queue tells),
        none is unconfirmed or past its deadline. Then /queue and /history would say nothing
        the events do not."""
        now = self.store.now()
        return all(
            job.submitted
            and job.status == JobStatus.PROCESSING
            and job.prompt_id == followed
            and (job.deadline is None or now <= job.deadline)
            for job in jobs
        )

    def _nothing_waits(self, queue_remaining: int | None, now: float) -> bool:
        """Whether a pass asked for by a `status` event can leave /queue alone: ComfyUI holds at
        most one prompt (so none waits behind another, and no place moves), and the unfinished
        jobs the last read of the rows found (`_placed`, `_first_deadline`) show no place above
        0 that would need correcting and none is past its deadline at `now`, and a pass read
        /queue (or found every job followed) within LOOK_EVERY intervals. Such events come with
        every submission and end of a run: with one job at a time, reading /queue for each was
        the largest part of what reconciling cost a job. A job still unconfirmed is left to
        the next pass, as a job confirmed while /queue is read is."""
        if queue_remaining is None or queue_remaining > 1 or self._placed:
            return False
        if time.monotonic() - self._looked_at >= LOOK_EVERY * self.config.reconcile_interval:
            return False
        return not self._deadline_come(now)

    def _deadline_come(self, now: float) -> bool:
        """Whether an unfinished job the last read of the rows found is past its deadline."""
        return self._first_deadline is not None and now > self._first_deadline

    def _held_by_comfyui(
        self, jobs: list[Job], holds: int | None, followed: str | None
    ) -> list[Job]:
        """The jobs that ComfyUI's last `status` event counted: at a run's end ComfyUI says it
        holds one prompt less (that event comes just before the run's last one, and the
        tracker settles the job after it), so a pass asked for by it finds the run that the
        socket follows still unfinished, one more job than ComfyUI holds. Then that job is left
        out (its end is being written; the next pass sees it final)."""
        if holds is None or holds != len(jobs) - 1 or followed is None:
            return jobs
        ending = {
            j.id for j in jobs if j.prompt_id == followed and j.status == JobStatus.PROCESSING
        }
        return [j for j in jobs if j.id not in ending] if ending else jobs

    def _ranked(self, jobs: list[Job], holds: int | None, now: float) -> dict | None:
        """The jobs' places in ComfyUI's queue without reading /queue (None: read it), when
        the last `status` event says ComfyUI holds as many prompts as there are unfinished
        jobs, and each job is confirmed with its queue number, none past its deadline or
        missing, at most one running: ComfyUI then holds these prompts and no other, and runs
        them in the order of their numbers, so the one running is at 0 and the others at 1..
        by number. /queue copies every waiting prompt whole, under the lock ComfyUI's runs
        also take: with a queue of hundreds of graphs, reading it at each run's end was most
        of what reconciling cost. A pass still reads it every RANKED_LOOK_EVERY intervals,
        and whenever anything does not add up."""
        if holds is None or holds != len(jobs) or self._missing_since or self._deadline_come(now):
            return None
        since = time.monotonic() - self._looked_at
        if since >= RANKED_LOOK_EVERY * self.config.reconcile_interval:
            return None
        if not all(job.submitted and job.queue_number is not None for job in jobs):
            return None
        running = [job for job in jobs if job.status == JobStatus.PROCESSING]
        if len(running) > 1:
            return None
        waiting = [job for job in jobs if job.status != JobStatus.PROCESSING]
        waiting.sort(key=lambda job: job.queue_number)
        places = {job.prompt_id: 0 for job in running}
        places.update({job.prompt_id: n for n, job in enumerate(waiting, start=1)})
        return places

    def _place(self, jobs: list[Job], places: dict[str, int]) -> None:
        """Store each job's place (None: not in ComfyUI's queue), writing only those that
        differ from the rows just read: a transaction only when a place moved."""
        moved = {
            job.prompt_id: places.get(job.prompt_id)
            for job in jobs
            if job.prompt_id and job.queue_position != places.get(job.prompt_id)
        }
        if moved:
            self.store.set_queue_positions(moved)
        self._placed = any(places.get(job.prompt_id) for job in jobs if job.prompt_id)

    def _calm(self, queue_remaining: int | None) -> bool:
        """Whether a pass asked for by a `status` event can skip even reading the rows: ComfyUI
        holds one prompt and `_nothing_waits` holds for what the last pass that read them saw
        (only passes write places). With one job at a time such an event comes with every
        submission, and its pass was a read of the rows that found nothing to do. When ComfyUI
        holds none (a run's end) the rows are read: usually none is unfinished then, which is
        the cheapest look there is (it keeps the next passes from reading /queue). A job
        created since (a new deadline, an unconfirmed submission) is seen by the next pass
        that reads them."""
        # The wall clock, not store.now() (on PostgreSQL a query): deadlines are minutes long,
        # and a pass a moment late times the job out all the same.
        return queue_remaining == 1 and self._nothing_waits(queue_remaining, time.time())

    def _adopt_unconfirmed(self, jobs: list[Job], queue: comfyui.QueueSnapshot) -> set[str]:
        """Find jobs whose POST /prompt answer never arrived (sidecar killed, timeout) by the
        job id the sidecar put in the prompt's extra_data, and take over ComfyUI's prompt_id.
        Servers that honour a client prompt_id need none of this; early-2024 servers do."""
        unconfirmed = {j.id for j in jobs if not j.submitted}
        if not unconfirmed:
            return set()
        found = {k: v for k, v in queue.marked().items() if k in unconfirmed}
        if len(found) < len(unconfirmed):
            recent = self.client.recent_prompts_of_jobs(RECENT_HISTORY)
            found.update({k: v for k, v in recent.items() if k in unconfirmed})
        for job_id, (prompt_id, number) in found.items():
            log.info("job %s found in ComfyUI as prompt %s", job_id, prompt_id)
            # With its number, as its own confirmation stores it: a job without one keeps
            # every pass reading /queue (`_ranked`) for as long as it waits.
            self.store.mark_submitted(job_id, prompt_id, number=number)
        return set(found)

    def _time_out(self, job: Job, running: bool, pending: bool) -> None:
        minutes = round((job.deadline - job.created_at) / 60, 2)
        # Failed first: the interruption ComfyUI then reports must not make it "cancelled".
        if not self.finisher.finish(
            job,
            JobStatus.FAILED,
            error=f"Job timed out after {minutes:g} minutes",
            prompt_id=job.prompt_id,
        ):
            return
        log.warning("job %s timed out after %g minutes", job.id, minutes)
        if pending or running:
            cancellation.stop(self.client, job.prompt_id, pending)

    def _handle_missing(self, job: Job, now: float) -> None:
        """A job ComfyUI has neither queued, running, nor in its history."""
        prompt_id = job.prompt_id
        if not job.submitted:
            # Created, but the POST /prompt that submits it never answered: it may still be in
            # flight in another worker (so wait longer than a read timeout), or the sidecar died
            # before sending it. Not in ComfyUI after that: safe to send now.
            # The grace counts only time during which ComfyUI answered (this method runs only
            # then): a POST held up by a network stall can still land after the stall ends,
            # and is then found by its job id instead of being sent a second time.
            grace = max(self.config.lost_job_grace, self.config.comfyui_read_timeout + 5)
            first = self._missing_since.setdefault(prompt_id, now)
            if now - job.created_at > grace and now - first >= self.config.lost_job_grace:
                self._missing_since.pop(prompt_id, None)
                self._resubmit_or_fail(
                    job,
                    "the sidecar stopped before ComfyUI confirmed the job, and ComfyUI does"
                    " not have it",
                )
            return
        first = self._missing_since.setdefault(prompt_id, now)
        if now - first < self.config.lost_job_grace:
            return
        self._missing_since.pop(prompt_id, None)
        if job.status == JobStatus.PROCESSING or job.queue_position == 0:
            if self.finisher.finish(
                job,
                JobStatus.FAILED,
                error="ComfyUI restarted while the job was running (it is in neither its"
                " queue nor its history): the result is lost; submit it again",
            ):
                log.warning("job %s was running when ComfyUI restarted", job.id)
        else:
            self._resubmit_or_fail(
                job, "ComfyUI restarted (or its queue was cleared) before the job ran"
            )

    def _resubmit_or_fail(self, job: Job, why: str) -> None:
        if not self.config.resubmit_lost_jobs:
            self.finisher.finish(job, JobStatus.FAILED, error=f"{why}; RESUBMIT_LOST_JOBS is off")
            return
        # Read again: the pass's copy can be a moment old, and a job that ended (or was sent
        # again) meanwhile must not be sent a second time.
        whole = self.store.get(job.id)
        if whole is None or whole.finished or whole.prompt_id != job.prompt_id:
            return
        try:
            folder = outputs.sending_folder(self.config, self.fleet)
            submitted = self.client.submit(
                edit.in_output_folder(whole.graph, folder),
                self.client_id,
                prompt_id=self.client.new_prompt_id(),
                extra_data={comfyui.JOB_MARKER: job.id},
            )
        except ComfyUIRejected as exc:
            self.finisher.finish(job, JobStatus.FAILED, error=f"{why}; {exc.message}")
            return
        self.store.mark_resubmitted(job.id, submitted.prompt_id, submitted.number)
        log.warning("job %s resubmitted as prompt %s: %s", job.id, submitted.prompt_id, why)

    def purge_old_jobs(self) -> int:
        """Delete finished jobs past JOB_RETENTION_DAYS (and their files if PURGE_FILES)."""
        cutoff = time.time() - self.config.job_retention_days * 86400
        removed = self.store.purge(cutoff)
        if self.config.purge_files:
            for job in removed:
                for image in job.outputs:
                    self._delete_file(job, image)
        if removed:
            log.info("purged %d jobs finished before the retention period", len(removed))
        return len(removed)

    def _delete_file(self, job: Job, image: dict) -> None:
        """PURGE_FILES: delete one image of a purged job; a file already gone is fine, one the
        sidecar may not delete is logged (the job record is gone either way)."""
        try:
            path = outputs.resolve(
                self.config.comfyui_output_dir, image["filename"], image["subfolder"]
            )
            path.unlink()
        except FileNotFoundError:
            return
        except UnsafePath as exc:
            log.warning("job %s: not deleting %r: %s", job.id, image["filename"], exc.message)
        except OSError as exc:
            log.warning(
                "job %s: could not delete %s (%s): the sidecar's user needs write access to its"
                " folder (docs/deployment.md, file ownership)",
                job.id,
                path,
                exc.strerror or exc,
            )
