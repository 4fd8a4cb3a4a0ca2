"""Drift: per-period confidence and correction rates of production fields, and the alerts on them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from celery import shared_task
from django.core.cache import cache
from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from extraction import evaluation as maths

from ..models import DocumentType, FieldValue
from .gold import DECIDED


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


def _production_fields(document_type: DocumentType, period: str, periods: int, now: datetime | None) -> Any:
    """The production (not evaluation) fields of the type created in the last `periods` days or weeks."""
    if period not in ("day", "week"):
        raise ValueError("period is day or week")
    today = timezone.localdate(now or timezone.now())
    start = _period_start(today, period) - timedelta(days=(periods - 1) * (7 if period == "week" else 1))
    return FieldValue.objects.filter(
        field_spec__document_type=document_type,
        run__evaluation__isnull=True,
        # a range on the column itself can use an index; __date__gte would wrap every row in a cast
        created_at__gte=datetime.combine(start, datetime.min.time(), tzinfo=timezone.get_current_timezone()),
    ).order_by()  # FieldValue's default ordering would sort every row for nothing


def _rate(corrected: int, decided: int) -> float | None:
    return corrected / decided if decided else None


def _per_field(
    document_type: DocumentType,
    buckets: dict[tuple[str, date], Any],
    point: Callable[[date, Any], dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """Lay (field, period) buckets out per field, oldest period first; fields with no data get []."""
    out: dict[str, list[dict[str, Any]]] = {
        f: [] for f in document_type.fields.order_by("position", "id").values_list("name", flat=True)
    }
    for (name, start_day), b in sorted(buckets.items(), key=lambda kv: kv[0][1]):
        out.setdefault(name, []).append(point(start_day, b))
    return out


def correction_rates(
    document_type: DocumentType, *, period: str = "day", periods: int = 28, now: datetime | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Return per field, per period (oldest first), the decided fields and the correction rate.

    What the drift alerts need, counted in the database: one row per field and day comes back, where
    drift_series streams every field to Python for its quartiles (2 s at 1 M fields, paid by the queue
    request that refreshed the banner).
    """
    decided = Q(status__in=DECIDED)
    counts = (
        _production_fields(document_type, period, periods, now)
        .annotate(day=TruncDate("created_at"))
        .values("field_spec__name", "day")
        .annotate(
            decided=Count("pk", filter=decided),
            corrected=Count("pk", filter=decided & ~Q(status=FieldValue.Status.ACCEPTED)),
        )
        .values_list("field_spec__name", "day", "decided", "corrected")
    )
    buckets: dict[tuple[str, date], list[int]] = {}
    for name, day, n_decided, n_corrected in counts:
        b = buckets.setdefault((name, _period_start(day, period)), [0, 0])
        b[0] += n_decided
        b[1] += n_corrected
    return _per_field(
        document_type,
        buckets,
        lambda start_day, b: {"period": start_day, "decided": b[0], "correction_rate": _rate(b[1], b[0])},
    )


def drift_series(
    document_type: DocumentType, *, period: str = "day", periods: int = 28, now: datetime | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Return per field, per day or ISO week (oldest first), confidence quartiles, review and correction rates.

    Production fields only (evaluation runs are left out). Review rate counts what gating sent to review
    (audit samples are not); correction rate is the share of decided fields corrected or rejected.
    """
    rows = (
        _production_fields(document_type, period, periods, now)
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

    def point(start_day: date, b: dict[str, Any]) -> dict[str, Any]:
        q1, median, q3 = _quartiles(b["conf"])
        return {
            "period": start_day,
            "n": len(b["conf"]),
            "mean": statistics.fmean(b["conf"]),
            "q1": q1,
            "median": median,
            "q3": q3,
            "review_rate": b["reviewed"] / len(b["conf"]),
            "decided": b["decided"],
            "correction_rate": _rate(b["corrected"], b["decided"]),
        }

    return _per_field(document_type, buckets, point)


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
    for name, series in correction_rates(document_type, period=period, periods=periods, now=now).items():
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


DRIFT_CACHE_KEY = "reviewapp:drift-alerts"
DRIFT_CACHE_SECONDS = 600
DRIFT_REFRESH_SECONDS = 240.0  # the beat schedule: well inside the cache period, so requests never miss


def drift_alerts_all(*, refresh: bool = False) -> list[DriftAlert]:
    """Return the drift alerts of every document type, cached: the queue page shows them on each load.

    Celery beat refreshes the cache every few minutes (refresh_drift_alerts), so no reviewer's request
    pays for the computation (about 1.5 s at 1 M fields); a request computes it only on a cold cache,
    e.g. in the embedded mode, which runs no beat.
    """
    alerts = None if refresh else cache.get(DRIFT_CACHE_KEY)
    if alerts is None:
        alerts = [a for t in DocumentType.objects.all() for a in drift_alerts(t)]
        cache.set(DRIFT_CACHE_KEY, alerts, DRIFT_CACHE_SECONDS)
    return alerts


@shared_task(name="reviewapp.evaluation.refresh_drift_alerts")
def refresh_drift_alerts() -> int:
    return len(drift_alerts_all(refresh=True))
