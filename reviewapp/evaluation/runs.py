"""Evaluation runs: re-extract the gold documents with a prompt version and model, compare with gold.

An evaluation is a Celery job (`run_evaluation`) that may be delivered twice, lose its worker half way,
or be re-queued by the watchdog (`requeue_stuck_evaluations`, Celery beat). The row is the lock: a
delivery works only after claiming it with a conditional UPDATE, and every later write is conditional
on still holding that claim. Finished documents are checkpointed on the row (`Evaluation.progress`),
so a retry resumes where the lost worker stopped instead of paying for those model calls again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, F, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from extraction import evaluation as maths
from extraction.normalize import values_equal
from extraction.pipeline import PipelineError

from .. import services
from ..errors import ReviewAppError
from ..models import Document, DocumentType, Evaluation, ExtractionRun, FieldValue, PromptVersion
from .gold import _specs, gold_set

log = logging.getLogger(__name__)


def evaluation_create(
    *,
    document_type: DocumentType,
    prompt_version: PromptVersion,
    model_alias: str = "",
    limit: int | None = None,
    user: Any = None,
    enqueue: bool = True,
) -> Evaluation:
    """Create an evaluation and, with `enqueue`, queue its run once the transaction commits."""
    if prompt_version.document_type_id != document_type.pk:
        raise ReviewAppError(
            f"{prompt_version.label} is not a prompt of {document_type.slug}", code="wrong_prompt"
        )
    evaluation = Evaluation.objects.create(
        document_type=document_type,
        prompt_version=prompt_version,
        model_alias=model_alias or "",
        limit=limit,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    if enqueue:
        evaluation_enqueue(evaluation)
    return evaluation


def evaluation_enqueue(evaluation: Evaluation) -> None:
    """Queue the run of `evaluation` once the surrounding transaction commits (the worker must see it)."""
    _enqueue(evaluation.pk)


def _enqueue(evaluation_id: int) -> None:
    transaction.on_commit(lambda: run_evaluation.delay(evaluation_id))


def _gold_by_document(
    document_type: DocumentType, limit: int | None, exclude_documents: set[int] | frozenset[int] = frozenset()
) -> dict[int, list[FieldValue]]:
    by_doc: dict[int, list[FieldValue]] = defaultdict(list)
    for fv in gold_set(document_type):
        if fv.document_id not in exclude_documents:  # a prompt's few-shot sources would be seen answers
            by_doc[fv.document_id].append(fv)
    ids = sorted(by_doc)  # oldest documents first, so two evaluations with one limit share their gold
    if limit:
        ids = ids[:limit]
    return {i: by_doc[i] for i in ids}


CHECKPOINT_SECONDS = 5.0  # progress is saved at most this often: the most a lost worker's retry repeats
Status = Evaluation.Status


def _run_one(evaluation: Evaluation, document: Document, token: str = "") -> tuple[Any, maths.DocStat]:
    prompt = evaluation.prompt_version
    run = ExtractionRun.objects.create(
        document=document,
        prompt_version=prompt,
        evaluation=evaluation,
        arm="evaluation",
        model_requested=evaluation.model_alias or prompt.model_alias,
        task_id=token[:64],
    )
    started = time.perf_counter()
    outcome, trace = services.run_pipeline(
        document=document, run=run, model_alias=evaluation.model_alias or None
    )
    latency = (time.perf_counter() - started) * 1000
    failed = isinstance(outcome, PipelineError)
    now = timezone.now()
    # Conditional: a run that a later delivery marked abandoned (it took over) stays abandoned.
    ExtractionRun.objects.filter(pk=run.pk, status=ExtractionRun.Status.RUNNING).update(
        status=ExtractionRun.Status.FAILED if failed else ExtractionRun.Status.SUCCEEDED,
        model_answered="" if failed else outcome.model_answered,
        finished_at=now,
        duration_ms=int(latency),
        attempts=0 if failed else outcome.attempts,
        prompt_tokens=trace.prompt_tokens,
        completion_tokens=trace.completion_tokens,
        cached_tokens=trace.cached_tokens,
        cost_usd=Decimal(str(round(trace.cost_usd, 6))),
        verify_score=None if failed else outcome.verify_score,
        error_code=outcome.code if failed else "",
        error_message=str(outcome)[:4000] if failed else "",
    )
    stat = maths.DocStat(
        document_id=document.pk,
        tokens=trace.prompt_tokens + trace.completion_tokens,
        cost_usd=trace.cost_usd,
        latency_ms=latency,
        failed=failed,
    )
    return outcome, stat


def _stuck_after() -> timedelta:
    return timedelta(seconds=settings.REVIEWAPP_EVALUATION_STUCK_AFTER_SECONDS)


def _claim(evaluation_id: int, token: str) -> bool:
    """Claim the evaluation for this delivery of its job; False when another delivery owns it or it ended.

    Claimable: queued; or running under this token (a redelivery after the worker died: same task id);
    or running with no progress for longer than the stuck timeout (its worker is gone).
    """
    now = timezone.now()
    claimable = Q(status=Status.QUEUED) | Q(status=Status.RUNNING) & (
        Q(claim_token=token) | Q(heartbeat_at__lt=now - _stuck_after())
    )
    return bool(
        Evaluation.objects.filter(Q(pk=evaluation_id) & claimable).update(
            status=Status.RUNNING,
            claim_token=token,
            attempts=F("attempts") + 1,
            heartbeat_at=now,
            started_at=Coalesce(F("started_at"), Value(now, output_field=DateTimeField())),
        )
    )


def _mine(evaluation_id: int, token: str) -> QuerySet[Evaluation]:
    """The evaluation, as long as this delivery still holds its claim (for conditional writes)."""
    return Evaluation.objects.filter(pk=evaluation_id, status=Status.RUNNING, claim_token=token)


class _Superseded(Exception):
    """The claim was taken from this delivery (the watchdog re-queued the evaluation, another took it)."""


@dataclass
class _Attempt:
    """One delivery's work on an evaluation: its claim and the checkpoint it keeps on the row."""

    evaluation_id: int
    token: str
    progress: dict[str, Any]
    finished: int = 0  # documents this delivery re-extracted
    saved_at: float = field(default_factory=time.monotonic)

    def checkpoint(self, *, force: bool = False) -> None:
        """Save the progress and a heartbeat (at most every CHECKPOINT_SECONDS unless forced)."""
        if not force and time.monotonic() - self.saved_at < CHECKPOINT_SECONDS:
            return
        if not _mine(self.evaluation_id, self.token).update(
            progress=self.progress, heartbeat_at=timezone.now()
        ):
            raise _Superseded
        self.saved_at = time.monotonic()


