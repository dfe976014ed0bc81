"""Job statuses as files the shipped nginx answers plain polls from, in public deployments.

Scripts poll GET /api/status/<job_id> every second or two, and each poll costs the sidecar a
few milliseconds of Python: with a hundred scripts polling their queued jobs, that is most of
what the sidecar costs a GPU. In a public deployment (no API_KEYS, ALLOW_UNAUTHENTICATED=true,
no ALLOWED_HOSTS, one node: every caller is the operator and reads every job the same way) the
answer to a plain poll is fixed by the job's row, so the elected tracker's process keeps it in
STATUS_DOCS_DIR/<job_id>.json and the shipped nginx sends that file without asking the sidecar
(nginx/templates/sidecar/images-on.conf). A poll with any query (a long poll, ?since=) and a
job without a file still go to the sidecar.

Every writer of a job row announces it after its commit (api/wakeup.py), and the file is written
right there, on the announcing thread (the tracker's socket or reconciliation, a request thread, or
the thread that receives other processes' announcements): it reads the row, renders it as GET
/api/status does, and replaces the file (a temporary name, the old file removed, then a rename)
with its mtime set to the row's version. On an idle host a thread's wake-up costs about as much
CPU as a file, whatever it then does: a thread of the status files' own, woken for each change,
cost more than the files. Except on the tracker's socket thread, which hands its changes (a
job's start, its end, a step a second) to the sweeper (below): written there, each file held back
the reading of ComfyUI's next events, and under a burst of short jobs the sweeper writes them in
batches (one read of the rows for many jobs; a job whose end came before its start was written
gets one file). Measured with 200 jobs from 50 clients: the tracker's two threads used 1.36-1.55
ms of CPU a job, its socket thread alone 2.25-2.26 ms before; with one polling client a job costs
~1.3 ms more (the wake-ups; docs/benchmarks.md).
Writes are one at a time (a lock), each reading its row afresh, so a later change is never
overwritten by an earlier one. A file is never ahead of its row; it can lag behind it when an
announcement is lost or a process dies between its commit and the announcement, so a thread beside
the tracker compares the files of unfinished jobs and of jobs changed since its last look with
their rows every SWEEP_SECONDS, and every file in the folder when it starts (and every
FULL_SWEEP_SECONDS): a job that is gone, removed; another version than its row's, rewritten.

A change of status is written at once. A change within the same status (a progress step, the node
that runs, a place in the queue) is written at most every REWRITE_GAP seconds per job (for a queued
job, half a second per place if that is longer: a hundred places back, every 50 s), the last one
always: with the first announcement of that job after the gap (the tracker announces a run's steps
several times a second, and every place whenever a run ends), or, when none comes, by that thread
twice the gap after the last write. A plain poll's progress is a second or two behind, its queue
place ten to twenty seconds, or half a second to a second per place when that is longer (a long
poll, a query or an event stream asks the sidecar, which answers from the row). Without that,
each progress event of a run, and each place of every waiting job whenever one ends, was a file.
The jobs one write announces (every waiting job's place, at a run's end) are written with one
read of their rows.

Only jobs that someone polls plainly have a file. A job's first plain poll finds none, so nginx
asks the sidecar, which answers it and, for an unfinished job, asks for a file (`want`: a marker
file `.<job_id>.wanted` beside the files, then an announcement of the job, which reaches the
writer in whichever process it runs); from then on the job's file follows its row. A job whose
clients long-poll, stream its events, take the image as the answer or use the WebSocket (a burst
of `?wait=` submissions) never costs a file: before, every job got one at its first place or its
start, and the files were a tenth of gunicorn's CPU in such a burst. A plain poller pays one
answer of the sidecar's a job, as it did when its first poll came before the job's first place.
The marker outlives a lost announcement or a writer's restart: the sweeps write the jobs that
have one.

Not written: jobs with include_base64 (their status inlines the images, read from disk at each
answer), and nothing at all where the answer depends on the caller or the request (API keys, a
Host check, a cluster, presigned object URLs): the folder is emptied instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from api.job import UNFINISHED, Job, JobStatus, image_path
from api.wakeup import PLACE, PROGRESS

log = logging.getLogger(__name__)

# How often the files of unfinished and recently changed jobs are checked against their rows:
# every change is announced, so a sweep only finds one whose announcement was lost.
SWEEP_SECONDS = 5.0
# A sweep looks at the jobs changed since the previous one began, less this much (a row is
# stamped before its transaction commits).
SWEEP_MARGIN = 10.0
# How often every file in the folder is checked (purged jobs, changes while the writer was off).
FULL_SWEEP_SECONDS = 300.0
# The names of the folder a full sweep compares with their rows at a time (one read of rows).
FOLDER_CHUNK = 500
# How often a job's file is rewritten while its status stays the same (seconds, by status).
REWRITE_GAP = {JobStatus.QUEUED: 10.0, JobStatus.PROCESSING: 1.0}
# A queued job's file waits longer the further back it is, this much per place (seconds): its
# place is then at most about a quarter behind with runs of 2 s, a tenth with runs of 5 s.
# Each queued file rewritten every ten seconds was, with a hundred waiting, twenty files a run.
PLACE_GAP_PER_PLACE = 0.5
SUFFIX = ".json"
# `.<job_id>` + this: a plain poll of the job reached the sidecar, which wants it to have a file.
WANTED = ".wanted"


def refusal(config, storage_presigns: bool) -> str | None:
    """Why this deployment must not have status files (None: it may)."""
    if not config.status_docs_dir:
        return "STATUS_DOCS_DIR is not set"
    if config.api_keys.strip():
        return "API keys are set: each key sees only its own jobs"
    if not config.allow_unauthenticated:
        return "ALLOW_UNAUTHENTICATED is off: only this machine may read statuses"
    if config.allowed_hosts.strip():
        return "ALLOWED_HOSTS is set: nginx would not check the Host"
    if config.clustered:
        return "a cluster: a job's status can say why it waits for a node"
    if storage_presigns:
        return "object storage without S3_PUBLIC_BASE_URL: its URLs are signed per answer"
    return None


class StatusDocs:
    """The folder of status files and the thread that keeps it in step with the job rows."""

    def __init__(
        self,
        folder: Path,
        store,
        object_url: Callable[[str], str] | None,
        enabled: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self._prefix = os.path.join(os.fsdecode(self.folder), "")
        self.store = store
        self.object_url = object_url
        self.enabled = enabled
        self._sweep_asked = False  # announcements may have been missed: sweep now
        self._lock = threading.Lock()  # the bookkeeping below
        self._io = threading.Lock()  # one write at a time: each reads its rows afresh
        self._woken = threading.Event()
        self._failed = False
        self._made = False  # the folder exists (made once)
        self._swept_at: float | None = None  # when the last sweep began (Unix time)
        # Unfinished jobs whose file this writer wrote: what it showed (`_shape`), when a
        # change within that may be written (monotonic: the write plus the gap), and the gap
        # (`_gap`).
        self._written: dict[str, tuple[tuple, float, float]] = {}
        # Changes held back by their gap (`_gap`): job id -> when the writer comes back for its
        # file if no announcement brings it sooner (monotonic: another gap after the change was
        # due).
        self._later: dict[str, float] = {}
        self._wakes_at = 0.0  # when the sleeping sweeper wakes by itself (0: it is awake)
        # Threads whose announcements the sweeper writes (hand_off), and the jobs they announced
        # that it has yet to write, in order (a dict as an ordered set).
        self._handing: set[int] = set()
        self._handed: dict[str, None] = {}

    # --- what a status file holds ------------------------------------------------------------

    def render(self, job: Job) -> bytes:
        """GET /api/status/<job_id>'s body as the operator reads it."""
        shown = job.to_status(image_path, self.object_url, server_paths=True)
        return json.dumps(shown, separators=(",", ":")).encode()

    def path(self, job_id: str) -> Path:
        return Path(self._file(job_id))

    def _file(self, job_id: str) -> str:
        # Plain strings: pathlib's joins were a tenth of the writer's time.
        return f"{self._prefix}{job_id}{SUFFIX}"

    def _marker(self, job_id: str) -> str:
        return f"{self._prefix}.{job_id}{WANTED}"

    # --- who wants a file --------------------------------------------------------------------

    def want(self, job: Job) -> None:
        """The sidecar answered a plain poll of this job, which nginx would have sent from a
        file had there been one: give an unfinished job a file from now on. Called on a request
        thread of any process; the writer, in whichever process runs it, hears of it by the
        job's announcement (or finds the marker at its next sweep). A final job gets none:
        nginx caches the sidecar's answer for it."""
        if not self.enabled or job.finished or job.options.get("include_base64"):
            return
        marker = self._marker(job.id)
        if os.path.exists(self._file(job.id)) or os.path.exists(marker):
            return  # written, or asked for already (a poll between a file's removal and rename)
        try:
            self._make_folder()
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError as exc:
            self._cannot_write(exc)
            return
        self.store.wakeup.announce(job.id)

    # --- the writer ------------------------------------------------------------------------

    def hand_off(self) -> None:
        """From now on, what the calling thread announces is written by the sweeper (woken for
        it), not on this thread: for a thread that has better things to do first."""
        with self._lock:
            self._handing.add(threading.get_ident())

    def changed(self, job_ids: list[str] | None, change: str | None = None) -> None:
        """These jobs' rows changed, in one write (None: any may have): called on the thread
        that announced them (a writer of this process, after its commit) or that received the
        announcement (another process's). `change` says what a writer of this process changed
        (PROGRESS, PLACE; None: anything, or unknown): a change that cannot have moved a job
        out of the status its file shows is held without reading the row. Anything else is
        written here and now, the jobs of one write with one read of their rows (a run's end
        moves every waiting job's place), or by the sweeper if this thread handed its writes
        off."""
        if job_ids is None:
            with self._lock:
                self._sweep_asked = True
            self._woken.set()
            return
        with self._lock:
            if change is not None:
                job_ids = [j for j in job_ids if not self._hold(j, change)]
            sure = {j for j in job_ids if j in self._written}
            handed = threading.get_ident() in self._handing
        # Looked at here, so that a change of a job without a file (most jobs: nobody polls
        # them plainly) wakes no other thread.
        wanted = [j for j in job_ids if self._wanted(j, j in sure)]
        if not wanted:
            return
        if handed:
            with self._lock:
                self._handed.update(dict.fromkeys(wanted))
            self._woken.set()
        else:
            try:
                self.write(wanted, held=True)
            except Exception:
                # The files only spare the sidecar work: the writer of the row must not fail.
                log.exception("status files: writing failed; polls go to the sidecar meanwhile")

    def _wanted(self, job_id: str, sure: bool) -> bool:
        """Whether an announced change is written: `sure` for a job whose file this writer
        wrote; else a job that has a file, or whose file a plain poll asked for (`want`). The
        others' changes cost two stat() calls, and the sidecar answers their polls."""
        return sure or os.path.exists(self._file(job_id)) or self._asked(job_id)

    def _hold(self, job_id: str, change: str) -> bool:
        """Hold a change of this kind to a job whose file is recent (under the lock); whether
        it was held. A change that comes after its gap is not held: written now, while the
        announcer is awake. Holding wakes the sweeper only when it would otherwise sleep past
        the time it must come back for the file."""
        written = self._written.get(job_id)
        if written is None:
            return False
        (status, unplaced), due, gap = written
        if not (
            (change == PROGRESS and status == JobStatus.PROCESSING)
            or (change == PLACE and status == JobStatus.QUEUED and not unplaced)
        ):
            return False
        if time.monotonic() >= due:
            return False
        self._come_back(job_id, due + gap)
        return True

    def _come_back(self, job_id: str, back: float) -> None:
        """Note that the writer comes back at `back` (monotonic: another gap after the change
        was due) for a held change (under the lock), if no announcement of its job brings it
        sooner, waking the sweeper if it would otherwise sleep past that time. A write held by
        _write_rows must wake it too: on a request or socket thread it can hold a change while
        the sweeper, done writing the same job, has gone back to sleep until its next sweep,
        and the job's later changes, held because it is already noted, would not wake it
        either."""
        if job_id not in self._later:
            self._later[job_id] = back
            if back < self._wakes_at:
                self._woken.set()

    def run(self, stop: threading.Event) -> None:
        """The sweeper's loop, until `stop` is set (the tracker's thread beside it): follows
        every announcement, sweeps, and writes the held changes no announcement brought."""
        if not self.enabled:
            self.clear()
            return
        self.store.wakeup.follow_all(self.changed)
        self.sweep(full=True)
        next_sweep = time.monotonic() + SWEEP_SECONDS
        next_full = time.monotonic() + FULL_SWEEP_SECONDS
        while not stop.is_set():
            with self._lock:
                until = min(next_sweep, min(self._later.values(), default=next_sweep))
                self._wakes_at = until
            self._woken.wait(max(0.0, until - time.monotonic()))
            self._woken.clear()
            if stop.is_set():
                return
            now = time.monotonic()
            with self._lock:
                self._wakes_at = 0.0  # awake: what comes due is seen at the next turn
                asked, self._sweep_asked = self._sweep_asked, False
                ripe = {job_id for job_id, at in self._later.items() if at <= now}
                for job_id in ripe:
                    del self._later[job_id]
                handed, self._handed = self._handed, {}
            try:
                # The news first.
                if handed:
                    self.write(list(handed), held=True)
                if asked or now >= next_sweep:
                    self.sweep(full=now >= next_full, skip=ripe)
                    next_sweep = now + SWEEP_SECONDS
                    if now >= next_full:
                        next_full = now + FULL_SWEEP_SECONDS
                if ripe:
                    self.write(ripe, held=True)
            except Exception:
                # The files only spare the sidecar work: a failure must not stop the tracker.
                log.exception("status files: writing failed; polls go to the sidecar meanwhile")

    def write(self, job_ids: Iterable[str], held: bool = False) -> None:
        """Bring these jobs' files in step with their rows (removed when the job is gone); with
        `held`, a job whose status has not changed since this writer last wrote its file less
        than its gap (`_gap`) ago is written when that gap has passed instead."""
        with self._io:
            self._write_rows(list(job_ids), held)

    def _write_rows(self, ids: list[str], held: bool) -> None:
        found = {job.id: job for job in self.store.get_many(ids, graph=False)}
        for job_id in ids:
            job = found.get(job_id)
            if job is None or job.options.get("include_base64"):
                self._remove(job_id)
                continue
            shape, now = _shape(job), time.monotonic()
            with self._lock:
                last = self._written.get(job_id)
                if held and last is not None and last[0] == shape and now < last[1]:
                    self._come_back(job_id, last[1] + last[2])
                    continue
                self._later.pop(job_id, None)
                # Noted before the file is written: a change announced meanwhile is held
                # against this write, and its row read when the hold ends.
                if job.status in UNFINISHED:
                    gap = _gap(job)
                    self._written[job_id] = (shape, now + gap, gap)
                else:
                    self._written.pop(job_id, None)
            if not self._write(job):
                with self._lock:
                    self._written.pop(job_id, None)
            else:
                # Asked for and now written: the marker has done its part. Also after a rewrite:
                # a poll between a file's removal and its rename leaves one for a job with a file.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._marker(job_id))

    def sweep(self, full: bool = False, skip: set[str] | frozenset = frozenset()) -> None:
        """Bring in step the files of unfinished jobs and of jobs changed since the last sweep
        (a file for each that a plain poll asked for; a job that has one, rewritten if it is not
        its row's version); with `full`, every file and marker in the folder instead, removing
        those of jobs that are gone. Jobs in `skip` are about to be written anyway."""
        started = time.time()
        if full:
            stale = self._sweep_folder()
        else:
            after = 0.0 if self._swept_at is None else self._swept_at - SWEEP_MARGIN
            versions = self.store.versions_since(after)
            stale = [
                job_id
                for job_id, (version, _status) in versions.items()
                if self._out_of_step(job_id, version)
            ]
        # A file held back by its gap differs from its row until then: not a missed change.
        with self._lock:
            stale = [j for j in stale if j not in self._later and j not in skip]
        if stale:
            self.write(stale, held=True)
        self._swept_at = started

    def _out_of_step(self, job_id: str, version: float) -> bool:
        """Whether a job's file is not its row's version, or is missing though asked for."""
        mtime = self._mtime(job_id)
        return self._asked(job_id) if mtime is None else mtime != _ns(version)

    def _sweep_folder(self) -> list[str]:
        """Every file and marker in the folder against its job's row, FOLDER_CHUNK names at a
        time: those of jobs that are gone are removed; returns the jobs whose file is not its
        row's version, or is asked for. Only the folder's jobs are read: reading every job
        kept took 0.2-0.5 s of CPU with 100,000 jobs, and the process kept 7-9 MB more memory
        after it (docs/benchmarks.md)."""
        stale: list[str] = []
        for files, markers in self._folder(FOLDER_CHUNK):
            # The names before the rows: a file listed here has its row (a file is written
            # after its row), so one listed without a row is of a job that is gone.
            versions = self.store.versions_of([*files, *markers])
            for job_id in {*files, *markers}:
                found = versions.get(job_id)
                if found is None:
                    self._remove(job_id)
                    continue
                if job_id in files:
                    out_of_step = files[job_id] != _ns(found[0])
                else:  # a marker: its file may be in another chunk, or written since the listing
                    out_of_step = self._out_of_step(job_id, found[0])
                if out_of_step:
                    stale.append(job_id)
        return stale

    def clear(self) -> None:
        """Remove every status file and marker (status files are not wanted here)."""
        for files, markers in self._folder(FOLDER_CHUNK):
            for job_id in {*files, *markers}:
                self._remove(job_id)

    # --- files -------------------------------------------------------------------------------

    def _write(self, job: Job) -> bool:
        temporary = f"{self._prefix}.{job.id}.tmp"
        try:
            self._make_folder()
            with open(temporary, "wb") as f:
                f.write(self.render(job))
            # The row's version as the mtime: a sweep finds files that differ from their rows.
            os.utime(temporary, ns=(_ns(job.updated_at), _ns(job.updated_at)))
            # Not renamed over the old file: on ext4 that writes the new one's blocks out at
            # once (auto_da_alloc), which made a rewrite cost 2-3 times the CPU, for a file most
            # often replaced again within seconds (one replaced in the page cache never reaches
            # the disk). A poll between the two finds no file, and nginx asks the sidecar.
            target = self._file(job.id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            os.rename(temporary, target)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            self._cannot_write(exc)
            return False

    def _make_folder(self) -> None:
        if not self._made:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._made = True

    def _cannot_write(self, exc: OSError) -> None:
        """After a failed write in the folder: make it again next time (it may have gone), and
        say so once."""
        self._made = False
        if not self._failed:
            self._failed = True
            log.warning("status files: cannot write in %s (%s)", self.folder, exc)

    def _remove(self, job_id: str) -> None:
        with self._lock:
            self._written.pop(job_id, None)
            self._later.pop(job_id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(job_id))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._marker(job_id))

    def _asked(self, job_id: str) -> bool:
        return os.path.exists(self._marker(job_id))

    def _mtime(self, job_id: str) -> int | None:
        try:
            return os.stat(self._file(job_id)).st_mtime_ns
        except FileNotFoundError:
            return None

    def _folder(self, size: int) -> Iterator[tuple[dict[str, int], set[str]]]:
        """The folder's files (job id -> mtime) and markers (job ids), about `size` names at a
        time, as the folder is read."""
        files: dict[str, int] = {}
        markers: set[str] = set()
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith("."):
                        if name.endswith(WANTED):
                            markers.add(name[1 : -len(WANTED)])
                    elif name.endswith(SUFFIX):
                        with contextlib.suppress(FileNotFoundError):
                            files[name[: -len(SUFFIX)]] = entry.stat().st_mtime_ns
                    if len(files) + len(markers) >= size:
                        yield files, markers
                        files, markers = {}, set()
        except FileNotFoundError:
            pass
        if files or markers:
            yield files, markers


def _shape(job: Job) -> tuple:
    """What changes a job's file at once when it changes: its status, and whether it has a
    place in the queue yet (the first place is news; the next ones, a countdown)."""
    return job.status, job.queue_position is None


def _gap(job: Job) -> float:
    """How long after its write a job's file may be rewritten while its status stays the same:
    REWRITE_GAP, and for a queued job PLACE_GAP_PER_PLACE times its place if longer."""
    gap = REWRITE_GAP.get(job.status, 0.0)
    if job.status == JobStatus.QUEUED and job.queue_position:
        gap = max(gap, PLACE_GAP_PER_PLACE * job.queue_position)
    return gap


def _ns(version: float) -> int:
    """A row's version as a file time in nanoseconds (the same rounding both ways)."""
    return round(version * 1_000_000_000)
