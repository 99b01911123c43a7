"""``flask keys create|list|revoke``: API-key administration from the shell.

This is how the first admin key is made (the HTTP admin API itself needs one). Key creation and
revocation are written to the audit log with actor ``cli:<os user>``, in the same transaction as the
change (a second revocation changes nothing and records nothing).
"""

from __future__ import annotations

import json
from datetime import datetime

import click
from flask import Flask

from api.cli import DatabaseCommands, cli_actor
from api.extensions import get_db
from protocols import audit, keys
from protocols.durations import parse_duration
from protocols.timeutil import format_rfc3339, parse_rfc3339, utcnow

keys_cli = DatabaseCommands("keys", help="Create, list and revoke API keys.")


def _checked_name(_ctx: click.Context, _param: click.Parameter, name: str) -> str:
    """``--name`` callback: the domain's rule for key names (protocols.keys.key_name_problem)."""
    problem = keys.key_name_problem(name)
    if problem is not None:
        raise click.BadParameter(problem, param_hint="--name")
    return name


def _parse_expiry(text: str | None) -> datetime | None:
    """An RFC 3339 instant, or an ISO 8601 duration from now (``P90D``, ``PT12H``)."""
    if text is None:
        return None
    try:
        expires = utcnow() + parse_duration(text) if text.upper().startswith("P") else parse_rfc3339(text)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (give an RFC 3339 time or a duration such as P90D)",
                                 param_hint="--expires") from exc
    if expires <= utcnow():
        raise click.BadParameter("must be in the future", param_hint="--expires")
    return expires


def _when(value: datetime | None) -> str:
    return format_rfc3339(value) if value else "-"


@keys_cli.command("create")
@click.option("--name", required=True, callback=_checked_name,
              help="Who uses the key; recorded as the author of its writes.")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(keys.SCOPES),
              help="Repeat for several scopes.")
@click.option("--expires", default=None, help="RFC 3339 time or ISO duration from now (P90D).")
def create_command(name: str, scopes: tuple[str, ...], expires: str | None) -> None:
    """Mint a key and print it once (only its hash is stored)."""
    expires_at = _parse_expiry(expires)
    event = audit.Pending(audit.KEY_CREATE, detail=json.dumps(
        {"via": "cli", **keys.creation_facts(name, scopes, expires_at)}))
    try:
        info, plain = keys.create_key(get_db(), name, scopes, expires_at=expires_at,
                                      ctx=audit.WriteContext(actor=cli_actor(), audit=event))
    except keys.KeyNameTaken as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"created key {info.id} '{info.name}' scopes={','.join(info.scopes)} "
               f"expires={_when(info.expires_at)}")
    click.echo(f"API key (shown once, store it now): {plain}")


@keys_cli.command("list")
def list_command() -> None:
    """List keys (never their secrets)."""
    now = utcnow()
    for info in keys.list_keys(get_db()):
        click.echo(f"{info.id}  {keys.state(info, now):8}  {info.name}  scopes={','.join(info.scopes)}  "
                   f"created={_when(info.created_at)}  expires={_when(info.expires_at)}  "
                   f"revoked={_when(info.revoked_at)}")


@keys_cli.command("revoke")
@click.argument("key_id")
def revoke_command(key_id: str) -> None:
    """Revoke a key: every worker rejects it from the next request on."""
    try:
        key_id.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 name no key (they were a driver traceback)
        raise click.ClickException(f"no API key with id {key_id!r}") from None
    try:
        info = keys.revoke_key(get_db(), key_id, ctx=audit.WriteContext(
            actor=cli_actor(), audit=audit.Pending(audit.KEY_REVOKE, detail='{"via":"cli"}')))
    except keys.KeyNotFound as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"revoked key {info.id} '{info.name}' at {_when(info.revoked_at)}")


def init_app(app: Flask) -> None:
    app.cli.add_command(keys_cli)
