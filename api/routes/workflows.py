"""The workflows a request can name, and what each one accepts."""

from flask import Blueprint, jsonify

from api.errors import not_found
from api.services import services

bp = Blueprint("workflows", __name__)


@bp.get("/api/workflows")
def workflow_list():
    library = services().workflows
    names = library.names()
    return jsonify(
        workflows=names,
        total=len(names),
        default=services().config.default_workflow,
        invalid=library.invalid(),
    )


@bp.get("/api/workflows/<name>")
def workflow_detail(name: str):
    library = services().workflows
    workflow = library.get(name)
    if workflow is None:
        reason = library.reason_invalid(name)
        if reason:
            raise not_found(f"Workflow '{name}' is not usable: {reason}")
        raise not_found(f"Workflow not found: {name}")
    return jsonify(workflow.describe())
