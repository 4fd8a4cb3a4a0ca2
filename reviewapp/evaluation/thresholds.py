"""Threshold tuning from gold: curves, the Clopper-Pearson recommendation, audited changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from extraction import evaluation as maths
from extraction.normalize import values_equal

from ..errors import ReviewAppError
from ..models import DocumentType, FieldSpec, ThresholdChange
from .gold import _specs, gold_observation, gold_set


class ThresholdNotApplied(ReviewAppError):
    code = "threshold_not_applied"
    status = 409


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
    policy = {"target_error": target_error, "confidence_level": confidence_level, "min_items": min_items}
    out = []
    for spec in document_type.fields.order_by("position", "id"):
        pts = points.get(spec.name, [])
        rec = None
        if target_error is not None:
            rec = maths.recommend_threshold(pts, current=spec.threshold, **policy)
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
        policy = {"target_error": target_error, "confidence_level": confidence_level, "min_items": min_items}
        rec = maths.recommend_threshold(pts, current=spec.threshold, **policy)
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
    DocumentType.config_changed(spec.document_type_id)
    spec.threshold = to_value
    return change
