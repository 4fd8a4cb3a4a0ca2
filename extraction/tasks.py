"""Celery tasks: the Django edge of the pipeline. They take ids, call a service, and are safe to repeat.

`acks_late` + `reject_on_worker_lost` (settings) put a job back on the queue if its worker dies; the
service's conditional claim makes the redelivery take over instead of running a second extraction.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, name="extraction.tasks.extract_document")
def extract_document(self, document_id: int) -> str:
    from reviewapp import services

    token = self.request.id or f"inline-{document_id}"
    started = time.monotonic()
    try:
        outcome = services.extraction_execute(document_id=document_id, token=token)
    except (OperationalError, InterfaceError) as exc:
        # The database is unreachable: nothing about the document could be read or written. Retry the same
        # task (same id: a redelivery may take its own claim back) once the outage is likely over, instead
        # of failing a job whose message is then acked and gone until the watchdog finds the document.
        countdown = min(2**self.request.retries, 60)
        log.warning("document %s: database unavailable, retry in %ss: %s", document_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown, max_retries=30) from exc
    except SoftTimeLimitExceeded:
        services.extraction_fail(
            document_id=document_id,
            token=token,
            code="timeout",
            message="extraction took longer than the time limit",
        )
        return "failed"
    except Exception as exc:
        # A bug or an outage we did not foresee: the document must not stay 'extracting' forever.
        log.exception("extraction of document %s crashed", document_id)
        services.extraction_fail(
            document_id=document_id,
            token=token,
            code="internal_error",
            message=f"{type(exc).__name__}: {exc}",
        )
        raise
    log.info("document %s: %s (task %s, %.2f s)", document_id, outcome, token, time.monotonic() - started)
    return outcome


@shared_task(name="extraction.tasks.requeue_stuck_documents")
def requeue_stuck_documents() -> dict[str, int]:
    from reviewapp import services

    result = services.requeue_stuck(older_than=timedelta(seconds=settings.REVIEWAPP_STUCK_AFTER_SECONDS))
    if any(result.values()):  # Celery's per-task lines are off (settings.LOGGING): say what the watchdog did
        log.info("watchdog: stuck documents %s", result)
    return result


@shared_task(name="extraction.tasks.purge_idempotency_records")
def purge_idempotency_records() -> int:
    """Delete the API's Idempotency-Key records past REVIEWAPP_IDEMPOTENCY_TTL_SECONDS (Celery beat)."""
    from reviewapp.api import idempotency

    deleted = idempotency.purge_expired()
    log.info("purged %s expired idempotency records", deleted)
    return deleted


@shared_task(name="extraction.tasks.purge_llm_calls")
def purge_llm_calls() -> int:
    """Apply REVIEWAPP_LLM_CALL_RETENTION_DAYS (Celery beat, daily); 0 keeps every call."""
    from reviewapp import services

    days = settings.REVIEWAPP_LLM_CALL_RETENTION_DAYS
    if days <= 0:
        return 0
    deleted = services.llm_calls_purge(older_than=timedelta(days=days))
    log.info("purged %s LLM calls older than %s days", deleted, days)
    return deleted