def evaluation_execute(*, evaluation_id: int, token: str | None = None) -> str:
    """Re-extract the gold documents of an evaluation, compare with gold and store the report.

    Idempotent and safe to retry: only a delivery that claims the row (`_claim`, a conditional UPDATE)
    does the work, so two workers given the same job cannot both run it; each write after that is
    conditional on still holding the claim. A retry skips the documents already checkpointed. Model
    calls run with no transaction open; each re-extraction is an ExtractionRun tied to the evaluation,
    and documents are never changed. `token` identifies the delivery (the Celery task id); a direct
    call gets one of its own. Return done, failed, continued, superseded or skipped.
    """
    token = token or f"inline-{uuid.uuid4().hex}"
    if not _claim(evaluation_id, token):
        return "skipped"
    evaluation = Evaluation.objects.select_related("document_type", "prompt_version").get(pk=evaluation_id)
    now = timezone.now()
    # Runs left open by a delivery that lost its worker will never finish.
    ExtractionRun.objects.filter(evaluation_id=evaluation_id, status=ExtractionRun.Status.RUNNING).update(
        status=ExtractionRun.Status.ABANDONED, finished_at=now
    )
    limit = settings.REVIEWAPP_EVALUATION_MAX_ATTEMPTS
    if evaluation.attempts > limit:
        # Redelivered again and again (a worker dying on it each time): stop before it costs more.
        _mine(evaluation_id, token).update(
            status=Status.FAILED,
            error_message=f"stuck: gave up after {limit} attempts; the worker running it was lost each "
            "time (REVIEWAPP_EVALUATION_MAX_ATTEMPTS)",
            finished_at=now,
        )
        return "failed"
    attempt = _Attempt(evaluation_id, token, dict(evaluation.progress or {}))
    try:
        report = _evaluate(evaluation, attempt)
    except _Superseded:
        log.warning("evaluation %s: claim taken by another delivery, stopping", evaluation_id)
        return "superseded"
    except SoftTimeLimitExceeded:
        return _continue_later(evaluation, attempt)
    except Exception as exc:
        # Record the failure on the row so it is never silently lost, then let the worker log it.
        _mine(evaluation_id, token).update(
            status=Status.FAILED,
            error_message=f"{type(exc).__name__}: {exc}"[:4000],
            finished_at=timezone.now(),
        )
        raise
    finished = _mine(evaluation_id, token).update(
        status=Status.DONE, report=report, progress={}, finished_at=timezone.now()
    )
    return "done" if finished else "superseded"


