"""Measure extraction quality against human-reviewed gold data, and tune the review thresholds.

Gold data is what reviewers decided: for every reviewed field the value they accepted or typed. Each
(document, field) pair becomes an Observation holding the model's prediction and confidence next to
that gold value. From observations this module computes accuracy, coverage and calibration per field,
what a set of thresholds would send to review and how often what it lets through is wrong, the cost of
a run per document, a threshold recommendation with a statistical guarantee, the promotion gate
between two prompt versions or models, and a drift band for metrics tracked over time.

Plain Python on purpose (no NumPy/SciPy): the beta function needed for exact binomial bounds is
computed here from math.lgamma. Values are compared through an `equal` callable (in the app,
extraction.normalize.values_equal) so this module does not depend on how values are normalised.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from extraction.schemas import FieldSpec

Equal = Callable[[FieldSpec, Any, Any], bool]

OVERALL = "__overall__"
# A threshold above every possible confidence (confidences live in [0, 1]): review everything.
REVIEW_ALL = 1.0001


def _check_confidence(value: Any, what: str) -> None:
    # float() rather than an isinstance check so Decimal values read from a database pass too.
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = math.nan
    if not (math.isfinite(f) and 0.0 <= f <= 1.0):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Observation:
    """One field of one document: what the model predicted, how sure it was, and the gold value.

    `failed` means the extraction of the whole document failed: the field counts as wrong, as not
    covered, and as sent to review whatever `confidence` says (there is nothing to auto-accept).
    """

    document_id: str | int
    field: str
    predicted: Any
    confidence: float
    gold: Any
    failed: bool = False

    def __post_init__(self) -> None:
        _check_confidence(self.confidence, "confidence")

    def to_dict(self) -> dict[str, Any]:
        """Return the observation as a JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class DocStat:
    """What extracting one document cost; None where it was not measured."""

    document_id: str | int
    tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the stat as a JSON-friendly dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class CalibrationBin:
    """One bar of a reliability diagram: confidences in [lower, upper) (the last bin includes 1.0)."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class Calibration:
    """Reliability diagram data plus the two usual summary scores (None without observations)."""

    bins: tuple[CalibrationBin, ...]
    ece: float | None
    brier: float | None


@dataclass(frozen=True)
class FieldMetrics:
    """Quality of one field, or of all fields pooled (field == OVERALL, threshold None)."""

    field: str
    n: int
    correct: int
    failed: int
    accuracy: float | None
    coverage: float | None
    calibration: Calibration
    threshold: float | None
    review_rate: float | None
    auto_accepted: int
    auto_accept_errors: int
    auto_accept_error_rate: float | None

    def to_dict(self) -> dict[str, Any]:
        """Return the metrics as a JSON-friendly dict."""
        return asdict(self)


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of a per-document quantity."""

    n: int
    mean: float
    p50: float
    p95: float


@dataclass(frozen=True)
class DocumentMetrics:
    """Per-document run statistics; a Distribution is None when nothing was measured."""

    n_documents: int
    failures: int
    tokens: Distribution | None
    cost_usd: Distribution | None
    latency_ms: Distribution | None


