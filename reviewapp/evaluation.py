"""Gold data, evaluation runs, threshold tuning, A/B arms, drift and the promotion gate (issue 5).

The maths lives in `extraction.evaluation` (plain Python, unit-tested there); this module is its Django
edge: it turns reviewed fields into gold, re-extracts gold documents for an evaluation, feeds both to
the maths, and records every change it makes (ThresholdChange, PromotionEvent).

Gold: a field a human decided (accepted, corrected or rejected) in a document's production run, unless
an admin excluded it (FieldValue.gold_excluded). Its gold value is the reviewer's final value (None for
a rejection). Auto-accepted fields are not gold; audit samples (services._store_result) are reviewed
anyway, so they become gold and measure the auto-acceptance error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from celery import shared_task
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from extraction import evaluation as maths
from extraction.normalize import values_equal
from extraction.pipeline import PipelineError
from extraction.schemas import FieldSpec as FieldSpecData

from . import services
from .errors import NotFound, ReviewAppError
from .models import (
    Document,
    DocumentType,
    Evaluation,
    ExtractionRun,
    FieldSpec,
    FieldValue,
    PromotionEvent,
    PromptVersion,
    ThresholdChange,
)

log = logging.getLogger(__name__)
DECIDED = [FieldValue.Status.ACCEPTED, FieldValue.Status.CORRECTED, FieldValue.Status.REJECTED]


class PromotionBlocked(ReviewAppError):
    """The gate refused a promotion; `details["comparison"]` holds the comparison that failed."""

    code = "promotion_blocked"
    status = 409


class ThresholdNotApplied(ReviewAppError):
    code = "threshold_not_applied"
    status = 409


def _specs(document_type: DocumentType) -> dict[str, FieldSpecData]:
    return {f.name: f.to_data() for f in document_type.fields.order_by("position", "id")}


# --- gold ------------------------------------------------------------------------------------------------
def gold_items(document_type: DocumentType, *, include_excluded: bool = False) -> QuerySet[FieldValue]:
    """Return the decided fields of production runs of `document_type`, newest decision first.

    A document re-extracted and reviewed again has two decisions on a field; gold_latest keeps one.
    """
    qs = FieldValue.objects.filter(
        field_spec__document_type=document_type,
        run__evaluation__isnull=True,
        status__in=DECIDED,
    )
    if not include_excluded:
        qs = qs.filter(gold_excluded=False)
    return qs.select_related("field_spec", "document", "reviewer", "run__prompt_version").order_by(
        "-reviewed_at", "-id"
    )


def gold_latest(items: Iterable[FieldValue]) -> list[FieldValue]:
    """Keep the latest decision per (document, field) of items ordered newest first; return them by id."""
    seen: dict[tuple[int, int], FieldValue] = {}
    for fv in items:
        seen.setdefault((fv.document_id, fv.field_spec_id), fv)
    return sorted(seen.values(), key=lambda fv: (fv.document_id, fv.field_spec.position, fv.pk))


def gold_set(document_type: DocumentType) -> list[FieldValue]:
    """Return the gold items of `document_type`: one per (document, field), exclusions left out."""
    return gold_latest(gold_items(document_type))


def gold_observation(fv: FieldValue) -> maths.Observation:
    """Return the original run's prediction of a gold item next to its gold value."""
    return maths.Observation(
        document_id=fv.document_id,
        field=fv.field_spec.name,
        predicted=fv.value,
        confidence=min(max(float(fv.confidence), 0.0), 1.0),
        gold=fv.final_value,
    )


GOLD_COLUMNS = [
    "field_value",
    "document",
    "filename",
    "field",
    "type",
    "gold",
    "decision",
    "model_value",
    "confidence",
    "audit_sample",
    "prompt_version",
    "reviewer",
    "reviewed_at",
]


