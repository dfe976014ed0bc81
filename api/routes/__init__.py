"""HTTP routes: thin blueprints over the domain modules."""

from flask import Flask

from api.routes import generate, health, images, status, upload, workflows


def init_app(app: Flask) -> None:
    for module in (generate, status, images, health, workflows, upload):
        app.register_blueprint(module.bp)
