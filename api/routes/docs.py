"""GET /api/openapi.json (the API described) and GET /api/docs (a page to read and try it)."""

from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from api import openapi, sidecar
from api.auth import requires

bp = Blueprint("docs", __name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>comfy-sidecar API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="docs/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script></body></html>
"""
# Served as a file (not inline) so a strict Content-Security-Policy needs no 'unsafe-inline'.
INIT = "SwaggerUIBundle({url: 'openapi.json', dom_id: '#ui', deepLinking: true});\n"


@bp.get("/api/openapi.json")
@requires("public")
def document():
    s = sidecar.current()
    context = openapi.DocumentContext(
        s.workflows, s.config.default_workflow, s.config.job_timeout_minutes
    )
    return jsonify(openapi.document(current_app, context, sidecar.VERSION))


@bp.get("/api/docs")
@requires("public")
def page():
    return Response(PAGE, mimetype="text/html")


@bp.get("/api/docs/init.js")
@requires("public")
def init():
    return Response(INIT, mimetype="text/javascript")


@bp.get("/api/docs/<any('swagger-ui.css', 'swagger-ui-bundle.js'):asset>")
@requires("public")
def asset(asset: str):
    return send_from_directory(swagger_ui_path, asset, max_age=86400)
