"""GET /metrics (Prometheus text format), and counting every request answered.

It needs the `metrics` scope (or `admin`) when API_KEYS is set: Prometheus scrapes with a key
of its own, and a client's key does not read the server's numbers.
"""

from flask import Blueprint, Flask, Response, request

from api import outputs, sidecar
from api.auth import requires
from api.metrics import CONTENT_TYPE
from api.openapi import operation
from api.schemas import STRING

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@requires("metrics")
@operation(
    "Prometheus metrics of every gunicorn worker (needs the metrics or admin scope)",
    {200: ("Prometheus text exposition format 0.0.4", STRING, "text/plain")},
)
def metrics():
    return Response(sidecar.current().metrics.render(), content_type=CONTENT_TYPE)


def init_app(app: Flask) -> None:
    @app.after_request
    def _count(response):
        # nginx's checks before it sends an image (api/outputs.py) are its questions, not a
        # client's requests (nginx logs the client's): counted, each first image a key reads
        # would add a 403 (the check that the key may not have every image).
        if outputs.checking():
            return response
        # The route's rule, not the path: one series per endpoint, whatever the ids in it.
        rule = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        sidecar.current().metrics.request(request.method, rule, response.status_code)
        return response
