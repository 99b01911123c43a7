"""API keys written out of logs and audit rows.

A module of its own, importing only ``re``: gunicorn's configuration redacts its error log with it in the
master process, and importing :mod:`protocols.keys` there loaded SQLAlchemy and the models (~350 ms of
start-up) for one regular expression (found in a review).
"""

from __future__ import annotations

import re

#: An API key as the service mints them (``tpk_``), any letter of its prefix percent-encoded too
#: (``%74pk_``, a review): what logs and audit rows never hold (:func:`redact`).
KEY_PATTERN = re.compile(r"(?:t|%74)(?:p|%70)(?:k|%6[Bb])(?:_|%5[Ff])[A-Za-z0-9_%-]+")
REDACTED = "tpk_[redacted]"


def redact(text: str) -> str:
    """``text`` with every API key in it written as ``tpk_[redacted]``: a key sent where an id goes (a
    templated URL filled with the wrong variable) reached both access logs and, for a refused write, the
    audit trail, whose rows cannot be deleted (found by a security probe)."""
    return KEY_PATTERN.sub(REDACTED, text) if "tpk" in text or "%" in text else text
