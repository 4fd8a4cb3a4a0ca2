"""The Celery application.

Broker and behaviour come from Django settings (namespace CELERY_). Tasks live in `extraction.tasks`.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reviewapp.settings")

app = Celery("reviewapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["extraction", "reviewapp"])
