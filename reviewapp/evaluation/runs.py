"""Evaluation runs: re-extract the gold documents with a prompt version and model, compare with gold."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

from celery import shared_task
from django.db import transaction
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
    pk = evaluation.pk
    transaction.on_commit(lambda: run_evaluation.delay(pk))


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


def _run_one(evaluation: Evaluation, document: Document) -> tuple[Any, maths.DocStat]:
    prompt = evaluation.prompt_version
    run = ExtractionRun.objects.create(
        document=document,
        prompt_version=prompt,
        evaluation=evaluation,
        arm="evaluation",
        model_requested=evaluation.model_alias or prompt.model_alias,
    )
    started = time.perf_counter()
    outcome, trace = services.run_pipeline(
        document=document, run=run, model_alias=evaluation.model_alias or None
    )
    latency = (time.perf_counter() - started) * 1000
    failed = isinstance(outcome, PipelineError)
    now = timezone.now()
    ExtractionRun.objects.filter(pk=run.pk).update(
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


def evaluation_execute(*, evaluation_id: int) -> str:
    """Re-extract the gold documents of an evaluation, compare with gold and store the report.

    Idempotent: only the delivery that moves the row from queued to running does the work (a
    conditional UPDATE, so two workers given the same job cannot both run it). Model calls run with
    no transaction open; each re-extraction is an ExtractionRun tied to the evaluation, and documents
    are never changed.
    """
    claimed = Evaluation.objects.filter(pk=evaluation_id, status=Evaluation.Status.QUEUED).update(
        status=Evaluation.Status.RUNNING
    )
    if not claimed:
        return "skipped"
    evaluation = Evaluation.objects.select_related("document_type", "prompt_version").get(pk=evaluation_id)
    try:
        report = _evaluate(evaluation)
    except Exception as exc:
        # Record the failure on the row so it is never silently lost, then let the worker log it.
        Evaluation.objects.filter(pk=evaluation_id).update(
            status=Evaluation.Status.FAILED,
            error_message=f"{type(exc).__name__}: {exc}"[:4000],
            finished_at=timezone.now(),
        )
        raise
    Evaluation.objects.filter(pk=evaluation_id).update(
        status=Evaluation.Status.DONE, report=report, finished_at=timezone.now()
    )
    return "done"


def _evaluate(evaluation: Evaluation) -> dict[str, Any]:
    document_type = evaluation.document_type
    specs = _specs(document_type)
    gold = _gold_by_document(document_type, evaluation.limit, evaluation.prompt_version.example_document_ids)
    documents = Document.objects.in_bulk(list(gold))
    observations: list[maths.Observation] = []
    stats: list[maths.DocStat] = []
    items: list[dict[str, Any]] = []
    for doc_id, gold_fields in gold.items():
        document = documents[doc_id]
        outcome, stat = _run_one(evaluation, document)
        stats.append(stat)
        predicted = {} if stat.failed else {g.name: g for g in outcome.fields}
        for fv in gold_fields:
            g = predicted.get(fv.field_spec.name)
            obs = maths.Observation(
                document_id=doc_id,
                field=fv.field_spec.name,
                predicted=g.value if g else None,
                confidence=min(max(float(g.confidence), 0.0), 1.0) if g else 0.0,
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


@shared_task(acks_late=True, name="reviewapp.evaluation.run_evaluation")
def run_evaluation(evaluation_id: int) -> str:
    """Run one evaluation (a Celery job that takes the Evaluation id); safe to deliver twice."""
    outcome = evaluation_execute(evaluation_id=evaluation_id)
    log.info("evaluation %s: %s", evaluation_id, outcome)
    return outcome