def gold_rows(items: Iterable[FieldValue]) -> Iterator[dict[str, Any]]:
    """Yield one export row per gold item (the GOLD_COLUMNS)."""
    for fv in items:
        yield {
            "field_value": fv.pk,
            "document": fv.document_id,
            "filename": fv.document.filename,
            "field": fv.field_spec.name,
            "type": fv.field_spec.type,
            "gold": fv.final_value,
            "decision": fv.status,
            "model_value": fv.value,
            "confidence": fv.confidence,
            "audit_sample": fv.audit_sample,
            "prompt_version": fv.run.prompt_version.label,
            "reviewer": fv.reviewer.get_username() if fv.reviewer else "",
            "reviewed_at": fv.reviewed_at.isoformat() if fv.reviewed_at else "",
        }


def gold_export(items: Iterable[FieldValue], *, fmt: str) -> str:
    """Return the gold items as CSV (values JSON-encoded, so None and "" differ) or JSON lines."""
    out = io.StringIO()
    if fmt == "jsonl":
        for row in gold_rows(items):
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        return out.getvalue()
    if fmt != "csv":
        raise ValueError(f"unknown export format {fmt!r}")
    writer = csv.DictWriter(out, fieldnames=GOLD_COLUMNS)
    writer.writeheader()
    for row in gold_rows(items):
        row["gold"] = json.dumps(row["gold"], ensure_ascii=False)
        row["model_value"] = json.dumps(row["model_value"], ensure_ascii=False)
        writer.writerow(row)
    return out.getvalue()


def gold_exclude(*, field_values: QuerySet[FieldValue], excluded: bool) -> int:
    """Exclude fields from (or put them back into) the gold set; return how many rows changed."""
    return field_values.exclude(gold_excluded=excluded).update(gold_excluded=excluded)


# --- evaluation runs ----------------------------------------------------------------------------------------
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


def report_from_dict(data: Mapping[str, Any]) -> maths.EvaluationReport:
    """Rebuild the EvaluationReport stored (as JSON) on Evaluation.report."""

    def calibration(c: Mapping[str, Any]) -> maths.Calibration:
        bins = tuple(maths.CalibrationBin(**b) for b in c["bins"])
        return maths.Calibration(bins, c["ece"], c["brier"])

    def metrics(m: Mapping[str, Any]) -> maths.FieldMetrics:
        return maths.FieldMetrics(**{**m, "calibration": calibration(m["calibration"])})

    def dist(d: Mapping[str, Any] | None) -> maths.Distribution | None:
        return maths.Distribution(**d) if d else None

    docs = data["documents"]
    return maths.EvaluationReport(
        fields={name: metrics(m) for name, m in data["fields"].items()},
        overall=metrics(data["overall"]),
        documents=maths.DocumentMetrics(
            n_documents=docs["n_documents"],
            failures=docs["failures"],
            tokens=dist(docs["tokens"]),
            cost_usd=dist(docs["cost_usd"]),
            latency_ms=dist(docs["latency_ms"]),
        ),
        n_bins=data["n_bins"],
    )


def evaluation_compare(
    baseline: Evaluation, candidate: Evaluation, *, margin: float | None = None
) -> maths.Comparison:
    """Compare two finished evaluations field by field (accuracy), regressions beyond the type's margin."""
    for e in (baseline, candidate):
        if e.status != Evaluation.Status.DONE or not e.report:
            raise ReviewAppError(f"evaluation {e.pk} has no report ({e.status})", code="not_done")
    if margin is None:
        margin = baseline.document_type.promotion_margin
    return maths.compare(report_from_dict(baseline.report), report_from_dict(candidate.report), margin=margin)


METRIC_ROWS = [
    ("n", "gold items"),
    ("accuracy", "accuracy"),
    ("coverage", "coverage"),
    ("ece", "ECE"),
    ("brier", "Brier"),
    ("review_rate", "review rate"),
    ("auto_accept_error_rate", "auto-accept error rate"),
]


def ordered_fields(report: Mapping[str, Any]) -> dict[str, Any]:
    """Return a stored report's per-field metrics in schema order (jsonb sorts keys its own way)."""
    fields = report.get("fields", {})
    order = report.get("meta", {}).get("field_order") or list(fields)
    return {name: fields[name] for name in [*order, *sorted(set(fields) - set(order))] if name in fields}


