"""The Celery application.

Broker and behaviour come from Django settings (namespace CELERY_). Tasks live in `extraction.tasks`.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reviewapp.settings")

app = Celery("reviewapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["extraction", "reviewapp"])


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(task: Any = None, **kwargs: Any) -> None:
    """Around each task, what Django does around each request: drop connections that are too old or broken.

    (Celery's fixup would close them all; CELERY_DB_REUSE_MAX in settings turns that off.) Eager tasks run
    inside their caller's transaction and connection, which must be left alone.
    """
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
