"""Celery tasks: the Django edge of the pipeline. They take ids, call a service, and are safe to repeat.

`acks_late` + `reject_on_worker_lost` (settings) put a job back on the queue if its worker dies; the
service's conditional claim makes the redelivery take over instead of running a second extraction.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init
from django.conf import settings
from django.db import InterfaceError, OperationalError

from extraction.greenlets import gevent_patched

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, name="extraction.tasks.extract_document")
def extract_document(self, document_id: int) -> str:
    token = self.request.id or f"inline-{document_id}"
    try:
        with _slot():
            return _extract(document_id, token)
    except (OperationalError, InterfaceError) as exc:
        # The database is unreachable: nothing about the document could be read or written. Retry the same
        # task (same id: a redelivery may take its own claim back) once the outage is likely over, instead
        # of failing a job whose message is then acked and gone until the watchdog finds the document.
        countdown = min(2**self.request.retries, 60)
        log.warning("document %s: database unavailable, retry in %ss: %s", document_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown, max_retries=30) from exc


# A message of several documents may wait for slots (_slot) before its last document starts, so its own hard
# limit covers each document's in turn; each document still has the soft limit to itself (_extract_green).
@shared_task(
    bind=True,
    acks_late=True,
    name="extraction.tasks.extract_documents",
    time_limit=settings.CELERY_TASK_TIME_LIMIT * settings.REVIEWAPP_EXTRACT_BATCH,
)
def extract_documents(self, document_ids: list[int]) -> dict[str, int]:
    """Extract several documents sent in one message (services.enqueue_extractions).

    Each document is claimed, run and stored as extract_document would, under its own claim token (the task
    id and the document id: a redelivery of the message takes its claims back). In a gevent worker they run
    side by side; elsewhere one after another, so a threads or prefork worker keeps one document per slot.
    One document's crash fails that document only. If the database was unreachable for some, the message is
    retried with those alone.
    """
    task_id = self.request.id or "inline"
    jobs = [(pk, f"{task_id}:{pk}") for pk in document_ids]
    if gevent_patched() and not self.request.is_eager:
        import gevent

        children = [gevent.spawn(_extract_in_batch, pk, token) for pk, token in jobs]
        try:
            gevent.joinall(children)
        finally:
            gevent.killall(children)  # the message's hard limit cut the wait: its documents end too
        outcomes = [c.value if c.successful() else "crashed" for c in children]
    else:
        outcomes = [_extract_in_batch(pk, token, green=False) for pk, token in jobs]
    retry = [pk for pk, outcome in zip(document_ids, outcomes, strict=True) if outcome == _DB_DOWN]
    if retry:
        countdown = min(2**self.request.retries, 60)
        log.warning("documents %s: database unavailable, retry in %ss", retry, countdown)
        raise self.retry(args=(retry,), countdown=countdown, max_retries=30)
    return dict(Counter(outcomes))


_DB_DOWN = "database unavailable"


def _extract_in_batch(document_id: int, token: str, *, green: bool = True) -> str:
    """One document of an extract_documents message. Return its outcome; never raise (but for a kill)."""
    try:
        with _slot():
            if green:
                return _extract_green(document_id, token)
            return _extract(document_id, token)
    except (OperationalError, InterfaceError) as exc:
        log.warning("document %s: database unavailable: %s", document_id, exc)
        return _DB_DOWN
    except Exception:
        return "crashed"  # logged and failed visibly by _extract
    finally:
        if green:
            # Hand this greenlet's connection back to the pool, as the task_postrun handler does for a task.
            from django.db import close_old_connections

            close_old_connections()


def _extract_green(document_id: int, token: str) -> str:
    """_extract with the soft time limit Celery's gevent pool does not give, per document of a message.

    A gevent.Timeout is a BaseException: it goes through litellm's and the pipeline's `except Exception`
    (which would read a SoftTimeLimitExceeded raised mid-call as a model error, and retry), and
    extraction_execute keeps the run's trace on the way out.
    """
    import gevent

    timeout = gevent.Timeout(settings.CELERY_TASK_SOFT_TIME_LIMIT)
    timeout.start()
    try:
        return _extract(document_id, token)
    except gevent.Timeout as exc:
        if exc is not timeout:
            raise
        _fail_timeout(document_id, token)
        return "failed"
    finally:
        timeout.close()


def _extract(document_id: int, token: str) -> str:
    """Run and store one document's extraction; a timeout or a crash fails it visibly (not a DB outage)."""
    from reviewapp import services

    started = time.monotonic()
    try:
        outcome = services.extraction_execute(document_id=document_id, token=token)
    except (OperationalError, InterfaceError):
        raise  # the caller retries: nothing could be stored
    except SoftTimeLimitExceeded:
        _fail_timeout(document_id, token)
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


def _fail_timeout(document_id: int, token: str) -> None:
    from reviewapp import services

    log.warning("document %s: extraction took longer than the time limit", document_id)
    services.extraction_fail(
        document_id=document_id,
        token=token,
        code="timeout",
        message="extraction took longer than the time limit",
    )


_slots: Any = None
_worker: Any = None  # the WorkController of this process, once it started


def _slot() -> Any:
    """In a gevent worker, a slot of the process's documents in flight: --concurrency of them at once, whether
    they came one per message or several (extract_documents spawns a greenlet per document). Elsewhere a
    Celery slot is a document already: nothing to take."""
    global _slots
    if _slots is None:
        concurrency = getattr(_worker, "concurrency", None)
        if not gevent_patched() or not isinstance(concurrency, int) or concurrency < 1:
            return contextlib.nullcontext()
        from gevent.lock import BoundedSemaphore

        _slots = BoundedSemaphore(concurrency)
    return _slots


@worker_init.connect
def _remember_worker(sender: Any = None, **kwargs: Any) -> None:
    global _worker
    _worker = sender  # its concurrency is final only after worker_init ("auto"): read it at the first task


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
