"""The indexer's exception tree; the API turns each into its HTTP answer."""

from __future__ import annotations


class IndexerError(Exception):
    status = 500


class InvalidRecord(IndexerError):
    """A field breaks a rule (422); `field` names it, the message the rule (never values)."""

    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(IndexerError):
    status = 404


class Conflict(IndexerError):
    status = 409


class Forbidden(IndexerError):
    status = 403


class Unauthenticated(IndexerError):
    status = 401


class PlatformUnavailable(IndexerError):
    """The regional platform did not answer; the request is queued and retried."""

    status = 503
