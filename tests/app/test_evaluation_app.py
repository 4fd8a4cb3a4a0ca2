"""Issue 5 wiring: gold from decisions, exports, the evaluate command, thresholds, the gate, A/B and drift.

The metrics maths is tested in tests/core/test_evaluation.py; here small hand-checkable fixtures check
that the app feeds it the right data and records what it changes.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from extraction import evaluation as maths
from extraction.normalize import values_equal
from reviewapp import evaluation as ev
from reviewapp import services
from reviewapp.models import (
    Document,
    DocumentType,
    Evaluation,
    ExtractionRun,
    FieldSpec,
    FieldValue,
    LLMCall,
    PromotionEvent,
    PromptVersion,
    ThresholdChange,
)
from tests.conftest import RECEIPT, client_for

pytestmark = pytest.mark.django_db


def review_everything(doc_type: DocumentType) -> None:
    # Thresholds above every confidence: every field of a new document goes to review.
    doc_type.fields.update(threshold=1.0)


def field(doc: Document, name: str) -> FieldValue:
    return FieldValue.objects.select_related("field_spec").get(
        document=doc, field_spec__name=name, run__evaluation__isnull=True
    )


def decide(user: Any, doc: Document, name: str, action: str, value: Any = None) -> FieldValue:
    fv = field(doc, name)
    return services.field_decide(user=user, field_id=fv.pk, action=action, version=fv.version, value=value)


@pytest.fixture
def reviewed_receipt(make_document: Any, receipt_type: DocumentType, reviewer: Any) -> Document:
    """A receipt whose company is accepted, total corrected, address rejected and date left open."""
    review_everything(receipt_type)
    doc = make_document()
    decide(reviewer, doc, "company", "accept")
    decide(reviewer, doc, "total", "correct", "99.00 MYR")
    decide(reviewer, doc, "address", "reject")
    return doc


# --- gold ------------------------------------------------------------------------------------------------
def test_gold_holds_each_decision_with_its_truth_reviewer_and_time(
    reviewed_receipt: Document, receipt_type: DocumentType, reviewer: Any
) -> None:
    gold = {fv.field_spec.name: fv for fv in ev.gold_set(receipt_type)}
    assert set(gold) == {"company", "total", "address"}  # date is still open: not gold
    assert gold["company"].final_value == gold["company"].value == "SUPER SAVE MART SDN BHD"
    assert gold["total"].final_value == "99.00 MYR" and gold["total"].status == "corrected"
    assert gold["address"].final_value is None and gold["address"].status == "rejected"
    assert all(fv.reviewer == reviewer and fv.reviewed_at is not None for fv in gold.values())
    obs = {o.field: o for o in map(ev.gold_observation, gold.values())}
    specs = {f.name: f.to_data() for f in receipt_type.fields.all()}
    correct = {name: maths.is_correct(o, specs[name], values_equal) for name, o in obs.items()}
    assert correct == {"company": True, "total": False, "address": False}


def test_excluded_and_auto_accepted_fields_are_not_gold(
    make_document: Any, receipt_type: DocumentType, reviewer: Any
) -> None:
    doc = make_document()  # default thresholds: company, address and total are auto-accepted
    assert field(doc, "company").status == "auto_accepted"
    decide(reviewer, doc, "date", "accept")
    assert [fv.field_spec.name for fv in ev.gold_set(receipt_type)] == ["date"]
    assert (
        ev.gold_exclude(field_values=FieldValue.objects.filter(pk=field(doc, "date").pk), excluded=True) == 1
    )
    assert ev.gold_set(receipt_type) == []
    assert len(ev.gold_items(receipt_type, include_excluded=True)) == 1


def test_admin_action_excludes_gold_items(reviewed_receipt: Document, admin_user: Any) -> None:
    total = field(reviewed_receipt, "total")
    response = client_for(admin_user).post(
        "/admin/reviewapp/fieldvalue/", {"action": "exclude_from_gold", "_selected_action": [total.pk]}
    )
    assert response.status_code == 302
    total.refresh_from_db()
    assert total.gold_excluded
    assert "total" not in {fv.field_spec.name for fv in ev.gold_set(reviewed_receipt.document_type)}


def test_gold_exports_as_csv_and_jsonl(
    reviewed_receipt: Document, receipt_type: DocumentType, admin_user: Any
) -> None:
    c = client_for(admin_user)
    response = c.get(f"/admin/reviewapp/documenttype/{receipt_type.pk}/gold.csv")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["field"] for r in rows] == ["company", "address", "total"]  # schema order
    by_field = {r["field"]: r for r in rows}
    assert json.loads(by_field["total"]["gold"]) == "99.00 MYR"
    assert json.loads(by_field["total"]["model_value"]) == "23.10 MYR"
    assert by_field["total"]["decision"] == "corrected" and by_field["total"]["reviewer"] == "rita"
    assert json.loads(by_field["address"]["gold"]) is None
    assert by_field["company"]["prompt_version"] == "receipt-extract v1"

    response = c.get(f"/admin/reviewapp/documenttype/{receipt_type.pk}/gold.jsonl")
    lines = [json.loads(line) for line in response.content.decode().splitlines()]
    assert {(x["field"], x["gold"], x["decision"]) for x in lines} == {
        ("company", "SUPER SAVE MART SDN BHD", "accepted"),
        ("address", None, "rejected"),
        ("total", "99.00 MYR", "corrected"),
    }
    assert all(x["document"] == reviewed_receipt.pk and x["reviewed_at"] for x in lines)

    out = io.StringIO()
    call_command("export_gold", "--type", "receipt", "--format", "jsonl", stdout=out)
    assert [json.loads(line)["field"] for line in out.getvalue().splitlines()] == [x["field"] for x in lines]


# --- evaluation ---------------------------------------------------------------------------------------------
def test_evaluate_command_reextracts_gold_and_prints_one_json_object(
    make_document: Any, receipt_type: DocumentType, reviewer: Any
) -> None:
    review_everything(receipt_type)
    first = make_document()
    second = make_document(RECEIPT.replace("23.10", "23.20"), filename="r2.txt")
    decide(reviewer, first, "company", "accept")
    decide(reviewer, first, "total", "correct", "99.00 MYR")  # the model (deterministic) is wrong here
    decide(reviewer, second, "company", "accept")
    decide(reviewer, second, "total", "accept")
    before = {d.pk: (d.status, d.current_run.pk) for d in (first, second)}

    out = io.StringIO()
    call_command(
        "evaluate", "--type", "receipt", "--prompt-version", "v1", "--format", "json", "--wait", stdout=out
    )
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert set(data) == {"evaluation", "status", "document_type", "prompt_version", "model", "report"}
    assert data["status"] == "done" and data["prompt_version"] == "receipt-extract v1"
    report = data["report"]
    assert set(report) >= {"fields", "overall", "documents", "meta", "n_bins"} and "items" not in report
    assert list(report["fields"]) == ["company", "total"]
    assert report["fields"]["company"]["accuracy"] == 1.0
    assert report["fields"]["total"]["n"] == 2 and report["fields"]["total"]["accuracy"] == 0.5
    assert report["overall"]["n"] == 4 and report["overall"]["accuracy"] == 0.75
    assert report["overall"]["calibration"]["brier"] is not None
    # Thresholds are the current ones (1.0): everything goes to review, nothing is auto-accepted.
    assert report["fields"]["total"]["review_rate"] == 1.0
    assert report["documents"]["n_documents"] == 2 and report["documents"]["failures"] == 0
    assert report["documents"]["latency_ms"]["n"] == 2
    assert report["meta"]["gold_documents"] == [first.pk, second.pk]

    evaluation = Evaluation.objects.get(pk=data["evaluation"])
    runs = ExtractionRun.objects.filter(evaluation=evaluation)
    assert runs.count() == 2 and all(r.status == "succeeded" for r in runs)
    assert LLMCall.objects.filter(run__evaluation=evaluation).exists()
    for d in (first, second):  # the documents and their current run are untouched
        d.refresh_from_db()
        assert (d.status, d.current_run.pk) == before[d.pk]


def test_evaluate_command_limit_and_text_output(reviewed_receipt: Document) -> None:
    out = io.StringIO()
    call_command(
        "evaluate",
        "--type",
        "receipt",
        "--prompt-version",
        "receipt-extract v1",
        "--limit",
        "1",
        "--wait",
        stdout=out,
    )
    text = out.getvalue()
    assert ": done" in text and re.search(r"^overall\s+3\s+33\.3%", text, re.M), text
    with pytest.raises(Exception, match="unknown prompt version"):
        call_command("evaluate", "--type", "receipt", "--prompt-version", "v9", stdout=io.StringIO())


def test_admin_queues_an_evaluation_that_runs_in_the_background(
    reviewed_receipt: Document,
    receipt_type: DocumentType,
    admin_user: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    prompt = receipt_type.active_prompt
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client_for(admin_user).post(
            "/admin/reviewapp/evaluation/add/",
            {"document_type": receipt_type.pk, "prompt_version": prompt.pk, "model_alias": "", "limit": ""},
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert len(callbacks) == 1
    evaluation = Evaluation.objects.get()
    assert evaluation.status == "done" and evaluation.created_by == admin_user
    assert evaluation.report["overall"]["n"] == 3
    page = client_for(admin_user).get(f"/admin/reviewapp/evaluation/{evaluation.pk}/change/")
    assert 'id="evaluation-report"' in page.content.decode()


def done_evaluation(prompt: PromptVersion, accuracy: dict[str, tuple[int, int]]) -> Evaluation:
    """Return a finished evaluation whose report has `correct` of `n` right per field."""
    specs = {f.name: f.to_data() for f in prompt.document_type.fields.all()}
    obs = [
        maths.Observation(i, name, "x", 0.9, "x" if i < correct else "y")
        for name, (correct, n) in accuracy.items()
        for i in range(n)
    ]
    report = maths.evaluate(obs, specs, values_equal).to_dict()
    report["meta"] = {"gold_documents": list(range(10))}
    return Evaluation.objects.create(
        document_type=prompt.document_type, prompt_version=prompt, status="done", report=report
    )


def test_compare_view_flags_the_regressing_field(receipt_type: DocumentType, admin_user: Any) -> None:
    v1 = receipt_type.active_prompt
    v2 = PromptVersion.objects.create(document_type=receipt_type, version=2)
    base = done_evaluation(v1, {"company": (9, 10), "total": (9, 10)})
    cand = done_evaluation(v2, {"company": (10, 10), "total": (8, 10)})
    body = (
        client_for(admin_user)
        .get(f"/admin/reviewapp/evaluation/compare/?baseline={base.pk}&candidate={cand.pk}")
        .content.decode()
    )
    assert re.search(r'<tr class="regression" data-field="total"', body)
    assert not re.search(r'<tr class="regression" data-field="company"', body)
    assert "FAIL" in body


# --- thresholds --------------------------------------------------------------------------------------------
@pytest.fixture
def company_gold(make_document: Any, receipt_type: DocumentType, reviewer: Any) -> FieldSpec:
    """Five gold items for `company` at confidences 0.5 … 0.9; only the 0.5 one was wrong."""
    review_everything(receipt_type)
    for i, conf in enumerate([0.5, 0.6, 0.7, 0.8, 0.9]):
        doc = make_document(RECEIPT + f"\nref {i}\n", filename=f"r{i}.txt")
        FieldValue.objects.filter(pk=field(doc, "company").pk).update(confidence=conf)
        if conf == 0.5:
            decide(reviewer, doc, "company", "correct", "ANOTHER SHOP")
        else:
            decide(reviewer, doc, "company", "accept")
    return receipt_type.fields.get(name="company")


def test_threshold_curve_from_gold_renders_one_svg_point_per_threshold(
    company_gold: FieldSpec, admin_user: Any
) -> None:
    points = ev.threshold_points(company_gold.document_type)["company"]
    assert sorted(points) == [(0.5, False), (0.6, True), (0.7, True), (0.8, True), (0.9, True)]
    url = f"/admin/reviewapp/documenttype/{company_gold.document_type_id}/change/?target=60&min=3"
    body = client_for(admin_user).get(url).content.decode()
    row = body[body.index('data-field="company"') :]
    svg = row[row.index("<svg") : row.index("</svg>")]
    # Thresholds 0.0, 0.5, 0.6, 0.7, 0.8, 0.9 (review-all accepts nothing, so has no error rate).
    assert svg.count('class="pt"') == 6 and 'data-points="6"' in svg
    assert 'class="current"' in svg and 'class="target"' in svg
    assert "Apply 1.0 → 0.6" in row[: row.index("</tr>")]


def test_applying_a_recommendation_changes_the_threshold_and_is_audited(
    company_gold: FieldSpec, admin_user: Any
) -> None:
    c = client_for(admin_user)
    url = f"/admin/reviewapp/documenttype/{company_gold.document_type_id}/thresholds/apply/"
    # 30 gold items needed by default: too few, the threshold stays.
    c.post(url, {"field_spec": company_gold.pk, "target": "60"})
    company_gold.refresh_from_db()
    assert company_gold.threshold == 1.0 and not ThresholdChange.objects.exists()

    # 0 errors in the 4 items at >= 0.6: the 95 % upper bound is 1 - 0.05 ** (1/4) = 0.527 <= 0.6, while
    # at 0.5 it is 1 error in 5 (bound 0.657). So 0.6 is the lowest threshold that qualifies.
    response = c.post(url, {"field_spec": company_gold.pk, "target": "60", "level": "95", "min": "3"})
    assert response.status_code == 302
    company_gold.refresh_from_db()
    assert company_gold.threshold == 0.6
    change = ThresholdChange.objects.get()
    assert (change.field_spec, change.changed_by, change.from_value, change.to_value) == (
        company_gold,
        admin_user,
        1.0,
        0.6,
    )
    assert change.evidence["n_gold"] == 5 and change.evidence["n_auto_accepted"] == 4
    assert change.evidence["error_upper_bound"] == pytest.approx(1 - 0.05**0.25)


def test_a_threshold_typed_in_the_admin_is_audited_too(receipt_type: DocumentType, admin_user: Any) -> None:
    c = client_for(admin_user)
    url = f"/admin/reviewapp/documenttype/{receipt_type.pk}/change/"
    page = c.get(url)
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "active_prompt"}
    formset = page.context["inline_admin_formsets"][0].formset
    data.update({f"{formset.prefix}-{k}": v for k, v in formset.management_form.initial.items()})
    for i, f in enumerate(formset.forms):
        data[f"{formset.prefix}-{i}-id"] = f.instance.pk
        data[f"{formset.prefix}-{i}-document_type"] = receipt_type.pk
        for name in ["position", "name", "type", "description", "threshold"]:
            value = f.initial.get(name)
            data[f"{formset.prefix}-{i}-{name}"] = value if value is not None else ""
        data[f"{formset.prefix}-{i}-required"] = "on" if f.initial.get("required") else ""
        data[f"{formset.prefix}-{i}-choices"] = json.dumps(f.initial.get("choices") or [])
        if f.initial["name"] == "total":
            data[f"{formset.prefix}-{i}-threshold"] = "0.95"
    response = c.post(url, {k: v for k, v in data.items() if v != ""} | {"slug": receipt_type.slug})
    if response.status_code != 302:
        fs = response.context["inline_admin_formsets"][0].formset
        raise AssertionError((response.context["adminform"].form.errors, fs.errors, fs.non_form_errors()))
    change = ThresholdChange.objects.get()
    assert (change.field_spec.name, change.from_value, change.to_value) == ("total", 0.9, 0.95)
    assert change.evidence == {"source": "manual edit in the admin"}


# --- promotion gate ----------------------------------------------------------------------------------------
@pytest.fixture
def versions(receipt_type: DocumentType) -> dict[str, PromptVersion]:
    """v1 active (90 %); v2 regresses total by 10 points; v3 improves both fields."""
    v1 = receipt_type.active_prompt
    v2 = PromptVersion.objects.create(document_type=receipt_type, version=2)
    v3 = PromptVersion.objects.create(document_type=receipt_type, version=3)
    done_evaluation(v1, {"company": (9, 10), "total": (9, 10)})
    done_evaluation(v2, {"company": (10, 10), "total": (8, 10)})
    done_evaluation(v3, {"company": (10, 10), "total": (10, 10)})
    return {"v1": v1, "v2": v2, "v3": v3}


def test_gate_blocks_a_regressing_version(
    versions: dict[str, PromptVersion], receipt_type: DocumentType, admin_user: Any
) -> None:
    with pytest.raises(ev.PromotionBlocked, match=r"FAIL.*total 90\.0% -> 80\.0%"):
        ev.prompt_promote(document_type=receipt_type, prompt_version=versions["v2"], user=admin_user)
    receipt_type.refresh_from_db()
    assert receipt_type.active_prompt == versions["v1"]
    assert not PromotionEvent.objects.exists()


def test_gate_lets_an_improving_version_through(
    versions: dict[str, PromptVersion], receipt_type: DocumentType, admin_user: Any
) -> None:
    response = client_for(admin_user).post(
        f"/admin/reviewapp/promptversion/{versions['v3'].pk}/promote/", {"promote": "1"}
    )
    assert response.status_code == 302
    receipt_type.refresh_from_db()
    assert receipt_type.active_prompt == versions["v3"]
    event = PromotionEvent.objects.get()
    assert (event.prompt_version, event.previous, event.overridden, event.actor) == (
        versions["v3"],
        versions["v1"],
        False,
        admin_user,
    )
    assert event.comparison["passes"] is True and event.evaluation.prompt_version == versions["v3"]


def test_gate_needs_an_evaluation_of_the_candidate(receipt_type: DocumentType, admin_user: Any) -> None:
    v2 = PromptVersion.objects.create(document_type=receipt_type, version=2)
    with pytest.raises(ev.PromotionBlocked, match="no finished evaluation"):
        ev.prompt_promote(document_type=receipt_type, prompt_version=v2, user=admin_user)


def test_override_with_a_reason_is_audited(
    versions: dict[str, PromptVersion], receipt_type: DocumentType, admin_user: Any
) -> None:
    c = client_for(admin_user)
    url = f"/admin/reviewapp/promptversion/{versions['v2'].pk}/promote/"
    page = c.get(url).content.decode()
    assert "Gate: blocks" in page and 'data-field="total"' in page
    c.post(url, {"override": "1", "reason": "   "})  # a blank reason is no reason
    receipt_type.refresh_from_db()
    assert receipt_type.active_prompt == versions["v1"]
    c.post(url, {"override": "1", "reason": "total errors are rounding; legal signed off"})
    receipt_type.refresh_from_db()
    assert receipt_type.active_prompt == versions["v2"]
    event = PromotionEvent.objects.get()
    assert event.overridden and event.reason == "total errors are rounding; legal signed off"
    assert event.comparison["regressions"] == ["total"]


def test_rollback_restores_the_previous_active_version(
    versions: dict[str, PromptVersion], receipt_type: DocumentType, admin_user: Any
) -> None:
    ev.prompt_promote(document_type=receipt_type, prompt_version=versions["v3"], user=admin_user)
    response = client_for(admin_user).post(
        f"/admin/reviewapp/documenttype/{receipt_type.pk}/rollback/", {"reason": "v3 misreads dates"}
    )
    assert response.status_code == 302
    receipt_type.refresh_from_db()
    assert receipt_type.active_prompt == versions["v1"]
    rollback = PromotionEvent.objects.order_by("-id").first()
    assert rollback.is_rollback and rollback.reason == "v3 misreads dates"
    assert (rollback.prompt_version, rollback.previous) == (versions["v1"], versions["v3"])


def test_rollback_without_history_is_refused(receipt_type: DocumentType, admin_user: Any) -> None:
    with pytest.raises(ev.ReviewAppError, match="no previous active version"):
        ev.prompt_rollback(document_type=receipt_type, user=admin_user)


# --- A/B and drift -----------------------------------------------------------------------------------------
def test_ab_view_shows_both_arms_with_their_document_counts(
    make_document: Any, receipt_type: DocumentType, reviewer: Any, admin_user: Any
) -> None:
    review_everything(receipt_type)
    make_document(filename="a.txt")
    candidate = PromptVersion.objects.create(document_type=receipt_type, version=2)
    DocumentType.objects.filter(pk=receipt_type.pk).update(candidate_prompt=candidate, candidate_share=1.0)
    for i in range(2):
        doc = make_document(RECEIPT + f"\n#{i}\n", filename=f"b{i}.txt")
        decide(reviewer, doc, "total", "correct", "1.00 MYR")
    arms = {a["arm"]: a for a in ev.ab_comparison(receipt_type)}
    assert (arms["active"]["documents"], arms["candidate"]["documents"]) == (1, 2)
    assert arms["candidate"]["prompt_version"] == "receipt-extract v2"
    assert arms["candidate"]["correction_rate"] == 1.0 and arms["active"]["correction_rate"] is None
    assert arms["candidate"]["gold"] == 2 and arms["candidate"]["accuracy"] == 0.0
    body = client_for(admin_user).get(f"/admin/reviewapp/documenttype/{receipt_type.pk}/ab/").content.decode()
    assert 'data-arm="active"' in body and 'data-arm="candidate"' in body


@pytest.fixture
def drifting_company(make_document: Any, receipt_type: DocumentType, reviewer: Any) -> DocumentType:
    """Company accepted once a day for five days, then corrected today."""
    review_everything(receipt_type)
    now = timezone.now()
    for days_ago in range(5, -1, -1):
        doc = make_document(RECEIPT + f"\nday {days_ago}\n", filename=f"d{days_ago}.txt")
        if days_ago:
            decide(reviewer, doc, "company", "accept")
        else:
            decide(reviewer, doc, "company", "correct", "SOMEONE ELSE")
        FieldValue.objects.filter(document=doc).update(created_at=now - timedelta(days=days_ago))
    return receipt_type


def test_drift_series_per_day_and_alert(drifting_company: DocumentType, admin_user: Any) -> None:
    series = ev.drift_series(drifting_company)["company"]
    assert len(series) == 6
    assert [p["correction_rate"] for p in series] == [0, 0, 0, 0, 0, 1.0]
    assert all(p["review_rate"] == 1.0 and p["n"] == 1 for p in series)
    weekly = ev.drift_series(drifting_company, period="week")["company"]
    assert sum(p["n"] for p in weekly) == 6
    alerts = ev.drift_alerts(drifting_company)
    assert [(a.field, a.correction_rate) for a in alerts] == [("company", 1.0)]
    c = client_for(admin_user)
    body = c.get(f"/admin/reviewapp/documenttype/{drifting_company.pk}/change/").content.decode()
    assert 'data-testid="drift-alerts"' in body and "receipt.company: correction rate 100.0%" in body
    assert (
        "<td>0.000</td>"
        in c.get(f"/admin/reviewapp/documenttype/{drifting_company.pk}/drift/").content.decode()
    )


def test_alerts_count_corrections_in_the_database_as_the_series_does(
    drifting_company: DocumentType, django_assert_num_queries: Any
) -> None:
    for period in ("day", "week"):
        series = ev.drift_series(drifting_company, period=period)
        with django_assert_num_queries(2):  # the counts per field and day, and the field names
            rates = ev.correction_rates(drifting_company, period=period)
        assert rates == {
            name: [{k: p[k] for k in ("period", "decided", "correction_rate")} for p in points]
            for name, points in series.items()
        }
    assert sum(p["decided"] for p in rates["company"]) == 6


def test_queue_page_shows_the_drift_banner(drifting_company: DocumentType, reviewer: Any) -> None:
    body = client_for(reviewer).get("/").content.decode()
    assert 'data-testid="drift-banner"' in body and "receipt.company" in body


def test_beat_refreshes_the_drift_banner_so_requests_only_read_it(
    drifting_company: DocumentType, reviewer: Any, monkeypatch: Any, settings: Any
) -> None:

    from reviewapp.evaluation import drift

    cache.delete(drift.DRIFT_CACHE_KEY)
    assert ev.refresh_drift_alerts() == 1  # what beat runs every few minutes

    def too_slow(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a request computed the drift alerts")

    monkeypatch.setattr(drift, "drift_alerts", too_slow)
    assert "receipt.company" in client_for(reviewer).get("/").content.decode()
    schedule = {e["task"]: e["schedule"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert schedule["reviewapp.evaluation.refresh_drift_alerts"] < drift.DRIFT_CACHE_SECONDS


def test_no_drift_banner_without_drift(reviewed_receipt: Document, reviewer: Any) -> None:
    assert 'data-testid="drift-banner"' not in client_for(reviewer).get("/").content.decode()


def test_evaluations_and_gold_through_the_api(
    reviewed_receipt: Document, admin_user: Any, reviewer: Any
) -> None:
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    staff = APIClient()
    staff.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin_user).key}")
    plain = APIClient()
    plain.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=reviewer).key}")

    gold = staff.get("/api/v1/document-types/receipt/gold/?as=jsonl")
    assert gold.status_code == 200 and gold["Content-Type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in gold.content.decode().splitlines()]
    assert rows and {r["document"] for r in rows} == {reviewed_receipt.pk}
    assert (
        staff.get("/api/v1/document-types/receipt/gold/?as=csv")
        .content.decode()
        .startswith("field_value,document,")
    )
    assert plain.get("/api/v1/document-types/receipt/gold/").status_code == 403  # gold spans workspaces

    created = staff.post(
        "/api/v1/evaluations/",
        {"document_type": "receipt", "prompt_version": "receipt-extract v1"},
        format="json",
    )
    assert created.status_code == 201 and created.json()["prompt_version"] == "receipt-extract v1"
    bad = staff.post(
        "/api/v1/evaluations/", {"document_type": "receipt", "prompt_version": "v9"}, format="json"
    )
    assert bad.status_code == 404
    ev.evaluation_execute(evaluation_id=created.json()["id"])
    body = staff.get(f"/api/v1/evaluations/{created.json()['id']}/").json()
    assert body["status"] == "done" and "overall" in body["report"] and "items" not in body["report"]


def test_a_few_shot_prompt_version_learns_from_corrections_but_never_sees_its_own_gold(
    reviewed_receipt: Document, receipt_type: DocumentType, admin_user: Any, make_document: Any
) -> None:
    response = client_for(admin_user).post(
        "/admin/reviewapp/promptversion/add/",
        {
            "document_type": receipt_type.pk,
            "version": 2,
            "instructions": "",
            "model_alias": "",
            "few_shot_count": 3,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    v2 = PromptVersion.objects.get(document_type=receipt_type, version=2)
    assert [(e["field"], e["wrong"], e["right"], e["document"]) for e in v2.examples] == [
        ("total", "23.10 MYR", "99.00 MYR", reviewed_receipt.pk)
    ]
    assert "TOTAL" in v2.examples[0]["text"]
    DocumentType.objects.filter(pk=receipt_type.pk).update(active_prompt=v2)
    other = make_document(RECEIPT + "\nref 2", filename="other.txt")
    prompt = LLMCall.objects.get(document=other, step="extract").messages[0]["content"]
    assert (
        "# receipt-extract v2" in prompt
        and "Mistakes reviewers corrected before" in prompt
        and "99.00 MYR" in prompt
    )
    # Evaluating v2 must not score it on the document its example came from.
    evaluation = ev.evaluation_create(document_type=receipt_type, prompt_version=v2, enqueue=False)
    ev.evaluation_execute(evaluation_id=evaluation.pk)
    evaluation.refresh_from_db()
    assert reviewed_receipt.pk not in {item["document"] for item in evaluation.report.get("items", [])}
    assert not ExtractionRun.objects.filter(evaluation=evaluation, document=reviewed_receipt).exists()
