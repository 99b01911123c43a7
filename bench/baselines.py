"""Baseline WSGI app, served by the same gunicorn settings as the service, to measure it against.

Each endpoint answers the same question as ``GET /v1/protocols/{id}`` with less machinery, so the
ratios in docs/performance.md say how close the service is to the limits of its stack:

* ``/a/<id>``  bare Flask returning a fixed protocol-sized JSON body: the framework's ceiling;
* ``/b/<id>``  bare Flask + the raw driver (sqlite3 / psycopg), one row by key, stored JSON returned
  as is: the ceiling of a database-backed read;
* ``/c/<id>``  the textbook stack: flask-smorest + SQLAlchemy ORM session + marshmallow schema that
  loads the row and serializes the record on every request: what a typical team would ship;
* ``POST /d``  one INSERT + COMMIT with the raw driver: the ceiling of a durable single-row write.

Configured by ``BENCH_DATABASE_URL`` (the benchmark's throwaway database, already migrated and
seeded, with a ``bench_writes`` table the harness creates).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Any

from flask import Flask, Response, request
from flask_smorest import Api, Blueprint
from marshmallow import Schema, fields
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import scoped_session, sessionmaker
from werkzeug.exceptions import NotFound

from protocols.db import normalize_url
from protocols.models import ProtocolVersion

DATABASE_URL = normalize_url(os.environ["BENCH_DATABASE_URL"])
IS_SQLITE = DATABASE_URL.startswith("sqlite")
LATEST_SQL = "SELECT document, etag FROM protocol_versions WHERE protocol_id = {p} ORDER BY version DESC LIMIT 1"
INSERT_SQL = "INSERT INTO bench_writes (body) VALUES ({p})"

_local = threading.local()


def raw_connection() -> Any:
    """One raw driver connection per worker thread, opened on first use (as a pool would)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        if IS_SQLITE:
            conn = sqlite3.connect(make_url(DATABASE_URL).database or "", isolation_level=None,
                                   check_same_thread=False, timeout=5)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        else:
            import psycopg

            conn = psycopg.connect(DATABASE_URL.replace("postgresql+psycopg", "postgresql"), autocommit=True)
        _local.conn = conn
    return conn


def _sql(template: str) -> str:
    return template.format(p="?" if IS_SQLITE else "%s")


LATEST = _sql(LATEST_SQL)
INSERT = _sql(INSERT_SQL)

app = Flask(__name__)
app.config.update(API_TITLE="baseline", API_VERSION="1", OPENAPI_VERSION="3.0.3")


def _fixed_body() -> bytes:
    """A real stored document (protocol-sized), read once at start-up."""
    conn = raw_connection()
    row = conn.execute("SELECT document FROM protocol_versions ORDER BY seq LIMIT 1").fetchone()
    return str(row[0]).encode() if row else b'{"id":"none"}'


FIXED_BODY = _fixed_body()


@app.get("/a/<protocol_id>")
def fixed(protocol_id: str) -> Response:
    return Response(FIXED_BODY, mimetype="application/json")


@app.get("/b/<protocol_id>")
def raw_read(protocol_id: str) -> Response:
    row = raw_connection().execute(LATEST, (protocol_id,)).fetchone()
    if row is None:
        return Response(b'{"status":404}', status=404, mimetype="application/json")
    return Response(row[0], mimetype="application/json", headers={"ETag": row[1]})


@app.post("/d")
def raw_write() -> Response:
    conn = raw_connection()
    body = request.get_data(as_text=True)
    if IS_SQLITE:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT, (body,))
        conn.execute("COMMIT")
    else:
        with conn.transaction():
            conn.execute(INSERT, (body,))
    return Response(b'{"created":true}', status=201, mimetype="application/json")


# ----------------------------------------------------------------- (c) the textbook stack

engine = create_engine(DATABASE_URL, **({} if IS_SQLITE else {"pool_size": 5}))
Session = scoped_session(sessionmaker(bind=engine))


class CodingOut(Schema):
    system = fields.String()
    code = fields.String()
    display = fields.String()


class DrugOut(Schema):
    name = fields.String()
    rxnorm_cui = fields.String(allow_none=True)
    brand_names = fields.List(fields.String())
    dea_schedule = fields.String(allow_none=True)


class FrequencyOut(Schema):
    count = fields.Integer()
    period = fields.String()
    text = fields.String(allow_none=True)


class QuantityOut(Schema):
    value = fields.Float()
    unit = fields.String()
    period = fields.String()


class DoseRangeOut(Schema):
    route = fields.String()
    phase = fields.String()
    dose_min = fields.Float()
    dose_max = fields.Float()
    unit = fields.String()
    frequency = fields.Nested(FrequencyOut, allow_none=True)
    duration = fields.String(allow_none=True)
    max_per_period = fields.Nested(QuantityOut, allow_none=True)
    instructions = fields.String(allow_none=True)


class FdaApprovalOut(Schema):
    status = fields.String()
    application_number = fields.String(allow_none=True)
    approval_date = fields.String(allow_none=True)
    approved_indication = fields.String(allow_none=True)
    rems_required = fields.Boolean()
    boxed_warning = fields.String(allow_none=True)


class SourceOut(Schema):
    title = fields.String()
    url = fields.String()
    supports = fields.List(fields.String())


class ProtocolOut(Schema):
    id = fields.String()
    version = fields.Integer()
    status = fields.String()
    effective_from = fields.DateTime()
    recorded_at = fields.DateTime()
    recorded_by = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)
    change_note = fields.String(allow_none=True)
    title = fields.String()
    summary = fields.String()
    drug = fields.Nested(DrugOut)
    indications = fields.List(fields.Nested(CodingOut))
    routes = fields.List(fields.Nested(CodingOut))
    dosing_ranges = fields.List(fields.Nested(DoseRangeOut))
    fda_approval = fields.Nested(FdaApprovalOut)
    sources = fields.List(fields.Nested(SourceOut))
    verification_notes = fields.List(fields.String())


blp = Blueprint("textbook", __name__, url_prefix="/c")


@blp.route("/<protocol_id>")
@blp.response(200, ProtocolOut)
def textbook(protocol_id: str) -> dict[str, Any]:
    """ORM entity -> dict -> marshmallow dump -> jsonify, as the tutorials show."""
    try:
        version = Session.scalars(
            select(ProtocolVersion).where(ProtocolVersion.protocol_id == protocol_id)
            .order_by(ProtocolVersion.version.desc()).limit(1)
        ).first()
        if version is None:
            raise NotFound()
        record: dict[str, Any] = json.loads(version.document)  # a JSON column, in effect
        record.update(effective_from=version.effective_from, recorded_at=version.recorded_at)
        return record
    finally:
        Session.remove()


Api(app).register_blueprint(blp)
