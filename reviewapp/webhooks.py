"""Webhooks: document events delivered to subscribed URLs (signed, retried). Being built (issue 6)."""

from __future__ import annotations

EVENTS = ("document.extracted", "document.needs_review", "document.reviewed", "document.failed")


def emit(document_id: int, event: str) -> None:
    """Queue deliveries of `event` for the document's workspace subscriptions, once the transaction commits."""
    return None
