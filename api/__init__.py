"""The Flask application factory (``flask --app api ...`` finds ``create_app``)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import swagger_ui_bundle
from flask import Flask, Response, g, request, send_from_directory
from flask_smorest import Api

from api import cli, errors
from api.config import from_env
from api.extensions import API_KEY, DB_KEY
from protocols.db import make_database

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(from_env(config))
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False

    app.extensions[DB_KEY] = make_database(app.config["PROTOCOLS_DATABASE_URL"])

    api = Api(app)
    app.extensions[API_KEY] = api
    from api.protocols_api import blp as protocols_blp

    api.register_blueprint(protocols_blp)
    errors.init_app(app)
    cli.init_app(app)
    _init_request_hooks(app)
    _init_docs_assets(app)
    return app


def _init_request_hooks(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def _init_docs_assets(app: Flask) -> None:
    """Serve Swagger UI's files from the installed package: /docs works offline."""

    @app.route("/docs-static/<path:filename>")
    def docs_static(filename: str) -> Response:
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, max_age=86400)
