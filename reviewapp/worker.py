"""The embedded mode's worker: a real Celery worker consuming the in-memory broker inside this process.

With `memory://` no other process can see the queue, so whoever serves (the `demo` command, `extract
--wait`) starts this thread. Production runs `celery -A reviewapp worker` against Redis instead.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
_started = False


def start_inprocess_worker(concurrency: int = 2) -> bool:
    """Start the in-process worker once, if the settings ask for one. Return whether one is running."""
    global _started
    if not settings.REVIEWAPP_INPROCESS_WORKER:
        return False
    with _lock:
        if _started:
            return True
        from celery.contrib.testing.worker import TestWorkController
        from celery.worker import state

        from .celery import app

        # TestWorkController is celery's WorkController that signals readiness; no signal handlers are
        # installed, which is what a worker in a non-main thread needs.
        worker = TestWorkController(
            app=app,
            concurrency=concurrency,
            pool="threads",
            loglevel="INFO",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            queues=[settings.CELERY_TASK_DEFAULT_QUEUE],
        )
        threading.Thread(target=worker.start, name="celery-inprocess", daemon=True).start()
        worker.ensure_started()
        state.should_terminate = None
        _started = True
        log.info("in-process celery worker started (broker %s)", settings.CELERY_BROKER_URL)
        return True
