"""HTTP routes: thin blueprints over the domain modules."""

from flask import Flask

from api.routes import (
    batches,
    deliveries,
    docs,
    generate,
    health,
    images,
    listings,
    metrics,
    progress,
    queue,
    status,
    system,
    ui,
    upload,
    workflows,
)


def init_app(app: Flask) -> None:
    modules = (generate, status, images, health, queue, listings, workflows, system, docs, upload)
    for module in (*modules, deliveries, batches, metrics):
        app.register_blueprint(module.bp)
    metrics.init_app(app)
    # The browser client and the progress WebSocket.
    for module in (ui, progress):
        app.register_blueprint(module.bp)
