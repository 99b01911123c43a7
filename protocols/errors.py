"""Domain errors. The HTTP layer maps each to a status code; the domain knows nothing of HTTP."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base class: ``message`` is safe to show to API clients."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ProtocolNotFound(DomainError):
    """No protocol with this id was ever created."""


class VersionNotFound(DomainError):
    """The protocol exists but has no such version."""


class NotInEffect(DomainError):
    """The protocol exists but no active/retired version is in effect at the instant asked."""


class ProtocolRetired(DomainError):
    """The version in effect is a retirement; ``details['document']`` carries it."""


class ProtocolExists(DomainError):
    """An id is never reused: creating an existing id is a conflict."""


class PreconditionRequired(DomainError):
    """A write needs ``If-Match`` naming the newest version."""


class PreconditionFailed(DomainError):
    """``If-Match`` does not name the newest version; details carry the newest version and ETag, and
    ``header`` the precondition that failed (``If-Match`` unless said: ``If-None-Match``)."""


class RetirementUndone(DomainError):
    """A retirement a later-scheduled active version would undo (or that a version already taking
    effect after it would hide); details name that version and when it takes effect."""


class NothingPublished(DomainError):
    """A retirement of a protocol that has only drafts: nothing was ever in effect to retire, and the
    retirement would publish a draft's content (a 410 body) that never applied."""


class UnknownFeedPosition(DomainError):
    """A changes-feed position this database never issued: beyond its newest change, or from another
    feed (another database, or this one before a restore). Reading on from it would skip or repeat
    versions; the client starts again from the beginning."""


class MalformedOrder(DomainError):
    """A CDS Hooks request whose draft orders or prefetched data cannot be read as FHIR R4;
    ``details['errors']`` names the offending path."""


class KeyNameTaken(DomainError, ValueError):
    """A live API key already has this name (names are the authors recorded in version history)."""


class LastAdminKey(DomainError):
    """Revoking this key over the API would leave no live key with the ``admin`` scope: nobody could
    mint or revoke keys, or read the audit log, without shell access to the server."""


class InvalidRecord(DomainError):
    """Content that passed the wire schema but breaks a domain rule; ``details['errors']`` by path."""


class StorageUnavailable(DomainError):
    """The database is unreachable or busy; the caller should retry later."""


class ClockBehind(DomainError):
    """The newest version was recorded later than this server's clock reads now (another instance's clock
    ahead, a clock stepped back); ``details['retry_after']``: seconds until it is not."""
