"""Broker and database restarts on the real processes (issue 7, item 6).

Documents queued before an outage are processed after it; an upload during the outage is refused with a
503 that stores nothing (no row, no file); the worker survives. gunicorn and `celery worker` run as in
production against a private Redis and a private PostgreSQL cluster (see conftest.py), which the tests
kill and restart.

A defect this suite knows about is reported as an xfail with its evidence once every other check has
passed (see docs/faults.md); when the app is fixed the test simply passes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from extraction.providers import answer as offline_answer
from tests.conftest import RECEIPT, server_config
from tests.faults.conftest import TERMINAL, Stack, wait_until
from tests.llmserver import responder

pytestmark = pytest.mark.faults

STUCK_AFTER = 5  # the worker's REVIEWAPP_STUCK_AFTER_SECONDS: how long before the watchdog re-queues
WATCHDOG = "extraction.tasks.requeue_stuck_documents"
DONE = ("needs_review", "auto_accepted")
THROTTLE_500 = (
    "an upload during a broker outage is a 500, not a 503: the API throttle keeps its counters in the "
    "Django cache, which is the broker's Redis (REVIEWAPP_CACHE_URL defaults to it), and "
    "redis.exceptions.ConnectionError is not an outage for ServiceUnavailableMiddleware (docs/faults.md)"
)


def refused(stack: Stack, response: httpx.Response) -> str | None:
    """Check an upload made during an outage was refused as a 503; return the known defect if it was that."""
    if response.status_code == 503:
        assert response.json()["error"]["code"] == "service_unavailable", response.text
        stack.mark(f"  503 Retry-After: {response.headers.get('Retry-After')}")
        return None
    log = stack.web.log() if stack.web else ""
    if response.status_code == 500 and "check_throttles" in log and "redis.exceptions.ConnectionError" in log:
        return THROTTLE_500
    pytest.fail(
        f"upload during an outage: {response.status_code} {response.text[:500]}\n{stack.diagnostics()}"
    )


def assert_processed_once(stack: Stack, ids: list[int]) -> None:
    """Each document finished with exactly one succeeded run and its fields, and no run left running."""
    for pk, status in stack.statuses(ids).items():
        runs = stack.runs(pk)
        assert status in DONE, (pk, status, runs, stack.diagnostics())
        assert runs.count("succeeded") == 1 and "running" not in runs, (pk, runs)
        assert stack.field_count(pk) == 4, pk


def wait_older_than(stack: Stack, ids: list[int], seconds: float) -> None:
    """Wait until the watchdog would see these documents as stuck (last touched `seconds` ago)."""

    def old_enough() -> bool:
        age = stack.sql(
            "SELECT min(extract(epoch FROM now() - greatest(updated_at, coalesce(claimed_at, updated_at))))"
            " FROM reviewapp_document WHERE id = ANY(%s)",
            ids,
        )[0][0]
        return age is None or float(age) > seconds + 0.5

    wait_until(old_enough, seconds + 30, "documents to look stuck", stack.diagnostics)


def run_watchdog_until_done(stack: Stack, ids: list[int], timeout: float = 90) -> None:
    """Send the watchdog task the way celery beat does (again every 20 s, as beat would) until `ids` finish.

    One send is normally enough; resending sooner could re-queue a document whose re-run is merely slow.
    """
    deadline = time.monotonic() + timeout
    while True:
        stack.send_task(WATCHDOG)
        stack.mark("watchdog sent")
        try:
            stack.wait_terminal(ids, timeout=20)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def crash_and_refuse(stack: Stack) -> str | None:
    """Kill Redis; an upload now must be refused with a 503 and leave no row and no file behind."""
    stack.redis.kill()
    stack.mark("redis killed")
    rows, files = stack.document_count(), stack.media_count()
    started = time.monotonic()
    response = stack.upload(RECEIPT + f"\nduring the outage {rows}")
    stack.mark(f"upload during the outage: {response.status_code} in {time.monotonic() - started:.2f}s")
    defect = refused(stack, response)
    assert (stack.document_count(), stack.media_count()) == (rows, files)  # no phantom document, no file
    return defect


def test_broker_crashes_refuse_uploads_and_lose_no_queued_document(make_stack: Any) -> None:
    """Redis crashes (SIGKILL) with jobs queued and no worker running, first without persistence, then with
    the append-only file; then once more under a running worker."""
    stack = make_stack()
    stack.start_web()
    stack.wait_web()

    # 1. Without persistence (--save "" --appendonly no) the restart empties the queue: three jobs lost.
    lost = [stack.upload_ok(RECEIPT + f"\nref lost {i}") for i in range(3)]
    assert stack.redis.client().llen(stack.queue) == 3  # no worker yet: the jobs wait in Redis
    defects = {crash_and_refuse(stack)}
    stack.redis.start()
    stack.mark("redis restarted empty")
    assert stack.redis.client().llen(stack.queue) == 0  # the jobs are gone; their rows are still `queued`

    # 2. The same Redis as production should run it (appendonly yes, appendfsync always): three jobs kept.
    stack.redis.kill()
    stack.redis.persistent = True
    stack.redis.start()
    kept = [stack.upload_ok(RECEIPT + f"\nref kept {i}") for i in range(3)]
    defects.add(crash_and_refuse(stack))
    stack.redis.start()
    stack.mark("redis restarted from its append-only file")
    assert stack.redis.client().llen(stack.queue) == 3

    # 3. A worker runs the kept jobs; nothing but the watchdog will ever run the lost ones.
    worker = stack.start_worker(REVIEWAPP_STUCK_AFTER_SECONDS=str(STUCK_AFTER))
    stack.wait_worker(worker)
    stack.wait_terminal(kept)
    wait_until(lambda: stack.messages_pending() == 0, 30, "the queue to drain", stack.diagnostics)
    assert set(stack.statuses(lost).values()) == {"queued"}
    stack.mark("kept jobs processed; lost ones still queued")

    # 4. The watchdog (celery beat sends it every minute) re-queues them once they look stuck.
    wait_older_than(stack, lost, STUCK_AFTER)
    run_watchdog_until_done(stack, lost)
    stack.mark("watchdog re-queued the lost jobs; all processed")
    assert "'requeued': 3" in worker.log()

    # 5. A crash under a running worker: it reconnects and takes new jobs; gunicorn publishes again.
    stack.redis.kill()
    stack.redis.start()
    stack.mark("redis crashed and restarted under the worker")
    later = stack.upload_ok(RECEIPT + "\nafter the last restart")
    stack.wait_terminal([later], timeout=90)
    stack.mark("post-restart upload processed")
    assert worker.alive

    assert_processed_once(stack, [*lost, *kept, later])
    assert (stack.document_count(), stack.media_count()) == (7, 7)
    defects.discard(None)
    if defects:
        pytest.xfail(defects.pop())


def test_database_restart_refuses_uploads_and_processes_queued_documents_after(
    make_stack: Any, llm: Any, tmp_path: Path
) -> None:
    # A model that takes its time (the offline model's answers, 0.3 s each, three calls a document), so
    # the database goes down with extractions in flight and jobs still waiting in Redis.
    llm.default = responder(lambda body: offline_answer(body["messages"]), delay=0.3)
    config = tmp_path / "llm.yaml"
    cfg = server_config(llm.base_url, retries=0, fallbacks=[], classify="primary", verify="primary")
    config.write_text(yaml.safe_dump(cfg))
    stack = make_stack(persistent_redis=False)
    stack.start_web()
    worker = stack.start_worker(
        REVIEWAPP_LLM_CONFIG=str(config), REVIEWAPP_STUCK_AFTER_SECONDS=str(STUCK_AFTER)
    )
    stack.wait_web()
    stack.wait_worker(worker)
    warm = stack.upload_ok(RECEIPT + "\nwarm-up")
    stack.wait_terminal([warm])  # gunicorn and the worker now hold pooled connections (CONN_MAX_AGE 60)

    queued = [stack.upload_ok(RECEIPT + f"\nref d{i}") for i in range(6)]
    bulk = stack.bulk_import([RECEIPT + f"\nref bulk {i}" for i in range(4)])  # one 4-document message
    queued += bulk
    wait_until(
        lambda: "extracting" in stack.statuses(queued).values(),
        60,
        "an extraction to start",
        stack.diagnostics,
    )
    files = stack.media_count()
    in_progress = [pk for pk, s in stack.statuses(queued).items() if s not in TERMINAL]
    assert in_progress, "the database should go down while documents are queued or extracting"
    stack.pg.stop("fast")
    stack.mark(
        f"postgres stopped: {len(in_progress)} documents unfinished, {stack.messages_pending()} jobs pending"
    )
    try:
        for i in range(3):  # two gunicorn processes, each with a connection the restart cut
            started = time.monotonic()
            response = stack.upload(RECEIPT + f"\nduring the outage {i}")
            stack.mark(
                f"upload during the outage: {response.status_code} in {time.monotonic() - started:.2f}s"
            )
            assert refused(stack, response) is None
        assert stack.http.get("/api/v1/documents/").status_code == 503
        # Every job still waiting in Redis reaches the worker (and meets the outage) before the restart.
        wait_until(
            lambda: stack.redis.client().llen(stack.queue) == 0,
            60,
            "the worker to take the jobs",
            stack.diagnostics,
        )
        time.sleep(1)
        stack.mark("the worker took every job during the outage")
        assert worker.alive
        assert stack.media_count() == files  # refused before anything was written
    finally:
        if not stack.pg.running:
            stack.pg.start()
            stack.mark("postgres restarted")

    # The pooled connections from before the restart are dead: the health check replaces them, no error.
    fresh = [stack.upload_ok(RECEIPT + f"\nafter the restart {i}") for i in range(3)]
    stack.wait_terminal(fresh)
    wait_until(lambda: stack.messages_pending() == 0, 30, "the queue to drain", stack.diagnostics)
    stranded = {pk: s for pk, s in stack.statuses(queued).items() if s not in TERMINAL}
    stack.mark(f"after the restart, waiting for the watchdog: {stranded}")

    llm.default = responder(lambda body: offline_answer(body["messages"]), delay=0.05)
    if stranded:
        wait_older_than(stack, list(stranded), STUCK_AFTER)
        run_watchdog_until_done(stack, queued)
        stack.mark("watchdog re-queued the stranded documents; all processed")
    assert worker.alive
    sent = sum(1 for r in llm.requests if r.path.endswith("/chat/completions"))
    traced = stack.sql("SELECT count(*) FROM reviewapp_llmcall WHERE parse_status <> 'not_sent'")[0][0]
    stack.mark(f"model calls sent: {sent}, stored as LLMCall: {traced}")  # a call ending in the outage
    assert_processed_once(stack, [warm, *queued, fresh[0], fresh[1], fresh[2]])
    tokens = stack.sql(
        "SELECT document_id, task_id FROM reviewapp_extractionrun WHERE document_id = ANY(%s)"
        " AND status = 'succeeded'",
        bulk,
    )
    assert len(tokens) == 4, tokens
    if not set(bulk) & set(stranded):  # (the watchdog sends what it re-queues in a message of its own)
        # One message, retried with the same task id if the outage stopped some of its documents.
        assert all(task_id.endswith(f":{pk}") for pk, task_id in tokens), tokens
        assert len({task_id.rpartition(":")[0] for _, task_id in tokens}) == 1, tokens
    for pk, status in stranded.items():
        if status == "extracting":  # in flight when the database went: no run of it is left running
            assert "running" not in stack.runs(pk), (pk, stack.runs(pk))
    assert (stack.document_count(), stack.media_count()) == (14, 14)  # the refused uploads left nothing
    if stranded:
        assert "raised unexpected: OperationalError" in worker.log()
        pytest.xfail(
            f"{len(stranded)} of 10 documents queued before the database restart ({stranded}) waited for the "
            "watchdog: a job that meets the outage fails and is acked (acks_late only covers a lost worker), "
            "so nothing redelivers it; with the defaults that is REVIEWAPP_STUCK_AFTER_SECONDS = 30 min "
            "(docs/faults.md)"
        )
