"""Request parsing for flask-smorest: strict JSON bodies, unknown parameters rejected.

* a body that is not JSON by content type → 415; malformed, NaN, duplicate keys, bad UTF-8 → 400;
* unknown fields and unknown query parameters → 422 (schemas keep marshmallow's ``RAISE``).
"""

from __future__ import annotations

from typing import Any

from flask import Request
from flask_smorest import Blueprint as SmorestBlueprint
from marshmallow import Schema
from webargs.flaskparser import FlaskParser

from api.errors import ApiError
from protocols.strict_json import InvalidJSON, strict_loads

JSON_MIMETYPES = ("application/json",)


def is_json_mimetype(mimetype: str) -> bool:
    return mimetype in JSON_MIMETYPES or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def load_json_body(req: Request) -> Any:
    data = req.get_data(cache=True)
    if not is_json_mimetype(req.mimetype):
        raise ApiError(415, "Content-Type must be application/json",
                       errors={"Content-Type": [f"got '{req.mimetype or 'none'}'"]})
    if not data:
        raise ApiError(400, "The request body must be a JSON object")
    try:
        return strict_loads(data)
    except InvalidJSON as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}") from exc


class StrictParser(FlaskParser):
    # Empty mapping: never override the schema's own ``unknown`` (RAISE), for any location.
    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {}

    def _raw_load_json(self, req: Request) -> Any:
        return load_json_body(req)

    def load_json(self, req: Request, schema: Schema) -> Any:
        return self._raw_load_json(req)


class Blueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = StrictParser()