def _continue_later(evaluation: Evaluation, attempt: _Attempt) -> str:
    """The task hit its soft time limit: re-queue the rest if this delivery got anywhere, else fail."""
    mine = _mine(evaluation.pk, attempt.token)
    if not attempt.finished:
        mine.update(
            status=Status.FAILED,
            error_message="timeout: one gold document took longer than the task's time limit "
            "(CELERY_TASK_SOFT_TIME_LIMIT)",
            finished_at=timezone.now(),
        )
        return "failed"
    with transaction.atomic():
        # A continuation, not a new attempt: give back the attempt this delivery's claim counted.
        if not mine.update(
            status=Status.QUEUED, claim_token="", attempts=F("attempts") - 1, heartbeat_at=timezone.now()
        ):
            return "superseded"
        _enqueue(evaluation.pk)
    return "continued"


def _evaluate(evaluation: Evaluation, attempt: _Attempt) -> dict[str, Any]:
    document_type = evaluation.document_type
    specs = _specs(document_type)
    gold = _gold_by_document(document_type, evaluation.limit, evaluation.prompt_version.example_document_ids)
    progress = attempt.progress
    if "documents" not in progress:
        # The first delivery fixes which documents are evaluated; a retry keeps them (a document whose
        # gold was excluded since drops out; gold decided since waits for the next evaluation).
        progress["documents"] = list(gold)
        progress["done"] = {}
        attempt.checkpoint(force=True)
    gold = {doc_id: gold[doc_id] for doc_id in progress["documents"] if doc_id in gold}
    done: dict[str, Any] = progress["done"]
    documents = Document.objects.in_bulk([i for i in gold if str(i) not in done])
    observations: list[maths.Observation] = []
    stats: list[maths.DocStat] = []
    items: list[dict[str, Any]] = []
    try:
        for doc_id, gold_fields in gold.items():
            entry = done.get(str(doc_id))
            if entry is None:
                outcome, stat = _run_one(evaluation, documents[doc_id], attempt.token)
                fields = [] if stat.failed else outcome.fields
                # JSON (the checkpoint): the value and confidence each field was predicted with.
                entry = {
                    "stat": stat.to_dict(),
                    "predicted": {g.name: [g.value, g.confidence] for g in fields},
                }
                done[str(doc_id)] = entry
                attempt.finished += 1
                attempt.checkpoint()
            stat = maths.DocStat(**entry["stat"])
            stats.append(stat)
            for fv in gold_fields:
                value, confidence = entry["predicted"].get(fv.field_spec.name, (None, None))
                obs = maths.Observation(
                    document_id=doc_id,
                    field=fv.field_spec.name,
                    predicted=value,
                    confidence=min(max(float(confidence), 0.0), 1.0) if confidence is not None else 0.0,
                    gold=fv.final_value,
                    failed=stat.failed,
                )
                observations.append(obs)
                items.append(
                    {
                        **obs.to_dict(),
                        "field_value": fv.pk,
                        "correct": maths.is_correct(obs, specs[obs.field], values_equal),
                    }
                )
    except SoftTimeLimitExceeded:
        attempt.checkpoint(force=True)  # keep what this delivery finished for the continuation
        raise
    report = maths.evaluate(observations, specs, values_equal, doc_stats=stats).to_dict()
    report["meta"] = {
        "document_type": document_type.slug,
        "prompt_version": evaluation.prompt_version.label,
        "model_alias": evaluation.model_alias,
        # jsonb does not keep key order: remember the schema order for display.
        "field_order": list(report["fields"]),
        "gold_items": len(observations),
        "gold_documents": sorted(gold),
        "thresholds": {name: spec.threshold for name, spec in specs.items()},
    }
    report["items"] = items
    return report


