"""reviewapp.evaluation is a package of cohesive modules; its __init__ keeps the old flat API."""

from __future__ import annotations

import importlib
import pkgutil

import reviewapp.evaluation as ev

# Every public name the flat module reviewapp/evaluation.py had, which admin, API, commands and tests use.
FLAT_API = [
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
    "curve_chart",
    "drift_alerts",
    "drift_alerts_all",
    "drift_series",
    "evaluation_compare",
    "evaluation_create",
    "evaluation_enqueue",
    "evaluation_execute",
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
    "report_from_dict",
    "report_table",
    "run_evaluation",
    "threshold_apply",
    "threshold_overview",
    "threshold_points",
    "threshold_record_manual",
    "threshold_set",
]


def test_the_flat_api_is_re_exported_from_the_submodule_that_defines_it() -> None:
    assert hasattr(ev, "__path__"), "reviewapp.evaluation should be a package"
    modules = {
        info.name: importlib.import_module(f"reviewapp.evaluation.{info.name}")
        for info in pkgutil.iter_modules(ev.__path__)
    }
    assert {"gold", "runs", "reports", "thresholds", "ab", "drift", "promotion"} <= set(modules)
    assert set(FLAT_API) <= set(ev.__all__)
    for name in ev.__all__:
        obj = getattr(ev, name)
        if name == "ReviewAppError":
            continue  # re-exported from reviewapp.errors, as the flat module did
        homes = [m for m, module in modules.items() if getattr(module, name, None) is obj]
        assert homes, f"{name} is not defined in a submodule"


def test_the_evaluation_job_keeps_its_celery_name() -> None:
    # Queued messages name the task: a move must not orphan jobs already on the broker.
    assert ev.run_evaluation.name == "reviewapp.evaluation.run_evaluation"
