"""Evaluations survive a lost worker: claims, checkpoints, redelivery, the watchdog and its visible reasons.

A worker killed mid-evaluation is simulated by a BaseException raised from inside the pipeline: like a
SIGKILL, nothing below it (no `except Exception`, no status update) runs, so the row is left exactly as
a dead worker leaves it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.test import Client
from django.utils import timezone

from reviewapp import evaluation as ev
from reviewapp import services
from reviewapp.celery import app as celery_app
from reviewapp.evaluation import runs
from reviewapp.models import Document, DocumentType, Evaluation, ExtractionRun, FieldValue
from tests.conftest import RECEIPT

pytestmark = pytest.mark.django_db


REAL_RUN_PIPELINE = services.run_pipeline


class WorkerLost(BaseException):
    """The worker process died: no handler of the task runs."""


@pytest.fixture
def gold_documents(make_document: Any, receipt_type: DocumentType, reviewer: Any) -> list[Document]:
    """Three receipts whose company and total a reviewer accepted: gold for three documents."""
    receipt_type.fields.update(threshold=1.0)  # every field goes to review
    docs = [make_document(RECEIPT + f"\nref {i}", filename=f"r{i}.txt") for i in range(3)]
    for doc in docs:
        for name in ("company", "total"):
            fv = FieldValue.objects.get(document=doc, field_spec__name=name, run__evaluation__isnull=True)
            services.field_decide(user=reviewer, field_id=fv.pk, action="accept", version=fv.version)
    return docs


@pytest.fixture(autouse=True)
def _checkpoint_every_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "CHECKPOINT_SECONDS", 0.0)


def new_evaluation(doc_type: DocumentType) -> Evaluation:
    return ev.evaluation_create(document_type=doc_type, prompt_version=doc_type.active_prompt, enqueue=False)


def pipeline_that(monkeypatch: pytest.MonkeyPatch, fail_on: int, exc: BaseException) -> list[int]:
    """Make the `fail_on`-th re-extraction (1-based) raise `exc`; return the documents re-extracted."""
    real = services.run_pipeline
    seen: list[int] = []

    def run_pipeline(*, document: Document, **kwargs: Any) -> Any:
        seen.append(document.pk)
        if len(seen) == fail_on:
            raise exc
        return real(document=document, **kwargs)

    monkeypatch.setattr(services, "run_pipeline", run_pipeline)
    return seen


def killed_at(doc_type: DocumentType, monkeypatch: pytest.MonkeyPatch, document: int) -> Evaluation:
    """Create an evaluation and run it until its worker dies re-extracting its `document`-th document."""
    evaluation = new_evaluation(doc_type)
    pipeline_that(monkeypatch, fail_on=document, exc=WorkerLost())
    with pytest.raises(WorkerLost):
        ev.evaluation_execute(evaluation_id=evaluation.pk, token="task-1")
    monkeypatch.setattr(services, "run_pipeline", REAL_RUN_PIPELINE)
    return evaluation


def make_silent(evaluation: Evaluation, **fields: Any) -> None:
    """Age the evaluation's last sign of life past the stuck timeout."""
    long_ago = timezone.now() - timedelta(seconds=settings.REVIEWAPP_EVALUATION_STUCK_AFTER_SECONDS + 60)
    Evaluation.objects.filter(pk=evaluation.pk).update(
        **{"heartbeat_at": long_ago, "created_at": long_ago, **fields}
    )


def items(evaluation: Evaluation) -> list[tuple[Any, ...]]:
    return sorted(
        (i["document_id"], i["field"], i["predicted"], i["confidence"], i["correct"])
        for i in evaluation.report["items"]
    )


