"""Who is asking, and what is theirs: API keys as tenants.

Every job records the name of the API key that created it (its `owner`). A key of scope
`read` or `generate` sees, follows, downloads, saves and cancels only its own jobs and the
files they produced; another key's job is "not found", exactly like a job that never existed,
so a key cannot even learn that it exists. An `admin` key sees everything. Without API keys
(loopback mode) there is one caller, the operator on this machine, who sees everything, as
before keys had names.

Uploads of a non-admin key live in a folder of their own inside ComfyUI's input folder
(keys/<name>/), and that key's image references are resolved inside it, so one key can
neither replace nor read another's input images.

Nothing here knows HTTP: api/auth.py builds the Caller for a request, routes pass it on.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.comfyui import QueueSnapshot
from api.exceptions import NotFound
from api.job import Job
from api.jobstore import JobStore

# Inside ComfyUI's input folder: keys/<key name>/ holds the uploads of one non-admin key.
UPLOADS_ROOT = "keys"
# What a non-admin key reads where the operator sees the output folder's path on the server.
OUTPUT_DIR_NAME = "output"


@dataclass(frozen=True)
class Caller:
    """The API key behind a request (name and scope), or the operator without keys."""

    name: str | None  # the key's name; None without API keys
    scope: str = "admin"

    @property
    def keyed(self) -> bool:
        return self.name is not None

    @property
    def sees_all(self) -> bool:
        """Admin keys, and the operator without keys, see every job and every file."""
        return self.scope == "admin"

    @property
    def owner_filter(self) -> str | None:
        """The owner to restrict look-ups to; None when the caller sees everything."""
        return None if self.sees_all else self.name

    @property
    def sees_server_paths(self) -> bool:
        """Absolute paths on the server are the operator's business, not a tenant's."""
        return self.sees_all

    @property
    def upload_folder(self) -> str:
        """Where this caller's uploads go inside ComfyUI's input folder ("" is its root)."""
        return "" if self.sees_all else f"{UPLOADS_ROOT}/{self.name}"

    def owns(self, job: Job) -> bool:
        return self.sees_all or job.owner == self.name


# Without API keys: the operator on this machine, who sees and may do everything.
OPERATOR = Caller(None, "admin")
# A request without a key for a signed image URL (api/image_links.py): it may read the one file
# its path names, and nothing else (no key can have this name: api/auth.py's NAME).
SIGNED_URL = Caller("(signed URL)", "read")


def job_of(store: JobStore, caller: Caller, job_id: str) -> Job:
    """The job, if this caller may see it; NotFound otherwise (whether or not it exists)."""
    job = store.get(job_id)
    if job is None or not caller.owns(job):
        raise NotFound()
    return job


def check_visible(store: JobStore, caller: Caller, job_id: str) -> None:
    """NotFound unless the job exists and the caller may see it (before a stream opens)."""
    if caller.sees_all:
        if store.version(job_id) is None:
            raise NotFound()
        return
    job_of(store, caller, job_id)


@dataclass
class QueueView:
    """GET /api/queue as one caller sees it: what is theirs, and only counts of the rest."""

    pending: list[list]  # [number, prompt_id] items of ComfyUI's queue
    running: list[list]
    jobs: list[tuple[Job, int | None]]  # unfinished jobs with their queue position
    others: dict[str, int] | None  # counts of what belongs to other keys; None: sees all


def queue_view(
    snapshot: QueueSnapshot,
    unfinished: list[Job],
    caller: Caller,
    places: dict[str, int | None] | None = None,
) -> QueueView:
    """The sidecar's unfinished jobs and ComfyUI's queue, as far as this caller may see them.

    The operator and admin keys see everything (ComfyUI's whole queue, every client's prompts
    included). Another key sees its own jobs and their prompts, and how many others wait and
    run, so it can tell how long it will wait, but not whose they are or what they ask for.
    `places` (a cluster's shared queue) gives each job's place where ComfyUI's queue cannot.
    """
    contract = snapshot.as_contract()
    positioned = [
        (job, places.get(job.id) if places is not None else snapshot.position_of(job.prompt_id))
        for job in unfinished
    ]
    if caller.sees_all:
        return QueueView(contract["queue_pending"], contract["queue_running"], positioned, None)
    mine = [(job, position) for job, position in positioned if job.owner == caller.name]
    prompts = {job.prompt_id for job, _ in mine if job.prompt_id}
    pending = [item for item in contract["queue_pending"] if item[1] in prompts]
    running = [item for item in contract["queue_running"] if item[1] in prompts]
    others = {
        "queue_pending": len(contract["queue_pending"]) - len(pending),
        "queue_running": len(contract["queue_running"]) - len(running),
        "jobs": len(unfinished) - len(mine),
    }
    return QueueView(pending, running, mine, others)
