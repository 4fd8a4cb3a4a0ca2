"""Domain errors. Each carries a stable machine-readable code and the HTTP status it maps to at the edge."""

from __future__ import annotations

from typing import Any


class ReviewAppError(Exception):
    code = "error"
    status = 400

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or {}


class UploadRejected(ReviewAppError):
    code = "upload_rejected"
    status = 400


class NotFound(ReviewAppError):
    code = "not_found"
    status = 404


class InvalidTransition(ReviewAppError):
    code = "invalid_transition"
    status = 409


class StaleDecision(ReviewAppError):
    """Someone else decided this field first (optimistic concurrency)."""

    code = "stale"
    status = 409


class AlreadyDecided(ReviewAppError):
    code = "already_decided"
    status = 409


class InvalidCorrection(ReviewAppError):
    code = "invalid_value"
    status = 400


class ServiceUnavailable(ReviewAppError):
    """A backing service (database, broker) is down: the request can be retried later."""

    code = "service_unavailable"
    status = 503
