"""A/B arms: production runs of the active and candidate prompts compared on the same metrics."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from extraction import evaluation as maths
from extraction.normalize import values_equal

from ..models import DocumentType, ExtractionRun, FieldValue
from .gold import DECIDED, _specs, gold_observation
from .reports import report_table


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