@shared_task(bind=True, acks_late=True, name="reviewapp.evaluation.run_evaluation")
def run_evaluation(self: Any, evaluation_id: int) -> str:
    """Run one evaluation (a Celery job that takes the Evaluation id); safe to deliver twice."""
    outcome = evaluation_execute(evaluation_id=evaluation_id, token=self.request.id or None)
    log.info("evaluation %s: %s", evaluation_id, outcome)
    return outcome


def evaluation_progress(evaluation: Evaluation) -> dict[str, int] | None:
    """Return how many gold documents a running (or stopped) evaluation planned and has finished."""
    progress = evaluation.progress or {}
    if "documents" not in progress:
        return None
    return {"documents": len(progress["documents"]), "done": len(progress.get("done", {}))}


# --- the watchdog -----------------------------------------------------------------------------------------
def evaluations_requeue_stuck(*, older_than: timedelta | None = None) -> dict[str, int]:
    """Re-queue evaluations whose worker was lost, or fail them visibly after too many attempts.

    Stuck: running with no progress (no heartbeat) for `older_than` (default
    REVIEWAPP_EVALUATION_STUCK_AFTER_SECONDS), or queued that long with no delivery claiming it (the
    job was lost). Every evaluation can resume from its checkpoint, so one is re-queued unless it has
    used REVIEWAPP_EVALUATION_MAX_ATTEMPTS; then it is failed with the reason in `error_message`.
    """
    older_than = older_than or _stuck_after()
    now = timezone.now()
    silent = Q(heartbeat_at__lt=now - older_than) | Q(
        heartbeat_at__isnull=True, created_at__lt=now - older_than
    )
    stuck = Evaluation.objects.filter(Q(status__in=[Status.QUEUED, Status.RUNNING]) & silent)
    limit = settings.REVIEWAPP_EVALUATION_MAX_ATTEMPTS
    requeued = failed = 0
    for pk, status, attempts, token in stuck.values_list("pk", "status", "attempts", "claim_token"):
        unchanged = Evaluation.objects.filter(Q(pk=pk, status=status, claim_token=token) & silent)
        if attempts >= limit:
            reason = (
                f"stuck: no progress for {older_than} after {attempts} attempt(s); the worker running it "
                "was probably lost (REVIEWAPP_EVALUATION_MAX_ATTEMPTS)"
            )
            if unchanged.update(status=Status.FAILED, error_message=reason, finished_at=now):
                ExtractionRun.objects.filter(evaluation_id=pk, status=ExtractionRun.Status.RUNNING).update(
                    status=ExtractionRun.Status.ABANDONED, finished_at=now
                )
                log.warning("evaluation %s: %s", pk, reason)
                failed += 1
            continue
        with transaction.atomic():
            if unchanged.update(status=Status.QUEUED, claim_token="", heartbeat_at=now):
                _enqueue(pk)
                log.warning(
                    "evaluation %s: no progress for %s, re-queued (attempt %s)", pk, older_than, attempts
                )
                requeued += 1
    return {"requeued": requeued, "failed": failed}


@shared_task(name="reviewapp.evaluation.requeue_stuck_evaluations")
def requeue_stuck_evaluations() -> dict[str, int]:
    """The watchdog's periodic job (Celery beat, settings.CELERY_BEAT_SCHEDULE)."""
    return evaluations_requeue_stuck()
