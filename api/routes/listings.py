"""Read-only listings answered from the sidecar's own records: outputs, history, jobs."""

from flask import Blueprint, jsonify, request

from api import auth, pagination, sidecar, tenancy
from api.exceptions import InvalidRequest
from api.job import FINISHED, HISTORY_ENTRY_SCHEMA, STATUS_WORD, JobStatus, iso
from api.openapi import operation, query_param
from api.routes.images import file_url, image_url
from api.schemas import INTEGER, STRING, TIMESTAMP, array, obj, ref

bp = Blueprint("listings", __name__)

OUTPUTS_PAGE = (100, 1000)  # default and largest limit
HISTORY_PAGE = (50, 500)
JOBS_PAGE = (50, 500)


@bp.get("/api/outputs")
@operation(
    "Images in ComfyUI's output folder, newest first (a key that is not admin: its own jobs')",
    {
        200: obj(
            {
                "images": array(STRING),
                "output_dir": STRING,
                "items": array(
                    obj({"name": STRING, "size": INTEGER, "modified": TIMESTAMP, "url": STRING})
                ),
                **pagination.ENVELOPE_PROPERTIES,
            }
        )
    },
    errors=(400,),
    parameters=pagination.parameters(*OUTPUTS_PAGE),
)
def outputs():
    limit, offset = pagination.page(*OUTPUTS_PAGE)
    s = sidecar.current()
    caller = auth.caller()
    listing = s.outputs.listing()
    if not caller.sees_all:
        mine = s.store.files_of(caller.name)
        listing = [item for item in listing if item[1] in mine]
    chosen = listing[offset : offset + limit]
    shown_dir = (
        str(s.config.comfyui_output_dir) if caller.sees_server_paths else tenancy.OUTPUT_DIR_NAME
    )
    return jsonify(
        images=[name for _, name, _ in chosen],
        output_dir=shown_dir,
        items=[
            {
                "name": name,
                "size": size,
                "modified": iso(mtime),
                "url": file_url(name),
            }
            for mtime, name, size in chosen
        ],
        **pagination.envelope(len(listing), limit, offset, len(chosen)),
    )


@bp.get("/api/history")
@operation(
    "Finished jobs, newest first, in ComfyUI's /history shape (keyed by prompt_id)",
    {
        200: obj(
            {
                "history": {"type": "object", "additionalProperties": HISTORY_ENTRY_SCHEMA},
                "total_items": INTEGER,
                **pagination.ENVELOPE_PROPERTIES,
            }
        )
    },
    errors=(400,),
    parameters=pagination.parameters(*HISTORY_PAGE),
)
def history():
    limit, offset = pagination.page(*HISTORY_PAGE)
    caller = auth.caller()
    page, total = sidecar.current().store.page(
        FINISHED, limit, offset, newest_by="finished_at", owner=caller.owner_filter
    )
    paths = caller.sees_server_paths
    return jsonify(
        history={(job.prompt_id or job.id): job.to_history_entry(image_url, paths) for job in page},
        total_items=total,
        **pagination.envelope(total, limit, offset, len(page)),
    )


def _statuses() -> list[str] | None:
    raw = request.args.get("status")
    if not raw:
        return None
    words = [w.strip() for w in raw.split(",") if w.strip()]
    valid = [s.value for s in JobStatus]
    unknown = [w for w in words if w not in valid]
    if unknown or not words:
        raise InvalidRequest(
            f"status must be one or more of {', '.join(valid)} (got {raw!r})",
            {"field": "status", "allowed": valid},
        )
    return words


@bp.get("/api/jobs")
@operation(
    "The sidecar's jobs, newest first, optionally of some statuses",
    {200: obj({"jobs": array(ref("JobSummary")), **pagination.ENVELOPE_PROPERTIES})},
    errors=(400,),
    parameters=[
        *pagination.parameters(*JOBS_PAGE),
        query_param(
            "status",
            STRING,
            "Comma-separated status words (" + ", ".join(STATUS_WORD["enum"]) + ")",
        ),
    ],
)
def job_list():
    statuses = _statuses()
    limit, offset = pagination.page(*JOBS_PAGE)
    caller = auth.caller()
    page, total = sidecar.current().store.page(statuses, limit, offset, owner=caller.owner_filter)
    return jsonify(
        jobs=[job.to_summary(image_url, caller.sees_server_paths) for job in page],
        **pagination.envelope(total, limit, offset, len(page)),
    )
