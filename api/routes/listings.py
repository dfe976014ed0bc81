"""Read-only listings answered from the sidecar's own records: outputs, history, jobs."""

from flask import Blueprint, jsonify, request, url_for

from api import pagination, sidecar
from api.exceptions import InvalidRequest
from api.job import FINISHED, JobStatus, iso
from api.routes.images import image_url

bp = Blueprint("listings", __name__)


@bp.get("/api/outputs")
def outputs():
    limit, offset = pagination.page(default_limit=100, max_limit=1000)
    s = sidecar.current()
    listing = s.outputs.listing()
    chosen = listing[offset : offset + limit]
    return jsonify(
        images=[name for _, name, _ in chosen],
        output_dir=str(s.config.comfyui_output_dir),
        items=[
            {
                "name": name,
                "size": size,
                "modified": iso(mtime),
                "url": url_for("images.image", filename=name),
            }
            for mtime, name, size in chosen
        ],
        **pagination.envelope(len(listing), limit, offset, len(chosen)),
    )


@bp.get("/api/history")
def history():
    limit, offset = pagination.page(default_limit=50, max_limit=500)
    page, total = sidecar.current().store.page(FINISHED, limit, offset, newest_by="finished_at")
    return jsonify(
        history={(job.prompt_id or job.id): job.to_history_entry(image_url) for job in page},
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
def job_list():
    statuses = _statuses()
    limit, offset = pagination.page(default_limit=50, max_limit=500)
    page, total = sidecar.current().store.page(statuses, limit, offset)
    return jsonify(
        jobs=[job.to_summary(image_url) for job in page],
        **pagination.envelope(total, limit, offset, len(page)),
    )