@dataclass(frozen=True)
class EvaluationReport:
    """Per-field metrics (in schema order), the pooled metrics, and per-document run statistics."""

    fields: Mapping[str, FieldMetrics]
    overall: FieldMetrics
    documents: DocumentMetrics
    n_bins: int

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-friendly dict."""
        return {
            "fields": {name: m.to_dict() for name, m in self.fields.items()},
            "overall": self.overall.to_dict(),
            "documents": asdict(self.documents),
            "n_bins": self.n_bins,
        }


# --------------------------------------------------------------------------------------------------
# Evaluation


def is_correct(observation: Observation, spec: FieldSpec, equal: Equal) -> bool:
    """Return whether the prediction matches the gold value.

    A failed extraction is wrong; two missing values (None and None) agree; anything else is up to
    `equal`, which knows how the field type normalises (so it may, say, treat "" as missing).
    """
    if observation.failed:
        return False
    if observation.predicted is None and observation.gold is None:
        return True
    return bool(equal(spec, observation.predicted, observation.gold))


def _spec_for(observation: Observation, specs: Mapping[str, FieldSpec]) -> FieldSpec:
    spec = specs.get(observation.field)
    if spec is None:
        raise ValueError(f"observation for unknown field {observation.field!r} (not in specs)")
    return spec


def field_points(
    observations: Iterable[Observation], specs: Mapping[str, FieldSpec], equal: Equal
) -> dict[str, list[tuple[float, bool]]]:
    """Return (confidence, correct) pairs per field, the input of threshold_curve/recommend_threshold.

    A failed extraction contributes confidence 0.0: it is always routed to review.
    """
    out: dict[str, list[tuple[float, bool]]] = {}
    for obs in observations:
        spec = _spec_for(obs, specs)
        conf = 0.0 if obs.failed else float(obs.confidence)
        out.setdefault(obs.field, []).append((conf, is_correct(obs, spec, equal)))
    return out


@dataclass(frozen=True)
class _Row:
    confidence: float  # 0.0 for failed extractions
    correct: bool
    covered: bool
    failed: bool
    threshold: float


def _bin_index(confidence: float, n_bins: int) -> int:
    # The epsilon keeps a confidence on a bin edge (0.57 * 100 == 56.999...) in the bin it starts.
    return min(math.floor(confidence * n_bins + 1e-9), n_bins - 1)


def _calibration(rows: Sequence[_Row], n_bins: int) -> Calibration:
    groups: list[list[_Row]] = [[] for _ in range(n_bins)]
    for row in rows:
        groups[_bin_index(row.confidence, n_bins)].append(row)
    bins = []
    ece = 0.0
    for i, group in enumerate(groups):
        if group:
            mean_conf = statistics.fmean(r.confidence for r in group)
            acc = sum(r.correct for r in group) / len(group)
            # Expected calibration error (Naeini et al. 2015; Guo et al. 2017): the bin-size-weighted
            # mean of |accuracy - mean confidence| over equal-width bins.
            ece += len(group) / len(rows) * abs(acc - mean_conf)
        else:
            mean_conf = acc = None
        bins.append(CalibrationBin(i / n_bins, (i + 1) / n_bins, len(group), mean_conf, acc))
    if not rows:
        return Calibration(tuple(bins), None, None)
    # Brier score (Brier 1950): mean squared gap between the confidence and the 0/1 outcome.
    brier = statistics.fmean((r.confidence - float(r.correct)) ** 2 for r in rows)
    return Calibration(tuple(bins), ece, brier)


def _metrics(name: str, rows: Sequence[_Row], threshold: float | None, n_bins: int) -> FieldMetrics:
    n = len(rows)
    correct = sum(r.correct for r in rows)
    # Gating sends confidence < threshold to review; the rest is auto-accepted.
    accepted = [r for r in rows if not r.failed and r.confidence >= r.threshold]
    accepted_errors = sum(not r.correct for r in accepted)
    return FieldMetrics(
        field=name,
        n=n,
        correct=correct,
        failed=sum(r.failed for r in rows),
        accuracy=correct / n if n else None,
        coverage=sum(r.covered for r in rows) / n if n else None,
        calibration=_calibration(rows, n_bins),
        threshold=threshold,
        review_rate=(n - len(accepted)) / n if n else None,
        auto_accepted=len(accepted),
        auto_accept_errors=accepted_errors,
        auto_accept_error_rate=accepted_errors / len(accepted) if accepted else None,
    )


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (Hyndman & Fan 1996 type 7, NumPy's default), which
    # unlike statistics.quantiles also works for a single value.
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def _distribution(values: Iterable[float | None]) -> Distribution | None:
    xs = sorted(float(v) for v in values if v is not None)
    if not xs:
        return None
    return Distribution(len(xs), statistics.fmean(xs), _percentile(xs, 0.5), _percentile(xs, 0.95))


def evaluate(
    observations: Iterable[Observation],
    specs: Mapping[str, FieldSpec],
    equal: Equal,
    *,
    thresholds: Mapping[str, float] | None = None,
    n_bins: int = 10,
    doc_stats: Sequence[DocStat] = (),
) -> EvaluationReport:
    """Score observations against their gold values, per field and pooled.

    Thresholds are each field's spec threshold unless `thresholds` overrides it (to preview a change).
    Only fields that have observations appear in the report, in the order of `specs`. `doc_stats`
    (one per document) feed the tokens/cost/latency distributions; a document counts as a failure if
    its DocStat or any of its observations says so.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    thresholds = thresholds or {}
    for name, t in thresholds.items():
        _check_confidence(t, f"threshold for {name!r}")
    rows: dict[str, list[_Row]] = {}
    failed_docs: set[str | int] = set()
    seen_docs: set[str | int] = set()
    for obs in observations:
        spec = _spec_for(obs, specs)
        seen_docs.add(obs.document_id)
        if obs.failed:
            failed_docs.add(obs.document_id)
        rows.setdefault(obs.field, []).append(
            _Row(
                confidence=0.0 if obs.failed else float(obs.confidence),
                correct=is_correct(obs, spec, equal),
                covered=not obs.failed and obs.predicted is not None,
                failed=obs.failed,
                threshold=float(thresholds.get(obs.field, spec.threshold)),
            )
        )
    fields = {
        name: _metrics(name, rows[name], float(thresholds.get(name, specs[name].threshold)), n_bins)
        for name in specs
        if name in rows
    }
    overall = _metrics(OVERALL, [r for name in fields for r in rows[name]], None, n_bins)

    stat_ids = [d.document_id for d in doc_stats]
    if len(set(stat_ids)) != len(stat_ids):
        raise ValueError("doc_stats must hold one DocStat per document")
    failed_docs.update(d.document_id for d in doc_stats if d.failed)
    documents = DocumentMetrics(
        n_documents=len(seen_docs | set(stat_ids)),
        failures=len(failed_docs),
        tokens=_distribution(d.tokens for d in doc_stats),
        cost_usd=_distribution(d.cost_usd for d in doc_stats),
        latency_ms=_distribution(d.latency_ms for d in doc_stats),
    )
    return EvaluationReport(fields=fields, overall=overall, documents=documents, n_bins=n_bins)


