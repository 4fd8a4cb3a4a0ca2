"""A real `celery worker` process picks the job from Redis and writes to the test database."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.db import connection

from extraction.providers import answer as offline_answer
from reviewapp import services
from reviewapp.celery import app as celery_app
from reviewapp.models import Document, FieldValue
from tests.app.test_batch_extraction import create
from tests.conftest import RECEIPT, server_config
from tests.llmserver import responder

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    s = connection.settings_dict
    if connection.vendor != "postgresql":
        pytest.skip("the worker process needs a database it can share: set DATABASE_URL to PostgreSQL")
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def start_worker(queue: str, broker: str, concurrency: int = 4, **extra_env: str) -> subprocess.Popen[bytes]:
    env = {
        **extra_env,
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker,
        "CELERY_QUEUE": queue,
        "SECRET_KEY": "worker-test",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        **extra_env,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "reviewapp",
            "worker",
            "--pool=gevent",
            f"--concurrency={concurrency}",
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
    assert "extraction.tasks.extract_document" in out  # registered
    assert re.search(r"garbage collector: \d{5,} start-up objects frozen", out)  # reviewapp/celery.py
    # One log line per document, with what Celery's two per-task lines said (they are off: settings.LOGGING).
    for d in docs:
        assert f"document {d.pk}: {d.status} (task {d.runs.get().task_id}, " in out
    assert "] received" not in out and "succeeded in" not in out


def slow_model_queue(llm: Any, tmp_path: Path, *, delay: float) -> tuple[str, dict[str, str]]:
    """Make every step's model answer like the offline one after `delay` s, and send tasks to a private
    queue; return the queue and the environment for start_worker (a short visibility timeout, so that a
    killed worker's jobs come back quickly)."""
    llm.default = responder(lambda body: offline_answer(body["messages"]), delay=delay)
    config = tmp_path / "llm.yaml"
    cfg = server_config(llm.base_url, retries=0, fallbacks=[], classify="primary", verify="primary")
    config.write_text(yaml.safe_dump(cfg))
    queue = f"test-{uuid.uuid4().hex[:8]}"
    celery_app.conf.task_always_eager = False
    celery_app.conf.task_default_queue = queue
    return queue, {"REVIEWAPP_LLM_CONFIG": str(config), "CELERY_VISIBILITY_TIMEOUT": "6"}


def stop_workers(*procs: subprocess.Popen[bytes] | None) -> None:
    """Stop the workers a test started (the ones still alive) and give the app back its default queue."""
    from django.conf import settings

    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)
    celery_app.conf.task_default_queue = settings.CELERY_TASK_DEFAULT_QUEUE


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wait_terminal(ids: list[int], timeout: float) -> None:
    wait_until(
        lambda: all(d.is_terminal for d in Document.objects.filter(pk__in=ids)),
        timeout,
        "every document to finish",
    )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("batched", [False, True], ids=["a message per document", "3 documents a message"])