def report_table(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return one row per field (then overall) with the headline metrics of a stored report."""
    rows = []
    entries = [*ordered_fields(report).items(), (maths.OVERALL, report.get("overall"))]
    for name, m in entries:
        if not m:
            continue
        rows.append(
            {
                "field": "overall" if name == maths.OVERALL else name,
                "n": m["n"],
                "accuracy": m["accuracy"],
                "coverage": m["coverage"],
                "ece": m["calibration"]["ece"],
                "brier": m["calibration"]["brier"],
                "review_rate": m["review_rate"],
                "auto_accept_error_rate": m["auto_accept_error_rate"],
                "threshold": m["threshold"],
                "failed": m["failed"],
            }
        )
    return rows


def comparison_table(baseline: Evaluation, candidate: Evaluation) -> dict[str, Any]:
    """Return the side-by-side view of two evaluations: per field, each metric for both, and the gate."""
    comparison = evaluation_compare(baseline, candidate)
    a = {r["field"]: r for r in report_table(baseline.report)}
    b = {r["field"]: r for r in report_table(candidate.report)}
    rows = []
    for name in [*a, *(k for k in b if k not in a)]:
        key = maths.OVERALL if name == "overall" else name
        delta = comparison.fields.get(key)
        rows.append(
            {
                "field": name,
                "baseline": a.get(name),
                "candidate": b.get(name),
                "delta": delta.delta if delta else None,
                "regression": bool(delta and delta.regression),
            }
        )
    same_gold = baseline.report.get("meta", {}).get("gold_documents") == candidate.report.get("meta", {}).get(
        "gold_documents"
    )
    return {"rows": rows, "comparison": comparison.to_dict(), "same_gold": same_gold}


# --- thresholds ----------------------------------------------------------------------------------------------
def threshold_points(document_type: DocumentType) -> dict[str, list[tuple[float, bool]]]:
    """Return per field the gold (confidence of the original run, correct per the human) pairs."""
    specs = _specs(document_type)
    return maths.field_points((gold_observation(fv) for fv in gold_set(document_type)), specs, values_equal)


@dataclass
class CurveChart:
    """An SVG-ready threshold curve: review rate (x) against auto-accept error rate (y)."""

    width: int
    height: int
    y_max: float
    points: list[dict[str, Any]]
    polyline: str
    current: dict[str, Any] | None
    target_y: float | None
    y_ticks: list[dict[str, Any]] = field(default_factory=list)
    pad: int = 36

    @property
    def right(self) -> int:
        return self.width - self.pad

    @property
    def bottom(self) -> int:
        return self.height - self.pad


CHART_W, CHART_H, PAD = 320, 180, 36


def curve_chart(
    curve: Sequence[maths.CurvePoint], *, current: float, target: float | None = None
) -> CurveChart:
    """Lay the curve out in SVG coordinates; points accepting nothing (no error rate) are left out."""
    plotted = [p for p in curve if p.auto_accept_error_rate is not None]
    top = max([p.auto_accept_error_rate or 0.0 for p in plotted] + [target or 0.0, 0.01])
    y_max = min(1.0, top * 1.1)
    inner_w, inner_h = CHART_W - 2 * PAD, CHART_H - 2 * PAD

    def xy(review_rate: float, error: float) -> tuple[float, float]:
        return (
            round(PAD + review_rate * inner_w, 1),
            round(PAD + inner_h - min(error, y_max) / y_max * inner_h, 1),
        )

    points = []
    for p in plotted:
        x, y = xy(p.review_rate, p.auto_accept_error_rate or 0.0)
        points.append({"x": x, "y": y, "point": p})
    # The current threshold sits on the last curve point at or below it (gating is confidence >= t).
    at_current = [p for p in plotted if p.threshold <= current]
    cur = None
    if at_current:
        p = at_current[-1]
        x, y = xy(p.review_rate, p.auto_accept_error_rate or 0.0)
        cur = {"x": x, "y": y, "point": p}
    target_y = xy(0, target)[1] if target is not None else None
    ticks = [{"y": xy(0, v)[1], "label": f"{v:.1%}"} for v in (0.0, y_max / 2, y_max)]
    return CurveChart(
        width=CHART_W,
        height=CHART_H,
        y_max=y_max,
        points=points,
        polyline=" ".join(f"{p['x']},{p['y']}" for p in points),
        current=cur,
        target_y=target_y,
        y_ticks=ticks,
    )


def threshold_overview(
    document_type: DocumentType,
    *,
    target_error: float | None = None,
    confidence_level: float = 0.95,
    min_items: int = 30,
) -> list[dict[str, Any]]:
    """Return per field its gold count, curve chart and, given a target, the recommended threshold."""
    points = threshold_points(document_type)
    out = []
    for spec in document_type.fields.order_by("position", "id"):
        pts = points.get(spec.name, [])
        rec = None
        if target_error is not None:
            rec = maths.recommend_threshold(
                pts,
                target_error=target_error,
                confidence_level=confidence_level,
                min_items=min_items,
                current=spec.threshold,
            )
        out.append(
            {
                "spec": spec,
                "n_gold": len(pts),
                "errors": sum(not ok for _, ok in pts),
                "chart": curve_chart(maths.threshold_curve(pts), current=spec.threshold, target=target_error),
                "recommendation": rec,
                "changes": rec is not None and rec.sufficient and rec.threshold != spec.threshold,
            }
        )
    return out


def threshold_apply(
    *,
    field_spec: FieldSpec,
    user: Any,
    target_error: float,
    confidence_level: float = 0.95,
    min_items: int = 30,
) -> ThresholdChange:
    """Recompute the recommendation from gold now and apply it, audited in ThresholdChange.

    The threshold is recomputed rather than taken from the form, so what is applied is what the gold
    supports at this moment; the evidence stored is that recommendation. Raise ThresholdNotApplied
    when there are too few gold items (the threshold stays).
    """
    pts = threshold_points(field_spec.document_type).get(field_spec.name, [])
    with transaction.atomic():
        # Lock the spec: two admins applying at once must each record the from-value they replaced.
        spec = FieldSpec.objects.select_for_update().get(pk=field_spec.pk)
        rec = maths.recommend_threshold(
            pts,
            target_error=target_error,
            confidence_level=confidence_level,
            min_items=min_items,
            current=spec.threshold,
        )
        if not rec.sufficient:
            raise ThresholdNotApplied(rec.message, code="insufficient_gold")
        return threshold_set(spec=spec, to_value=rec.threshold, user=user, evidence=rec.to_dict())


def threshold_record_manual(*, field_spec_id: int, from_value: float, to_value: float, user: Any) -> None:
    """Audit a threshold typed in by hand (the type's field inline): no gold evidence, but who and when."""
    if from_value != to_value:
        ThresholdChange.objects.create(
            field_spec_id=field_spec_id,
            changed_by=user,
            from_value=from_value,
            to_value=to_value,
            evidence={"source": "manual edit in the admin"},
        )


def threshold_set(
    *, spec: FieldSpec, to_value: float, user: Any, evidence: dict[str, Any]
) -> ThresholdChange:
    """Set a field's threshold and audit it. Call inside a transaction holding the spec's row lock."""
    change = ThresholdChange.objects.create(
        field_spec=spec, changed_by=user, from_value=spec.threshold, to_value=to_value, evidence=evidence
    )
    FieldSpec.objects.filter(pk=spec.pk).update(threshold=to_value)
    spec.threshold = to_value
    return change


# --- A/B arms ------------------------------------------------------------------------------------------------
def ab_comparison(document_type: DocumentType, *, since: datetime | None = None) -> list[dict[str, Any]]:
    """Return both A/B arms (per arm and prompt version) of production runs on the same metrics.

    Accuracy and calibration come from the reviewed (gold) fields of each arm's runs; review rate,
    correction rate, failures and cost from all of them. Gold only holds what was reviewed, so
    accuracy here is that of reviewed fields (low confidence plus audit samples), not of all fields.
    """
    specs = _specs(document_type)
    runs = ExtractionRun.objects.filter(
        document__document_type=document_type,
        evaluation__isnull=True,
        status__in=[ExtractionRun.Status.SUCCEEDED, ExtractionRun.Status.FAILED],
    ).select_related("prompt_version")
    if since is not None:
        runs = runs.filter(started_at__gte=since)
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    run_group: dict[int, tuple[str, int]] = {}
    for run in runs:
        key = (run.arm, run.prompt_version_id)
        g = groups.setdefault(
            key,
            {"arm": run.arm, "prompt_version": run.prompt_version.label, "stats": [], "docs": set()},
        )
        g["docs"].add(run.document_id)
        g["stats"].append(
            maths.DocStat(
                document_id=run.pk,
                tokens=run.prompt_tokens + run.completion_tokens,
                cost_usd=float(run.cost_usd),
                latency_ms=run.duration_ms,
                failed=run.status == ExtractionRun.Status.FAILED,
            )
        )
        run_group[run.pk] = key
    obs: dict[tuple[str, int], list[maths.Observation]] = defaultdict(list)
    counts: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    fields = FieldValue.objects.filter(run_id__in=list(run_group)).select_related("field_spec")
    for fv in fields:
        key = run_group[fv.run_id]
        c = counts[key]
        c["fields"] += 1
        if fv.status != FieldValue.Status.AUTO_ACCEPTED and not fv.audit_sample:
            c["reviewed"] += 1
        if fv.status in DECIDED:
            c["decided"] += 1
            c["corrected"] += fv.status != FieldValue.Status.ACCEPTED
            if not fv.gold_excluded:
                obs[key].append(gold_observation(fv))
    out = []
    for key, g in sorted(groups.items(), key=lambda kv: (kv[0][0] != "active", kv[0])):
        report = maths.evaluate(obs[key], specs, values_equal, doc_stats=g["stats"])
        c = counts[key]
        out.append(
            {
                "arm": g["arm"],
                "prompt_version": g["prompt_version"],
                "documents": len(g["docs"]),
                "runs": len(g["stats"]),
                "failures": report.documents.failures,
                "fields": c["fields"],
                "review_rate": c["reviewed"] / c["fields"] if c["fields"] else None,
                "correction_rate": c["corrected"] / c["decided"] if c["decided"] else None,
                "gold": report.overall.n,
                "accuracy": report.overall.accuracy,
                "ece": report.overall.calibration.ece,
                "tokens": report.documents.tokens.mean if report.documents.tokens else None,
                "cost_usd": report.documents.cost_usd.mean if report.documents.cost_usd else None,
                "latency_ms": report.documents.latency_ms.mean if report.documents.latency_ms else None,
                "per_field": report_table(report.to_dict()),
            }
        )
    return out


# --- drift ---------------------------------------------------------------------------------------------------
def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    s = sorted(xs)

    def q(p: float) -> float:  # linear interpolation, as extraction.evaluation's percentiles
        h = (len(s) - 1) * p
        lo = math.floor(h)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (h - lo) * (s[hi] - s[lo])

    return q(0.25), q(0.5), q(0.75)


def _period_start(d: date, period: str) -> date:
    return d - timedelta(days=d.weekday()) if period == "week" else d


def drift_series(
    document_type: DocumentType, *, period: str = "day", periods: int = 28, now: datetime | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Return per field, per day or ISO week (oldest first), confidence quartiles, review and correction rates.

    Production fields only (evaluation runs are left out). Review rate counts what gating sent to review
    (audit samples are not); correction rate is the share of decided fields corrected or rejected.
    """
    if period not in ("day", "week"):
        raise ValueError("period is day or week")
    now = now or timezone.now()
    today = timezone.localdate(now)
    start = _period_start(today, period) - timedelta(days=(periods - 1) * (7 if period == "week" else 1))
    rows = (
        FieldValue.objects.filter(
            field_spec__document_type=document_type,
            run__evaluation__isnull=True,
            # a range on the column itself can use an index; __date__gte would wrap every row in a cast
            created_at__gte=datetime.combine(
                start, datetime.min.time(), tzinfo=timezone.get_current_timezone()
            ),
        )
        .order_by()  # FieldValue's default ordering would sort every row for nothing
        .annotate(day=TruncDate("created_at"))
        .values_list("field_spec__name", "day", "confidence", "status", "audit_sample")
    )
    buckets: dict[tuple[str, date], dict[str, Any]] = {}
    for name, day, conf, status, audit in rows.iterator():
        b = buckets.setdefault(
            (name, _period_start(day, period)), {"conf": [], "reviewed": 0, "decided": 0, "corrected": 0}
        )
        b["conf"].append(conf)
        b["reviewed"] += status != FieldValue.Status.AUTO_ACCEPTED and not audit
        if status in DECIDED:
            b["decided"] += 1
            b["corrected"] += status != FieldValue.Status.ACCEPTED
    out: dict[str, list[dict[str, Any]]] = {
        f: [] for f in document_type.fields.order_by("position", "id").values_list("name", flat=True)
    }
    for (name, start_day), b in sorted(buckets.items(), key=lambda kv: kv[0][1]):
        n = len(b["conf"])
        q1, median, q3 = _quartiles(b["conf"])
        out.setdefault(name, []).append(
            {
                "period": start_day,
                "n": n,
                "mean": statistics.fmean(b["conf"]),
                "q1": q1,
                "median": median,
                "q3": q3,
                "review_rate": b["reviewed"] / n,
                "decided": b["decided"],
                "correction_rate": b["corrected"] / b["decided"] if b["decided"] else None,
            }
        )
    return out


@dataclass(frozen=True)
class DriftAlert:
    document_type: str
    field: str
    period: date
    correction_rate: float
    low: float
    high: float
    decided: int

    @property
    def message(self) -> str:
        return (
            f"{self.document_type}.{self.field}: correction rate {self.correction_rate:.1%} on "
            f"{self.period:%Y-%m-%d} ({self.decided} decisions) is outside its usual band "
            f"{max(self.low, 0):.1%} to {min(self.high, 1):.1%}"
        )


def drift_alerts(
    document_type: DocumentType,
    *,
    period: str = "day",
    periods: int = 28,
    min_decided: int = 1,
    now: datetime | None = None,
) -> list[DriftAlert]:
    """Return a DriftAlert per field whose latest correction rate leaves mean ± k·sd of the earlier ones.

    k is the type's drift_band; the band itself is extraction.evaluation.drift_band (no band, so no
    alert, with fewer than 4 earlier periods). Periods with fewer than `min_decided` decisions are
    skipped: one correction out of one decision is noise, not drift.
    """
    alerts = []
    for name, series in drift_series(document_type, period=period, periods=periods, now=now).items():
        rated = [p for p in series if p["correction_rate"] is not None and p["decided"] >= min_decided]
        if len(rated) < 2:
            continue
        current = rated[-1]
        alert, low, high = maths.drift_band(
            [p["correction_rate"] for p in rated[:-1]], current["correction_rate"], k=document_type.drift_band
        )
        if alert:
            alerts.append(
                DriftAlert(
                    document_type=document_type.slug,
                    field=name,
                    period=current["period"],
                    correction_rate=current["correction_rate"],
                    low=low,
                    high=high,
                    decided=current["decided"],
                )
            )
    return alerts


def drift_alerts_all(*, cache_seconds: int = 300) -> list[DriftAlert]:
    """Return the drift alerts of every document type, cached: the queue page shows them on each load."""
    key = "reviewapp:drift-alerts"
    alerts = cache.get(key)
    if alerts is None:
        alerts = [a for t in DocumentType.objects.all() for a in drift_alerts(t)]
        cache.set(key, alerts, cache_seconds)
    return alerts


# --- promotion ------------------------------------------------------------------------------------------------
def latest_evaluation(prompt_version: PromptVersion) -> Evaluation | None:
    """Return the newest finished evaluation of a prompt version with the model it will run with.

    An evaluation with another model alias does not speak for the version as it would run in production.
    """
    return (
        Evaluation.objects.filter(prompt_version=prompt_version, status=Evaluation.Status.DONE)
        .filter(Q(model_alias="") | Q(model_alias=prompt_version.model_alias))
        .select_related("document_type")
        .order_by("-created_at", "-id")
        .first()
    )


@dataclass
class Gate:
    """The promotion gate's verdict for one prompt version."""

    passes: bool
    message: str
    evaluation: Evaluation | None
    baseline: Evaluation | None
    comparison: dict[str, Any]


def promotion_gate(*, document_type: DocumentType, prompt_version: PromptVersion) -> Gate:
    """Decide whether `prompt_version` may become active: its evaluation must not regress.

    Compare its latest evaluation with the current active version's (compare(), margin =
    promotion_margin). No evaluation of the candidate blocks; no active version passes; an active
    version without an evaluation blocks (there is nothing to show the candidate is no worse).
    """
    current = document_type.active_prompt
    candidate = latest_evaluation(prompt_version)
    if candidate is None:
        return Gate(False, f"{prompt_version.label} has no finished evaluation on gold", None, None, {})
    if current is None:
        return Gate(True, "no active version to compare with", candidate, None, {})
    if current.pk == prompt_version.pk:
        return Gate(False, f"{prompt_version.label} is already active", candidate, None, {})
    baseline = latest_evaluation(current)
    if baseline is None:
        message = f"the active version {current.label} has no finished evaluation to compare with"
        return Gate(False, message, candidate, None, {})
    comparison = evaluation_compare(baseline, candidate, margin=document_type.promotion_margin)
    return Gate(comparison.passes, comparison.summary, candidate, baseline, comparison.to_dict())


def prompt_promote(
    *, document_type: DocumentType, prompt_version: PromptVersion, user: Any, override_reason: str = ""
) -> PromotionEvent:
    """Make `prompt_version` active if the gate passes, or with a written override reason; audit it.

    Raise PromotionBlocked when the gate fails and no reason is given. If the version was the A/B
    candidate, the candidate slot is cleared: both arms would otherwise run the same prompt.
    """
    if prompt_version.document_type_id != document_type.pk:
        raise NotFound("No such prompt version for this document type.")
    reason = override_reason.strip()
    with transaction.atomic():
        # Lock the type: two admins promoting at once must not both record the same `previous`.
        locked = DocumentType.objects.select_for_update().get(pk=document_type.pk)
        if locked.active_prompt_id == prompt_version.pk:
            raise ReviewAppError(f"{prompt_version.label} is already active", code="already_active")
        gate = promotion_gate(document_type=locked, prompt_version=prompt_version)
        if not gate.passes and not reason:
            raise PromotionBlocked(gate.message, details={"comparison": gate.comparison})
        event = PromotionEvent.objects.create(
            document_type=locked,
            prompt_version=prompt_version,
            previous_id=locked.active_prompt_id,
            evaluation=gate.evaluation,
            baseline=gate.baseline,
            comparison={**gate.comparison, "gate": gate.message, "passes": gate.passes},
            overridden=not gate.passes,
            reason=reason,
            actor=user,
        )
        _activate(locked, prompt_version)
    document_type.refresh_from_db()
    return event


def _activate(locked: DocumentType, prompt_version: PromptVersion) -> None:
    updates: dict[str, Any] = {"active_prompt": prompt_version}
    if locked.candidate_prompt_id == prompt_version.pk:
        updates.update(candidate_prompt=None, candidate_share=0.0)
    DocumentType.objects.filter(pk=locked.pk).update(**updates)


def prompt_rollback(*, document_type: DocumentType, user: Any, reason: str = "") -> PromotionEvent:
    """Make the version that was active before the latest promotion active again; audit it.

    A rollback after a rollback goes back again (it undoes the undo), like an editor's undo of the last
    change, not a walk down the history.
    """
    with transaction.atomic():
        locked = DocumentType.objects.select_for_update().get(pk=document_type.pk)
        last = locked.promotions.order_by("-created_at", "-id").first()
        if last is None or last.previous_id is None:
            raise ReviewAppError("There is no previous active version to roll back to.", code="no_previous")
        if last.prompt_version_id != locked.active_prompt_id:
            # The active version changed outside the audited path: rolling back would be a guess.
            raise ReviewAppError(
                "The active version is not the one the last promotion made active.", code="out_of_sync"
            )
        target = last.previous
        event = PromotionEvent.objects.create(
            document_type=locked,
            prompt_version=target,
            previous_id=locked.active_prompt_id,
            is_rollback=True,
            reason=reason.strip() or "rollback",
            actor=user,
        )
        _activate(locked, target)
    document_type.refresh_from_db()
    return event