# --------------------------------------------------------------------------------------------------
# Threshold curve


@dataclass(frozen=True)
class CurvePoint:
    """What gating at `threshold` does to a set of gold items (confidence < threshold → review)."""

    threshold: float
    review_rate: float
    auto_accept_error_rate: float | None
    auto_accepted: int
    errors: int

    def to_dict(self) -> dict[str, Any]:
        """Return the point as a JSON-friendly dict."""
        return asdict(self)


def threshold_curve(points: Sequence[tuple[float, bool]]) -> list[CurvePoint]:
    """Return the review-rate / auto-accept-error trade-off at every threshold that changes it.

    `points` are (confidence, correct) pairs. Candidates are 0.0 (accept everything), each distinct
    confidence, and REVIEW_ALL (above any confidence), sorted ascending; `errors` counts the wrong
    items among the auto-accepted ones. One sort then one pass: O(n log n). Empty input gives [].
    """
    n = len(points)
    if n == 0:
        return []
    for conf, _ in points:
        _check_confidence(conf, "confidence")
    ordered = sorted((float(c), bool(ok)) for c, ok in points)
    total_errors = sum(not ok for _, ok in ordered)

    def point(threshold: float, below: int, below_errors: int) -> CurvePoint:
        accepted = n - below
        errors = total_errors - below_errors
        return CurvePoint(threshold, below / n, errors / accepted if accepted else None, accepted, errors)

    curve = [] if ordered[0][0] == 0.0 else [point(0.0, 0, 0)]
    below = below_errors = 0
    i = 0
    while i < n:
        conf = ordered[i][0]
        curve.append(point(conf, below, below_errors))
        while i < n and ordered[i][0] == conf:  # ties share one threshold
            below += 1
            below_errors += not ordered[i][1]
            i += 1
    curve.append(point(REVIEW_ALL, n, total_errors))
    return curve


