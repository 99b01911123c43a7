"""``flask protocols ...`` commands: migrate, load the curated catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup
from marshmallow import ValidationError

from api.errors import flatten_errors
from api.extensions import get_db
from protocols import catalog, migrate
from protocols.versioning import WriteContext
from schemas.protocol import ProtocolCreateSchema, split_payload

protocols_cli = AppGroup("protocols", help="Manage the protocol registry.")


@protocols_cli.command("migrate")
def migrate_command() -> None:
    """Apply database migrations (Alembic) up to the newest revision."""
    from flask import current_app

    migrate.upgrade(current_app.config["PROTOCOLS_DATABASE_URL"])
    click.echo("database is at the newest migration")


def validate_entry(raw: dict[str, Any]) -> catalog.Entry:
    payload = ProtocolCreateSchema().load(raw)
    meta, content = split_payload(payload)
    return catalog.Entry(meta["status"], meta["effective_from"], meta["change_note"], content)


@protocols_cli.command("load")
@click.argument("directory", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
def load_command(directory: Path | None) -> None:
    """Load the curated catalog (idempotent: unchanged files append nothing)."""
    files = catalog.read_catalog(directory or catalog.CATALOG_DIR)
    validated = []
    failed = False
    for catalog_file in files:
        try:
            validated.append((catalog_file, [validate_entry(raw) for raw in catalog_file.entries]))
        except ValidationError as exc:
            failed = True
            for path, messages in flatten_errors(exc.messages).items():
                click.echo(f"{catalog_file.path.name}: {path}: {'; '.join(messages)}", err=True)
    if failed:
        raise click.ClickException("catalog has invalid files; nothing was loaded")
    ctx = WriteContext(actor="catalog-loader")
    for catalog_file, entries in validated:
        result = catalog.sync_protocol(get_db(), catalog_file.protocol_id, entries, ctx)
        state = f"appended versions {result.appended}" if result.appended else "unchanged"
        click.echo(f"{catalog_file.protocol_id}: {state}")


def init_app(app: Flask) -> None:
    app.cli.add_command(protocols_cli)
