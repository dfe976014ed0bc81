"""The browser client: one page and its assets, served from api/static/ at `/` and at `/ui/`.

The page is plain HTML, CSS and ES modules (no build step, nothing loaded from another site).
Every URL in it is relative (`static/app.js`, `api/...`), so it works at `/`, at `/ui/` and under
whatever path prefix a proxy maps onto either. The page and its files are public: with
API_KEYS set, the page asks for a key and sends it with its API calls itself.
"""

from pathlib import Path

from flask import Blueprint, redirect, send_from_directory

from api.auth import requires

STATIC = Path(__file__).resolve().parent.parent / "static"

bp = Blueprint("ui", __name__)

# The page loads only its own files and talks only to its own origin; prompts and file names
# from the API are inserted as text, and this policy is the second line of defence.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "style-src 'self'",
        "script-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self'",
    )
)


def _page():
    response = send_from_directory(STATIC, "index.html", max_age=0)
    # Always revalidate, so a deployed update reaches open browsers on their next load.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


@bp.get("/")
@requires("public")
def index():
    return _page()


@bp.get("/ui/")
@requires("public")
def ui_index():
    return _page()


@bp.get("/ui")
@requires("public")
def ui_redirect():
    # Relative, so it stays under whatever prefix a proxy added in front of /ui.
    return redirect("ui/", code=308)


@bp.get("/static/<path:filename>")
@bp.get("/ui/static/<path:filename>")
@requires("public")
def asset(filename: str):
    # send_from_directory refuses paths that leave the folder (404).
    return send_from_directory(STATIC, filename, max_age=0)
