"""Gold data, evaluation runs, threshold tuning, A/B arms, drift and the promotion gate (issue 5).

The maths lives in `extraction.evaluation` (plain Python, unit-tested there); this package is its Django
edge: it turns reviewed fields into gold, re-extracts gold documents for an evaluation, feeds both to
the maths, and records every change it makes (ThresholdChange, PromotionEvent).

| module | what |
|---|---|
| `gold` | the gold set (decided fields of production runs), its export and exclusions |
| `runs` | evaluation runs: create, queue, execute (the Celery job `run_evaluation`), the watchdog |
| `reports` | stored reports: rebuilt, compared, laid out as tables |
| `thresholds` | threshold curves, the recommendation, audited threshold changes |
| `ab` | the A/B arms compared on production runs |
| `drift` | per-period confidence and correction rates, drift alerts |
| `promotion` | the promotion gate, promotion and rollback |

The public names are re-exported here: `from reviewapp import evaluation as ev; ev.gold_set(...)`. To
mock something a module calls, patch it where it is looked up (`reviewapp.evaluation.runs._run_one`),
not here.
"""

from __future__ import annotations

from ..errors import ReviewAppError
from .ab import ab_comparison
from .drift import (
    DriftAlert,
    correction_rates,
    drift_alerts,
    drift_alerts_all,
    drift_series,
    refresh_drift_alerts,
)
from .gold import (
    DECIDED,
    GOLD_COLUMNS,
    gold_exclude,
    gold_export,
    gold_items,
    gold_latest,
    gold_observation,
    gold_rows,
    gold_set,
)
from .promotion import (
    Gate,
    PromotionBlocked,
    latest_evaluation,
    promotion_gate,
    prompt_promote,
    prompt_rollback,
)
from .reports import (
    METRIC_ROWS,
    comparison_table,
    evaluation_compare,
    ordered_fields,
    report_from_dict,
    report_table,
)
from .runs import (
    evaluation_create,
    evaluation_enqueue,
    evaluation_execute,
    evaluation_progress,
    evaluations_requeue_stuck,
    requeue_stuck_evaluations,
    run_evaluation,
)
from .thresholds import (
    CHART_H,
    CHART_W,
    PAD,
    CurveChart,
    ThresholdNotApplied,
    curve_chart,
    threshold_apply,
    threshold_overview,
    threshold_points,
    threshold_record_manual,
    threshold_set,
)

__all__ = [
    "CHART_H",
    "CHART_W",
    "DECIDED",
    "GOLD_COLUMNS",
    "METRIC_ROWS",
    "PAD",
    "CurveChart",
    "DriftAlert",
    "Gate",
    "PromotionBlocked",
    "ReviewAppError",
    "ThresholdNotApplied",
    "ab_comparison",
    "comparison_table",
    "correction_rates",
    "curve_chart",
    "drift_alerts",
    "drift_alerts_all",
    "drift_series",
    "evaluation_compare",
    "evaluation_create",
    "evaluation_enqueue",
    "evaluation_execute",
    "evaluation_progress",
    "evaluations_requeue_stuck",
    "gold_exclude",
    "gold_export",
    "gold_items",
    "gold_latest",
    "gold_observation",
    "gold_rows",
    "gold_set",
    "latest_evaluation",
    "ordered_fields",
    "promotion_gate",
    "prompt_promote",
    "prompt_rollback",
    "refresh_drift_alerts",
    "report_from_dict",
    "report_table",
    "requeue_stuck_evaluations",
    "run_evaluation",
    "threshold_apply",
    "threshold_overview",
    "threshold_points",
    "threshold_record_manual",
    "threshold_set",
]
