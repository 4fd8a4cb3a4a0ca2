"""A real `celery worker` process picks the job from Redis and writes to the test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from reviewapp import services
from reviewapp.celery import app as celery_app
from reviewapp.models import Document
from tests.conftest import RECEIPT

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    s = connection.settings_dict
    if connection.vendor != "postgresql":
        pytest.skip("the worker process needs a database it can share: set DATABASE_URL to PostgreSQL")
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def start_worker(queue: str, broker: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker,
        "CELERY_QUEUE": queue,
        "SECRET_KEY": "worker-test",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "reviewapp",
            "worker",
            "--pool=threads",
            "--concurrency=4",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_process_extracts_queued_documents(
    workspace: Any, receipt_type: Any, settings: Any
) -> None:
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not broker.startswith("redis://"):
        pytest.skip("needs CELERY_BROKER_URL=redis://… (make test sets it)")
    queue = f"test-{uuid.uuid4().hex[:8]}"  # a private queue: no stale message from another run interferes
    celery_app.conf.task_always_eager = False
    celery_app.conf.task_default_queue = queue
    proc = start_worker(queue, broker)
    try:
        docs = [
            services.document_create(
                workspace=workspace,
                document_type=receipt_type,
                user=None,
                data=(RECEIPT + f"\nref {i}").encode(),
                filename=f"r{i}.txt",
            ).document
            for i in range(3)
        ]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if all(Document.objects.get(pk=d.pk).is_terminal for d in docs):
                break
            time.sleep(0.3)
        for d in docs:
            d.refresh_from_db()
            assert d.status in ("needs_review", "auto_accepted"), (d.status, d.status_reason)
            run = d.runs.get()
            assert run.status == "succeeded"
            uuid.UUID(run.task_id)  # the claim token is the Celery task id: it came through the broker
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
        celery_app.conf.task_default_queue = settings.CELERY_TASK_DEFAULT_QUEUE
    assert "extraction.tasks.extract_document" in out
