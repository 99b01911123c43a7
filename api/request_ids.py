"""Request ids: the caller's ``X-Request-ID`` when it is sane, otherwise a fresh one.

Fresh ids are 16 random hex digits per process, then a 16-digit counter (32 hex digits, the shape
``uuid4().hex`` had). ``os.urandom`` on every request was ~4 % of a GET's time under py-spy; ids only
need to be unique, not secret. A forked worker draws its own prefix.
"""

from __future__ import annotations

import itertools
import os

from protocols.record import REQUEST_ID_PATTERN


class _RequestIds:
    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


new_request_id = _RequestIds()


def request_id(incoming: str | None) -> str:
    """The id this request is known by in logs, audit rows and the ``X-Request-ID`` response header."""
    return incoming if incoming and REQUEST_ID_PATTERN.fullmatch(incoming) else new_request_id()
