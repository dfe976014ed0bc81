"""HTTP routes: thin blueprints over the domain modules."""

from flask import Flask

from api.routes import (
    generate,
    health,
    images,
    listings,
    progress,
    queue,
    status,
    system,
    ui,
    workflows,
)


def init_app(app: Flask) -> None:
    for module in (generate, status, images, health, queue, listings, workflows, system):
        app.register_blueprint(module.bp)
    # The browser client and the progress WebSocket.
    for module in (ui, progress):
        app.register_blueprint(module.bp)
