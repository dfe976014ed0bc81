"""HTTP routes: thin blueprints over the domain modules."""

from flask import Flask

from api.routes import (
    docs,
    generate,
    health,
    images,
    listings,
    nodes,
    progress,
    queue,
    status,
    system,
    ui,
    upload,
    workflows,
)


def init_app(app: Flask) -> None:
    modules = (
        generate,
        status,
        images,
        health,
        queue,
        listings,
        workflows,
        system,
        nodes,
        docs,
        upload,
    )
    for module in modules:
        app.register_blueprint(module.bp)
    # The browser client and the progress WebSocket.
    for module in (ui, progress):
        app.register_blueprint(module.bp)
