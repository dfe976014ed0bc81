"""HTTP routes: thin blueprints over the domain modules."""

from flask import Flask

from api.routes import (
    docs,
    generate,
    health,
    images,
    listings,
    queue,
    status,
    system,
    workflows,
)


def init_app(app: Flask) -> None:
    for module in (generate, status, images, health, queue, listings, workflows, system, docs):
        app.register_blueprint(module.bp)