# --------------------------------------------------------------------------------------------------
# Exact binomial bounds (Clopper-Pearson) from the regularized incomplete beta function


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    # Continued fraction for I_x(a, b), evaluated with the modified Lentz method (Numerical Recipes,
    # 3rd ed., §6.4 "betacf"). It converges in O(sqrt(max(a, b))) steps, hence the generous cap.
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """Return the regularized incomplete beta function I_x(a, b) (the Beta(a, b) CDF at x)."""
    if a <= 0 or b <= 0:
        raise ValueError("a and b must be positive")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast only for x < (a+1)/(a+b+2); use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) on the other side.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _binomial_tail_at_most(errors: int, n: int, p: float) -> float:
    # P(X <= k) for X ~ Binomial(n, p) equals 1 - I_p(k + 1, n - k).
    if errors >= n:
        return 1.0
    return 1.0 - regularized_beta(errors + 1, n - errors, p)


def _upper_bound_at_most(errors: int, n: int, bound: float, alpha: float) -> bool:
    # The Clopper-Pearson upper bound u solves P(X <= k | n, u) = alpha and that tail falls as p grows,
    # so u <= bound exactly when P(X <= k | n, bound) <= alpha: one beta evaluation, no inversion.
    return errors < n and _binomial_tail_at_most(errors, n, bound) <= alpha


def clopper_pearson_upper(errors: int, n: int, confidence_level: float = 0.95) -> float:
    """Return the exact one-sided upper confidence bound on a binomial rate (Clopper & Pearson 1934).

    It is the (confidence_level) quantile of Beta(errors + 1, n - errors), found by bisection on the
    regularized incomplete beta; 1.0 when every item is an error, and undefined (ValueError) for n = 0.
    """
    if n <= 0 or not 0 <= errors <= n:
        raise ValueError("need n > 0 and 0 <= errors <= n")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError("confidence_level must be in (0, 1)")
    if errors == n:
        return 1.0
    alpha = 1.0 - confidence_level
    lo, hi = errors / n, 1.0
    for _ in range(200):  # bisection down to float resolution
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if _binomial_tail_at_most(errors, n, mid) <= alpha:
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------------------------------
# Threshold recommendation


@dataclass(frozen=True)
class Recommendation:
    """A proposed review threshold for one field and the evidence behind it.

    The counts and rates describe the gold items at `threshold`: how many it auto-accepts, how many
    of those are wrong, the observed and upper-bound error rate among them (None if none), and the
    share it sends to review.
    """

    threshold: float
    current: float
    n_gold: int
    n_auto_accepted: int
    errors: int
    error_upper_bound: float | None
    point_error: float | None
    review_rate: float | None
    sufficient: bool
    message: str
    target_error: float
    confidence_level: float

    def to_dict(self) -> dict[str, Any]:
        """Return the recommendation as a JSON-friendly dict."""
        return asdict(self)


