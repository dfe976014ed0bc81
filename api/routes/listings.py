"""Read-only listings answered from the sidecar's own records: outputs, history, jobs."""

from flask import Blueprint, jsonify, request, url_for

from api import jobs, pagination
from api.errors import bad_request
from api.jobs import FINISHED, JobStatus
from api.routes.images import image_url
from api.services import services

bp = Blueprint("listings", __name__)


@bp.get("/api/outputs")
def outputs():
    limit, offset = pagination.page(default_limit=100, max_limit=1000)
    s = services()
    listing = s.outputs.listing()
    chosen = listing[offset : offset + limit]
    return jsonify(
        images=[name for _, name, _ in chosen],
        output_dir=str(s.config.comfyui_output_dir),
        items=[
            {
                "name": name,
                "size": size,
                "modified": jobs.iso(mtime),
                "url": url_for("images.image", filename=name),
            }
            for mtime, name, size in chosen
        ],
        **pagination.envelope(len(listing), limit, offset, len(chosen)),
    )


def _history_item(job: dict) -> dict:
    by_node: dict[str, dict] = {}
    for image in job["outputs"]:
        entry = {k: image[k] for k in ("filename", "subfolder", "type")}
        by_node.setdefault(image["node_id"], {"images": []})["images"].append(entry)
    return {
        "prompt": job["prompt"],
        "outputs": by_node,
        "status": {
            "status_str": "success" if job["status"] == JobStatus.COMPLETED else "error",
            "completed": job["status"] == JobStatus.COMPLETED,
            "messages": [],
        },
        "job_id": job["id"],
        "job_status": job["status"],
        "workflow": job["workflow"],
        "error": job["error"],
        "created_at": jobs.iso(job["created_at"]),
        "finished_at": jobs.iso(job["finished_at"]),
        "images": [image_url(image) for image in job["outputs"]],
    }


@bp.get("/api/history")
def history():
    limit, offset = pagination.page(default_limit=50, max_limit=500)
    page, total = services().store.page(FINISHED, limit, offset, newest_by="finished_at")
    return jsonify(
        history={(job["prompt_id"] or job["id"]): _history_item(job) for job in page},
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
        raise bad_request(
            f"status must be one or more of {', '.join(valid)} (got {raw!r})",
            {"field": "status", "allowed": valid},
        )
    return words


@bp.get("/api/jobs")
def job_list():
    statuses = _statuses()
    limit, offset = pagination.page(default_limit=50, max_limit=500)
    page, total = services().store.page(statuses, limit, offset)
    return jsonify(
        jobs=[jobs.summary(job, image_url) for job in page],
        **pagination.envelope(total, limit, offset, len(page)),
    )