def test_a_redelivery_after_the_worker_died_resumes_where_it_stopped(
    gold_documents: list[Document], receipt_type: DocumentType, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = killed_at(receipt_type, monkeypatch, document=3)
    evaluation.refresh_from_db()
    assert evaluation.status == "running" and evaluation.attempts == 1
    assert ev.evaluation_progress(evaluation) == {"documents": 3, "done": 2}
    assert ExtractionRun.objects.get(evaluation=evaluation, document=gold_documents[2]).status == "running"

    # acks_late + reject_on_worker_lost: the broker delivers the same task (same id) to another worker.
    seen = pipeline_that(monkeypatch, fail_on=0, exc=WorkerLost())
    assert ev.evaluation_execute(evaluation_id=evaluation.pk, token="task-1") == "done"
    assert seen == [gold_documents[2].pk]  # the two checkpointed documents were not paid for again
    evaluation.refresh_from_db()
    assert evaluation.status == "done" and evaluation.attempts == 2 and evaluation.progress == {}
    runs_of = ExtractionRun.objects.filter(evaluation=evaluation, document=gold_documents[2])
    assert sorted(runs_of.values_list("status", flat=True)) == ["abandoned", "succeeded"]

    # The resumed report is the one an uninterrupted evaluation gives.
    monkeypatch.setattr(services, "run_pipeline", REAL_RUN_PIPELINE)
    clean = new_evaluation(receipt_type)
    assert ev.evaluation_execute(evaluation_id=clean.pk) == "done"
    clean.refresh_from_db()
    assert items(evaluation) == items(clean) and len(items(clean)) == 6
    assert evaluation.report["overall"]["accuracy"] == clean.report["overall"]["accuracy"]
    assert evaluation.report["meta"]["gold_documents"] == [d.pk for d in gold_documents]


def test_a_second_delivery_of_a_running_evaluation_does_nothing(
    gold_documents: list[Document], receipt_type: DocumentType
) -> None:
    evaluation = new_evaluation(receipt_type)
    Evaluation.objects.filter(pk=evaluation.pk).update(
        status="running", claim_token="task-1", heartbeat_at=timezone.now(), attempts=1
    )
    assert ev.evaluation_execute(evaluation_id=evaluation.pk, token="task-2") == "skipped"
    assert not ExtractionRun.objects.filter(evaluation=evaluation).exists()
    Evaluation.objects.filter(pk=evaluation.pk).update(status="done")
    assert ev.evaluation_execute(evaluation_id=evaluation.pk, token="task-1") == "skipped"


def test_the_watchdog_requeues_a_silent_evaluation_which_then_finishes(
    gold_documents: list[Document],
    receipt_type: DocumentType,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    evaluation = killed_at(receipt_type, monkeypatch, document=2)
    busy, waiting = new_evaluation(receipt_type), new_evaluation(receipt_type)
    Evaluation.objects.filter(pk=busy.pk).update(
        status="running", claim_token="alive", heartbeat_at=timezone.now(), attempts=1
    )

    assert ev.evaluations_requeue_stuck() == {"requeued": 0, "failed": 0}  # nobody is silent yet
    make_silent(evaluation)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:  # the job runs (eagerly) on commit
        assert ev.evaluations_requeue_stuck() == {"requeued": 1, "failed": 0}
    assert len(callbacks) == 1
    evaluation.refresh_from_db()
    assert evaluation.status == "done" and evaluation.attempts == 2 and evaluation.error_message == ""
    assert evaluation.report["meta"]["gold_items"] == 6
    assert Evaluation.objects.get(pk=busy.pk).status == "running"  # making progress: left alone
    assert Evaluation.objects.get(pk=waiting.pk).status == "queued"  # queued a moment ago: left alone


def test_a_queued_evaluation_whose_job_was_lost_is_queued_again(
    gold_documents: list[Document], receipt_type: DocumentType, django_capture_on_commit_callbacks: Any
) -> None:
    evaluation = new_evaluation(receipt_type)  # enqueue=False: as if the broker lost the message
    make_silent(evaluation, heartbeat_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert ev.evaluations_requeue_stuck() == {"requeued": 1, "failed": 0}
    evaluation.refresh_from_db()
    assert evaluation.status == "done" and evaluation.attempts == 1


def test_the_watchdog_fails_an_evaluation_after_max_attempts_with_a_visible_reason(
    gold_documents: list[Document],
    receipt_type: DocumentType,
    admin_user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    evaluation = killed_at(receipt_type, monkeypatch, document=1)
    make_silent(evaluation, attempts=settings.REVIEWAPP_EVALUATION_MAX_ATTEMPTS)

    assert ev.evaluations_requeue_stuck() == {"requeued": 0, "failed": 1}
    evaluation.refresh_from_db()
    assert evaluation.status == "failed" and evaluation.finished_at is not None
    assert evaluation.error_message.startswith("stuck: no progress for ")
    assert f"after {settings.REVIEWAPP_EVALUATION_MAX_ATTEMPTS} attempt(s)" in evaluation.error_message
    assert not ExtractionRun.objects.filter(evaluation=evaluation, status="running").exists()
    assert ev.evaluations_requeue_stuck() == {"requeued": 0, "failed": 0}  # failed is final

    client = Client()
    client.force_login(admin_user)
    body = client.get(f"/api/v1/evaluations/{evaluation.pk}/").json()
    assert body["status"] == "failed" and body["error_message"] == evaluation.error_message
    assert body["attempts"] == settings.REVIEWAPP_EVALUATION_MAX_ATTEMPTS
    assert body["progress"] == {"documents": 3, "done": 0}
    page = client.get(f"/admin/reviewapp/evaluation/{evaluation.pk}/change/").content.decode()
    assert "stuck: no progress for" in page and "0 of 3" in page


def test_a_job_redelivered_past_max_attempts_gives_up_instead_of_running_again(
    gold_documents: list[Document], receipt_type: DocumentType, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = new_evaluation(receipt_type)
    seen = pipeline_that(monkeypatch, fail_on=1, exc=WorkerLost())
    for _ in range(settings.REVIEWAPP_EVALUATION_MAX_ATTEMPTS):  # a document that kills its worker every time
        with pytest.raises(WorkerLost):
            ev.evaluation_execute(evaluation_id=evaluation.pk, token="task-1")
        seen.clear()
    assert ev.evaluation_execute(evaluation_id=evaluation.pk, token="task-1") == "failed"
    assert seen == []
    evaluation.refresh_from_db()
    assert evaluation.status == "failed" and evaluation.error_message.startswith("stuck: gave up after")


def test_a_delivery_whose_claim_was_taken_stops_without_writing(
    gold_documents: list[Document], receipt_type: DocumentType, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = new_evaluation(receipt_type)
    real = services.run_pipeline

    def run_pipeline(**kwargs: Any) -> Any:
        # Meanwhile the watchdog gave up waiting and another delivery claimed the evaluation.
        Evaluation.objects.filter(pk=evaluation.pk).update(claim_token="task-2")
        return real(**kwargs)

    monkeypatch.setattr(services, "run_pipeline", run_pipeline)
    assert ev.evaluation_execute(evaluation_id=evaluation.pk, token="task-1") == "superseded"
    evaluation.refresh_from_db()
    assert evaluation.status == "running" and evaluation.claim_token == "task-2"
    assert evaluation.report == {} and ev.evaluation_progress(evaluation) == {"documents": 3, "done": 0}
    assert ExtractionRun.objects.filter(evaluation=evaluation).count() == 1  # it stopped after one


def test_the_soft_time_limit_hands_the_rest_to_a_new_job(
    gold_documents: list[Document],
    receipt_type: DocumentType,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    evaluation = new_evaluation(receipt_type)
    seen = pipeline_that(monkeypatch, fail_on=2, exc=SoftTimeLimitExceeded())
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert ev.evaluation_execute(evaluation_id=evaluation.pk, token="task-1") == "continued"
    assert len(callbacks) == 1
    evaluation.refresh_from_db()
    assert evaluation.status == "done" and evaluation.attempts == 1  # a continuation is not a retry
    first, second, third = (d.pk for d in gold_documents)
    assert seen == [first, second, second, third]  # the first document was checkpointed, not redone

    stalled = new_evaluation(receipt_type)
    pipeline_that(monkeypatch, fail_on=1, exc=SoftTimeLimitExceeded())
    assert ev.evaluation_execute(evaluation_id=stalled.pk, token="task-3") == "failed"
    stalled.refresh_from_db()
    assert stalled.status == "failed" and stalled.error_message.startswith("timeout:")


def test_the_watchdog_is_scheduled_and_every_scheduled_task_exists() -> None:
    celery_app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "reviewapp.evaluation.requeue_stuck_evaluations" in scheduled
    assert scheduled <= set(celery_app.tasks)
    assert ev.requeue_stuck_evaluations.apply().get() == {"requeued": 0, "failed": 0}
