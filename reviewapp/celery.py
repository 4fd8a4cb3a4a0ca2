"""The Celery application.

Broker and behaviour come from Django settings (namespace CELERY_). Tasks live in `extraction.tasks`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, bootsteps
from celery.signals import task_postrun, task_prerun, worker_init

from extraction import heap
from extraction.greenlets import asyncio_is_greenlet_safe

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reviewapp.settings")

log = logging.getLogger(__name__)

app = Celery("reviewapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["extraction", "reviewapp"])


class RestoreUnackedMessages(bootsteps.StartStopStep):
    """Re-queue the messages a dead worker held, in workers on a green pool (gevent), as the others do.

    With acks_late, a task's message stays in Redis's `unacked` set until its worker acks it; if the worker
    dies, kombu puts it back on the queue once it is older than the visibility timeout. kombu does that sweep
    on an event-loop timer, which only the threads and prefork pools run. A gevent worker runs Celery's
    blocking loop instead, where kombu sweeps only after a poll that found nothing at all: but Redis answers
    the pending BRPOP every second, so that never happens and a killed worker's jobs were never redelivered
    (tests/app/test_worker.py). This step runs the same sweep on the worker's timer, at kombu's own interval.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.tref: Any = None
        super().__init__(parent, **kwargs)

    def start(self, c: Any) -> None:
        if not getattr(c.pool, "is_green", False) or c.hub is not None:
            return  # the event loop's own timer sweeps
        restore = getattr(getattr(c.connection.transport, "cycle", None), "maybe_restore_messages", None)
        if restore is None:
            return  # not the Redis transport
        interval = c.app.conf.broker_transport_options.get("unacked_restore_interval", 10)
        self.tref = c.timer.call_repeatedly(interval, restore)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


app.steps["consumer"].add(RestoreUnackedMessages)


@worker_init.connect
def _check_asyncio(**kwargs: Any) -> None:
    """A gevent worker whose asyncio keeps one running loop per OS thread would have its queries refused while
    any greenlet waits on a model: refuse to start (extraction/greenlets.py says why and how the installed
    package prevents it)."""
    if not asyncio_is_greenlet_safe():
        raise RuntimeError(
            "gevent patched this worker after asyncio was imported, or without the plugin in "
            "extraction/greenlets.py (is the package installed? `pip install -e .`): litellm's calls would "
            "share one event loop between greenlets"
        )


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(task: Any = None, **kwargs: Any) -> None:
    """Around each task, what Django does around each request: drop connections that are too old or broken.

    (Celery's fixup would close them all; CELERY_DB_REUSE_MAX in settings turns that off.) In a gevent worker
    CONN_MAX_AGE is 0, so this hands the task's connection back to the pool when the task ends. Eager tasks
    run inside their caller's transaction and connection, which must be left alone.
    """
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


@worker_init.connect
def _settle_heap(**kwargs: Any) -> None:
    """Once the worker has imported what a task runs, hide that heap from the cyclic garbage collector
    (extraction/heap.py). In a prefork worker this runs in the parent, before the children fork."""
    from django.conf import settings

    if settings.WORKER_GC_THRESHOLD < 0:
        return
    import litellm  # noqa: F401  (imported lazily otherwise: by the first task)

    from extraction import pipeline  # noqa: F401
    from reviewapp import runstore, services  # noqa: F401

    frozen = heap.settle(settings.WORKER_GC_THRESHOLD)
    log.info(
        "garbage collector: %d start-up objects frozen, young threshold %d",
        frozen,
        settings.WORKER_GC_THRESHOLD,
    )
