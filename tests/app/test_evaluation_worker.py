"""A real `celery worker` SIGKILLed mid-evaluation: the redelivered job resumes from the checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from reviewapp import evaluation as ev
from reviewapp import services
from reviewapp.models import Evaluation, ExtractionRun, FieldValue
from tests.app.test_worker import slow_model_queue, start_worker, stop_workers, wait_until
from tests.conftest import RECEIPT

DOCUMENTS = 8


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_evaluation_is_resumed_by_the_redelivery(
    make_document: Any, receipt_type: Any, reviewer: Any, settings: Any, llm: Any, tmp_path: Path
) -> None:
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not broker.startswith("redis://"):
        pytest.skip("needs CELERY_BROKER_URL=redis://… (make test sets it)")
    receipt_type.fields.update(threshold=1.0)
    docs = [make_document(RECEIPT + f"\nref {i}", filename=f"e{i}.txt") for i in range(DOCUMENTS)]
    for doc in docs:  # gold: a reviewer accepted each receipt's company
        fv = FieldValue.objects.get(document=doc, field_spec__name="company", run__evaluation__isnull=True)
        services.field_decide(user=reviewer, field_id=fv.pk, action="accept", version=fv.version)

    # The worker's model answers like the offline one but slowly, so the kill lands mid-evaluation.
    queue, env = slow_model_queue(llm, tmp_path, delay=0.5)
    first = start_worker(queue, broker, **env)
    second = None
    try:
        evaluation = ev.evaluation_create(
            document_type=receipt_type, prompt_version=receipt_type.active_prompt
        )

        def checkpointed() -> dict[str, Any]:
            return Evaluation.objects.get(pk=evaluation.pk).progress.get("done", {})

        wait_until(lambda: len(checkpointed()) >= 1, 90, "a checkpointed document")
        first.send_signal(signal.SIGKILL)  # no warm shutdown: the job stays unacked, the row 'running'
        first.wait(timeout=10)
        saved = {int(k) for k in checkpointed()}
        killed = Evaluation.objects.get(pk=evaluation.pk)
        assert killed.status == "running" and killed.attempts == 1 and len(saved) < DOCUMENTS
        second = start_worker(queue, broker, **env)
        wait_until(
            lambda: Evaluation.objects.get(pk=evaluation.pk).status in ("done", "failed"),
            120,
            "the evaluation to finish",
        )
    finally:
        stop_workers(first, second)
    evaluation.refresh_from_db()
    assert evaluation.status == "done", evaluation.error_message
    assert evaluation.attempts == 2 and evaluation.claim_token == killed.claim_token  # the same task, again
    assert evaluation.report["meta"]["gold_documents"] == [d.pk for d in docs]
    runs = ExtractionRun.objects.filter(evaluation=evaluation)
    assert not runs.filter(status="running").exists()  # the dead worker's run was closed
    for doc in docs:
        succeeded = runs.filter(document=doc, status="succeeded").count()
        # A checkpointed document is never re-extracted; the others are, once the worker is back.
        assert succeeded == 1 if doc.pk in saved else succeeded >= 1, (doc.pk, succeeded)