def recommend_threshold(
    points: Sequence[tuple[float, bool]],
    *,
    target_error: float,
    confidence_level: float = 0.95,
    min_items: int = 30,
    current: float,
) -> Recommendation:
    """Recommend the lowest threshold whose auto-accepted items are wrong at most `target_error`.

    `points` are a field's gold (confidence, correct) pairs. A candidate threshold t (each observed
    confidence) auto-accepts the items with confidence >= t; it qualifies when the one-sided
    Clopper-Pearson exact upper bound, at `confidence_level`, on the error rate among those items is
    <= target_error. The bound is the beta quantile, computed with a regularized incomplete beta built
    on math.lgamma (no Wilson approximation). The lowest qualifying t wins, as it reviews the least.

    The bound holds for one threshold fixed in advance; picking the lowest qualifying one among many
    is not corrected for multiplicity. When the error rate falls with confidence, the usual case, the
    realised coverage stays near nominal; if the error sits just above the target over a wide range
    of thresholds it drops below nominal (by simulation, about 0.87 at 0.95) though the excess error
    is then small.

    Fewer than `min_items` gold items keeps `current` (sufficient False). If no threshold qualifies,
    the answer is 1.0, the highest a FieldSpec allows, which reviews everything below confidence 1.0.
    """
    if not 0.0 < target_error < 1.0:
        raise ValueError("target_error must be in (0, 1)")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError("confidence_level must be in (0, 1)")
    _check_confidence(current, "current")
    current = float(current)
    alpha = 1.0 - confidence_level
    n = len(points)
    curve = threshold_curve(points)

    def at(threshold: float, sufficient: bool, message: str) -> Recommendation:
        accepted = [ok for conf, ok in points if conf >= threshold]
        errors = sum(not ok for ok in accepted)
        return Recommendation(
            threshold=threshold,
            current=current,
            n_gold=n,
            n_auto_accepted=len(accepted),
            errors=errors,
            error_upper_bound=clopper_pearson_upper(errors, len(accepted), confidence_level)
            if accepted
            else None,
            point_error=errors / len(accepted) if accepted else None,
            review_rate=(n - len(accepted)) / n if n else None,
            sufficient=sufficient,
            message=message,
            target_error=target_error,
            confidence_level=confidence_level,
        )

    if n < min_items:
        return at(current, False, f"only {n} gold items; need {min_items}; keeping threshold {current:g}")

    observed = {float(c) for c, _ in points}
    for p in curve:
        # Only observed confidences: recommending 0.0 would also auto-accept future items less
        # confident than any seen, and REVIEW_ALL is outside what a FieldSpec accepts.
        if p.threshold not in observed:
            continue
        if _upper_bound_at_most(p.errors, p.auto_accepted, target_error, alpha):
            rec = at(p.threshold, True, "")
            message = (
                f"threshold {rec.threshold:.4g}: {rec.errors} errors in {rec.n_auto_accepted} "
                f"auto-accepted gold items ({rec.point_error:.1%}); {confidence_level:.0%} upper bound "
                f"{rec.error_upper_bound:.2%} <= target {target_error:.1%}; reviews {rec.review_rate:.0%} "
                f"(current threshold {current:g})"
            )
            return replace(rec, message=message)

    # With zero errors the bound is 1 - alpha**(1/n), so certifying the target needs at least this many.
    needed = math.ceil(math.log(alpha) / math.log1p(-target_error))
    rec = at(1.0, True, "")
    message = (
        f"no threshold keeps the {confidence_level:.0%} upper bound on auto-accept error at or below "
        f"{target_error:.1%}; review everything (threshold 1.0). Certifying {target_error:.1%} needs at "
        f"least {needed} auto-accepted gold items even with no errors"
    )
    if rec.n_auto_accepted:  # gating reviews confidence < threshold, so 1.0 itself still passes
        message += f"; {rec.n_auto_accepted} gold items at confidence 1.0 would still be auto-accepted"
    return replace(rec, message=message)


# --------------------------------------------------------------------------------------------------
# Promotion gate


@dataclass(frozen=True)
class FieldDelta:
    """Accuracy of one field (or OVERALL) in the baseline and the candidate; delta = candidate - baseline."""

    field: str
    baseline_accuracy: float | None
    candidate_accuracy: float | None
    delta: float | None
    baseline_n: int
    candidate_n: int
    regression: bool


