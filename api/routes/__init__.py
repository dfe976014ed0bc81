"""HTTP routes: thin blueprints over the domain modules."""

from flask import Flask

from api.routes import generate, health, images, status


def init_app(app: Flask) -> None:
    for module in (generate, status, images, health):
        app.register_blueprint(module.bp)
