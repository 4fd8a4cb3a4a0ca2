"""Stored evaluation reports: rebuilt, compared, and laid out as tables for the admin and the command."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extraction import evaluation as maths

from ..errors import ReviewAppError
from ..models import Evaluation


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