def test_a_worker_killed_mid_extraction_loses_and_duplicates_nothing(
    workspace: Any, receipt_type: Any, settings: Any, llm: Any, tmp_path: Path, batched: bool
) -> None:
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not broker.startswith("redis://"):
        pytest.skip("needs CELERY_BROKER_URL=redis://… (make test sets it)")
    # The model answers like the offline model but takes its time, so the kill lands mid-extraction.
    queue, env = slow_model_queue(llm, tmp_path, delay=1.0)
    settings.REVIEWAPP_EXTRACT_BATCH = 3
    first = start_worker(queue, broker, **env)
    second = None
    try:
        with services.extraction_batch() if batched else contextlib.nullcontext():
            ids = create(workspace, receipt_type, 6, prefix="k")
        wait_until(
            lambda: Document.objects.filter(pk__in=ids, status="extracting").count() >= 2,
            60,
            "extractions to start",
        )
        first.send_signal(signal.SIGKILL)  # no warm shutdown: the worker dies holding unacked jobs
        first.wait(timeout=10)
        killed = list(Document.objects.filter(pk__in=ids, status="extracting").values_list("pk", flat=True))
        assert killed, "the kill should have caught documents mid-extraction"
        second = start_worker(queue, broker, **env)
        wait_terminal(ids, 120)
    finally:
        stop_workers(first, second)
    for doc in Document.objects.filter(pk__in=ids):
        assert doc.status in ("needs_review", "auto_accepted"), (doc.pk, doc.status, doc.status_reason)
        runs = list(doc.runs.values_list("status", flat=True))
        assert runs.count("succeeded") == 1, (doc.pk, runs)  # exactly one completed run: no duplicate
        assert FieldValue.objects.filter(document=doc).count() == 4
        assert "running" not in runs  # a dead worker's run stored nothing, or was closed (abandoned)
        token = doc.runs.get(status="succeeded").task_id
        assert token.endswith(f":{doc.pk}") == batched, token  # it came the way it was sent


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_gevent_worker_runs_a_messages_documents_side_by_side_within_its_concurrency(
    workspace: Any, receipt_type: Any, settings: Any, llm: Any, tmp_path: Path
) -> None:
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not broker.startswith("redis://"):
        pytest.skip("needs CELERY_BROKER_URL=redis://… (make test sets it)")
    queue, env = slow_model_queue(llm, tmp_path, delay=0.0)
    lock = threading.Lock()
    inflight = {"now": 0, "max": 0}

    def counted(body: dict[str, Any]) -> Any:  # the scripted server answers each request in its own thread
        with lock:
            inflight["now"] += 1
            inflight["max"] = max(inflight["max"], inflight["now"])
        try:
            time.sleep(0.4)
            return offline_answer(body["messages"])
        finally:
            with lock:
                inflight["now"] -= 1

    llm.default = responder(counted)
    settings.REVIEWAPP_EXTRACT_BATCH = 8
    proc = start_worker(queue, broker, concurrency=3, **env)
    try:
        with services.extraction_batch():
            ids = create(workspace, receipt_type, 8, prefix="s")
        wait_terminal(ids, 120)
    finally:
        stop_workers(proc)
    # One message carried them all; its documents ran side by side, never more than the worker's concurrency.
    assert inflight["max"] == 3, inflight
    tokens = set()
    for doc in Document.objects.filter(pk__in=ids):
        assert doc.status in ("needs_review", "auto_accepted"), (doc.pk, doc.status, doc.status_reason)
        message, _, pk = doc.runs.get().task_id.rpartition(":")
        assert pk == str(doc.pk)
        tokens.add(message)
    assert len(tokens) == 1
    uuid.UUID(tokens.pop())  # the task id Celery gave the message


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_each_document_of_a_message_has_the_soft_time_limit_to_itself(
    workspace: Any, receipt_type: Any, settings: Any, llm: Any, tmp_path: Path
) -> None:
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not broker.startswith("redis://"):
        pytest.skip("needs CELERY_BROKER_URL=redis://… (make test sets it)")
    # Each call takes 1 s; a document needs three: past the 2 s limit, mid-call.
    queue, env = slow_model_queue(llm, tmp_path, delay=1.0)
    settings.REVIEWAPP_EXTRACT_BATCH = 2
    proc = start_worker(queue, broker, CELERY_TASK_SOFT_TIME_LIMIT="2", **env)
    try:
        with services.extraction_batch():
            ids = create(workspace, receipt_type, 2, prefix="t")
        wait_terminal(ids, 60)
    finally:
        stop_workers(proc)
    for doc in Document.objects.filter(pk__in=ids):
        assert doc.status == "failed", (doc.status, doc.status_reason)
        assert doc.status_reason == "timeout: extraction took longer than the time limit"
        run = doc.runs.get()
        assert run.status == "failed" and run.error_code == "timeout"
        assert run.calls.exists()  # the calls made before the limit are kept: the trace of a slow model


@pytest.mark.parametrize("asyncio_first", [False, True])
def test_a_gevent_worker_refuses_to_start_if_asyncio_would_share_one_loop(asyncio_first: bool) -> None:
    """The worker_init check in reviewapp/celery.py: gevent patched after asyncio was imported (or without the
    plugin) would let litellm's per-call event loops leak into every greenlet (tests/core/test_greenlets.py)."""
    code = (
        ("import asyncio\n" if asyncio_first else "")
        + "from gevent import monkey; monkey.patch_all()\n"
        + "from reviewapp.celery import _check_asyncio\n"
        + "_check_asyncio()\n"
        + "print('started')\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if asyncio_first:
        assert out.returncode != 0
        assert "share one event loop between greenlets" in out.stderr
    else:
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "started"