@dataclass(frozen=True)
class Comparison:
    """The promotion gate: passes when no field (nor OVERALL) lost more than `margin` accuracy and
    no field the baseline measured is missing from the candidate."""

    fields: Mapping[str, FieldDelta]
    regressions: list[str]
    missing: list[str]
    passes: bool
    margin: float
    summary: str

    def to_dict(self) -> dict[str, Any]:
        """Return the comparison as a JSON-friendly dict."""
        return {
            "fields": {name: asdict(d) for name, d in self.fields.items()},
            "regressions": list(self.regressions),
            "missing": list(self.missing),
            "passes": self.passes,
            "margin": self.margin,
            "summary": self.summary,
        }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def compare(baseline: EvaluationReport, candidate: EvaluationReport, *, margin: float = 0.02) -> Comparison:
    """Compare a candidate (prompt version or model) with the baseline, field by field and overall.

    A field regresses when its accuracy drops by more than `margin` (absolute, e.g. 0.02 = 2 points).
    Fields only the candidate has are reported but never block.
    """
    if margin < 0:
        raise ValueError("margin must be non-negative")
    base = {**baseline.fields, OVERALL: baseline.overall}
    cand = {**candidate.fields, OVERALL: candidate.overall}
    deltas: dict[str, FieldDelta] = {}
    regressions: list[str] = []
    missing: list[str] = []
    for name in [*base, *(k for k in cand if k not in base)]:
        b, c = base.get(name), cand.get(name)
        b_acc = b.accuracy if b else None
        c_acc = c.accuracy if c else None
        delta = c_acc - b_acc if b_acc is not None and c_acc is not None else None
        # The 1e-12 keeps a drop of exactly `margin` (0.90 -> 0.88) from failing on float rounding.
        regression = delta is not None and delta < -margin - 1e-12
        if regression:
            regressions.append(name)
        if b_acc is not None and c_acc is None:
            missing.append(name)
        deltas[name] = FieldDelta(name, b_acc, c_acc, delta, b.n if b else 0, c.n if c else 0, regression)

    passes = not regressions and not missing
    o = deltas[OVERALL]
    head = f"overall accuracy {_pct(o.baseline_accuracy)} -> {_pct(o.candidate_accuracy)}"
    if o.delta is not None:
        head += f" ({o.delta * 100:+.1f} pts)"
    if passes:
        summary = f"PASS: {head}; no field dropped more than {margin * 100:.1f} pts"
    else:
        problems = [
            f"{name} {_pct(deltas[name].baseline_accuracy)} -> {_pct(deltas[name].candidate_accuracy)}"
            for name in regressions
        ]
        problems += [f"{name} not evaluated" for name in missing]
        summary = f"FAIL: {head}; " + "; ".join(problems)
    return Comparison(deltas, regressions, missing, passes, margin, summary)


# --------------------------------------------------------------------------------------------------
# Drift


def drift_band(
    history: Sequence[float],
    current: float,
    *,
    k: float = 3.0,
    min_points: int = 4,
    rel_floor: float = 0.01,
    abs_floor: float = 1e-9,
) -> tuple[bool, float, float]:
    """Return (alert, low, high): whether `current` lies outside mean ± k·stdev of `history`.

    The stdev is the sample standard deviation (n - 1), floored at max(abs_floor, rel_floor·|mean|)
    so a flat history does not alarm on tiny noise (with the defaults a flat 0.95 gives a band of
    ±0.0285). With fewer than `min_points` values there is no band: (False, -inf, inf).
    """
    if k <= 0:
        raise ValueError("k must be positive")
    values = [float(v) for v in history]
    if len(values) < max(min_points, 2):
        return False, -math.inf, math.inf
    mean = statistics.fmean(values)
    spread = max(statistics.stdev(values), rel_floor * abs(mean), abs_floor)
    low, high = mean - k * spread, mean + k * spread
    return not low <= current <= high, low, high
