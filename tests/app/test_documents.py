"""Intake, the extraction task, the state machine and the command line, end to end on the database."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction

from extraction.tasks import extract_document
from reviewapp import llm as app_llm
from reviewapp import services
from reviewapp.errors import InvalidTransition, UploadRejected
from reviewapp.models import Document, DocumentType, ExtractionRun, FieldSpec, FieldValue, LLMCall

pytestmark = pytest.mark.django_db


def test_upload_is_extracted_with_the_offline_model_and_gated(make_document: Any) -> None:
    doc = make_document()
    assert doc.status in (Document.Status.NEEDS_REVIEW, Document.Status.AUTO_ACCEPTED)
    run = doc.current_run
    assert run.status == ExtractionRun.Status.SUCCEEDED
    assert run.model_answered == "reviewapp/heuristic-v1"
    fields = {f.field_spec.name: f for f in run.fields.select_related("field_spec")}
    assert set(fields) == {"company", "date", "address", "total"}
    assert fields["total"].value == "23.10 MYR"
    assert fields["date"].value == "2024-03-12"
    for f in fields.values():
        assert 0.0 <= f.confidence <= 1.0
        expected = (
            "auto_accepted" if f.confidence >= f.field_spec.threshold and not f.problem else "needs_review"
        )
        assert f.status == expected, f.field_spec.name
        if f.evidence_start is not None:
            assert doc.text[f.evidence_start : f.evidence_end] == f.evidence_text
    # classify, extract, verify: every call traced, with its prompt version label
    steps = list(LLMCall.objects.filter(run=run).values_list("step", "prompt_version"))
    assert ("extract", "receipt-extract v1") in steps
    assert {s for s, _ in steps} == {"classify", "extract", "verify"}
    assert "# receipt-extract v1" in LLMCall.objects.get(run=run, step="extract").messages[0]["content"]


def test_running_the_task_twice_creates_no_second_run(make_document: Any) -> None:
    doc = make_document()
    fields_before = FieldValue.objects.filter(document=doc).count()
    assert extract_document.apply(args=[doc.pk]).get() == "skipped"
    assert doc.runs.count() == 1
    assert FieldValue.objects.filter(document=doc).count() == fields_before


def test_a_redelivered_task_takes_over_its_own_claim(
    make_document: Any, receipt_type: Any, workspace: Any
) -> None:
    doc = Document.objects.create(
        workspace=workspace,
        document_type=receipt_type,
        filename="x.txt",
        sha256="0" * 64,
        text=make_document().text,
    )
    # A worker died mid-run: the document is 'extracting' with the task's claim and a dangling run.
    Document.objects.filter(pk=doc.pk).update(status="extracting", claim_token="task-1", deliveries=1)
    ExtractionRun.objects.create(document=doc, prompt_version=receipt_type.active_prompt, task_id="task-1")
    assert services.extraction_execute(document_id=doc.pk, token="task-2") == "skipped"  # another task: no
    outcome = services.extraction_execute(document_id=doc.pk, token="task-1")  # the redelivery: yes
    assert outcome in ("needs_review", "auto_accepted")
    assert list(doc.runs.values_list("status", flat=True).order_by("id")) == ["abandoned", "succeeded"]


def test_a_document_that_keeps_killing_workers_fails_visibly(
    workspace: Any, receipt_type: Any, settings: Any
) -> None:
    doc = Document.objects.create(
        workspace=workspace,
        document_type=receipt_type,
        filename="x.txt",
        sha256="0" * 64,
        text="TOTAL 1.00",
        status="extracting",
        claim_token="t",
        deliveries=settings.REVIEWAPP_MAX_DELIVERIES,
    )
    assert services.extraction_execute(document_id=doc.pk, token="t") == "failed"
    doc.refresh_from_db()
    assert doc.status == "failed" and doc.status_reason.startswith("gave_up")


def test_state_machine_refuses_illegal_moves(make_document: Any) -> None:
    doc = make_document()
    with pytest.raises(InvalidTransition):
        doc.transition(Document.Status.EXTRACTING)
    doc.transition(Document.Status.QUEUED, reason="again")
    assert Document.objects.get(pk=doc.pk).status == "queued"
    with pytest.raises(InvalidTransition):
        doc.transition(Document.Status.REVIEWED)


def test_document_becomes_reviewed_when_no_field_is_left(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    open_fields = list(FieldValue.objects.filter(document=doc, status="needs_review"))
    assert open_fields, "the sample receipt should leave something to review"
    for f in open_fields:
        assert Document.objects.get(pk=doc.pk).status == "needs_review"
        services.field_decide(user=reviewer, field_id=f.pk, action="accept", version=f.version)
    assert Document.objects.get(pk=doc.pk).status == "reviewed"


@pytest.mark.parametrize(
    ("data", "filename", "code"),
    [
        (b"", "empty.txt", "empty"),
        (b"   \n\t  ", "blank.txt", "empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, "photo.txt", "binary"),
        (b"%PDF-1.4 this is not really a pdf", "broken.pdf", "pdf_unreadable"),
    ],
)
def test_bad_uploads_are_rejected_and_leave_nothing(
    workspace: Any, receipt_type: Any, data: bytes, filename: str, code: str
) -> None:
    with pytest.raises(UploadRejected) as err:
        services.document_create(
            workspace=workspace, document_type=receipt_type, user=None, data=data, filename=filename
        )
    assert err.value.code == code
    assert Document.objects.count() == 0


def test_oversized_upload_is_rejected(workspace: Any, receipt_type: Any, settings: Any) -> None:
    settings.REVIEWAPP_MAX_UPLOAD_BYTES = 1000
    with pytest.raises(UploadRejected) as err:
        services.document_create(
            workspace=workspace, document_type=receipt_type, user=None, data=b"a" * 1001, filename="big.txt"
        )
    assert err.value.code == "too_large"
    assert Document.objects.count() == 0


def test_failed_document_can_be_retried(
    make_document: Any, llm_config_file: Any, llm: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # Nothing is scripted: every call to the model server gets a 500, so the run must fail, not vanish.
    llm_config_file(retries=0)  # classify and verify stay offline; extract: primary, then secondary
    doc = make_document()
    assert doc.status == "failed"
    assert "every model" in doc.status_reason
    failed_calls = LLMCall.objects.filter(document=doc).exclude(error_class="")
    assert {c.model_alias for c in failed_calls} == {"primary", "secondary"}  # the fallback was tried too
    settings.REVIEWAPP_LLM_CONFIG = ""  # the provider is back (here: the offline model)
    app_llm.reset()
    with django_capture_on_commit_callbacks(execute=True):
        services.document_retry(document=doc)
    doc.refresh_from_db()
    assert doc.status in ("needs_review", "auto_accepted")
    assert list(doc.runs.values_list("status", flat=True).order_by("id")) == ["failed", "succeeded"]


@pytest.mark.django_db(transaction=True)
def test_extract_command_prints_the_json_contract(workspace: Any, receipt_type: Any, tmp_path: Any) -> None:
    from tests.conftest import RECEIPT

    path = tmp_path / "r.txt"
    path.write_text(RECEIPT)
    out = StringIO()
    call_command(
        "extract",
        str(path),
        type_slug="receipt",
        workspace="acme",
        wait=True,
        format="json",
        timeout=60,
        stdout=out,
    )
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["status"] in ("needs_review", "auto_accepted")
    assert set(data["fields"]) == {"company", "date", "address", "total"}
    total = data["fields"]["total"]
    assert total["value"] == "23.10 MYR"
    assert 0 <= total["confidence"] <= 1 and total["status"] in ("auto_accepted", "needs_review")
    assert Document.objects.get(pk=data["document"]).filename == "r.txt"


def test_a_run_is_exported_to_langfuse_when_configured(make_document: Any, settings: Any) -> None:
    from extraction import tracing
    from tests.core.test_tracing import OTLPReceiver

    receiver = OTLPReceiver()
    settings.LANGFUSE_PUBLIC_KEY, settings.LANGFUSE_SECRET_KEY = "pk-app-test", "sk-app-test"
    settings.LANGFUSE_HOST = receiver.base_url
    try:
        doc = make_document()
    finally:
        tracing.shutdown()
        receiver.stop()
    names = [s["name"] for s in receiver.spans]
    assert names.count("extraction") == 1
    assert sorted(n for n in names if n != "extraction") == ["classify", "extract", "verify"]
    root = next(s for s in receiver.spans if s["name"] == "extraction")
    assert str(doc.pk) in json.dumps(root, default=str)


def _queued(workspace: Any, doc_type: Any, text: str) -> Document:
    return Document.objects.create(
        workspace=workspace, document_type=doc_type, filename="r.txt", sha256="0" * 64, text=text
    )


def test_an_extraction_runs_a_fixed_handful_of_sql_statements(
    workspace: Any,
    receipt_type: Any,
    invoice_type: Any,
    make_document: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    text = make_document().text  # also warms the per-process caches (candidate types, breaker)
    counts = []
    for extra_types in (0, 6):
        for i in range(extra_types):  # more types must not mean more queries (no N+1 over candidates)
            t = type(receipt_type).objects.create(slug=f"extra-{i}", name=f"Extra {i}")
            t.fields.create(name="total", type="money")
        services.classify_candidates(receipt_type.to_schema())  # the cache was dropped by the save
        doc = _queued(workspace, receipt_type, text)
        with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
            assert services.extraction_execute(document_id=doc.pk, token=f"t{extra_types}") in (
                "needs_review",
                "auto_accepted",
            )
        counts.append(len([q for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]))
    # The claim (one UPDATE ... RETURNING: the type comes from the per-process cache), then one statement
    # for the results: the ownership check, the document UPDATE and the INSERTs of the run, its calls and
    # its fields, which also says whether the workspace has webhooks (it has none: no further query).
    assert counts == [2, 2], counts
    claim, results = (q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"])
    assert claim.startswith('UPDATE "reviewapp_document"')
    # The rows go in as JSON, one parameter each: psycopg would parse a statement of 72 placeholders per call.
    assert results.lstrip().startswith("WITH items") and results.count("json_populate_recordset") == 3
    assert LLMCall.objects.filter(document=doc).count() == 3
    run = doc.runs.get()
    assert run.status == "succeeded" and run.finished_at and run.prompt_tokens > 0
    assert set(LLMCall.objects.filter(document=doc).values_list("run", flat=True)) == {run.pk}
    # In the order they happened / are declared in, whatever order the statement's joins produce.
    steps = LLMCall.objects.filter(document=doc).order_by("id").values_list("step", flat=True)
    assert list(steps) == ["classify", "extract", "verify"]
    specs = (
        FieldValue.objects.filter(document=doc, run=run).order_by("id").values_list("field_spec", flat=True)
    )
    assert list(specs) == [f.pk for f in receipt_type.fields.all()]


def test_a_type_edited_anywhere_is_reloaded_by_the_next_claim(
    workspace: Any, receipt_type: Any, make_document: Any, admin_user: Any
) -> None:
    """Workers cache document types per process; every kind of edit must still reach the next run."""
    from reviewapp.evaluation.thresholds import threshold_set

    text = make_document().text

    def statuses(token: str) -> set[str]:
        doc = _queued(workspace, receipt_type, text)
        services.extraction_execute(document_id=doc.pk, token=token)
        return set(FieldValue.objects.filter(document=doc).values_list("status", flat=True))

    specs = list(receipt_type.fields.all())
    for spec in specs:  # save(): the post_save signal bumps the type's config version
        spec.threshold = 1.0
        spec.save()
    assert statuses("t1") == {"needs_review"}
    with transaction.atomic():  # a queryset update (the audited threshold change) bumps it explicitly
        for spec in FieldSpec.objects.select_for_update().filter(document_type=receipt_type):
            threshold_set(spec=spec, to_value=0.0, user=admin_user, evidence={})
    assert "auto_accepted" in statuses("t2")
    version = DocumentType.objects.get(pk=receipt_type.pk).config_version
    statuses("t3")  # no edit: no reload, and the version does not move
    assert DocumentType.objects.get(pk=receipt_type.pk).config_version == version


def test_call_log_batches_calls_but_writes_a_failure_at_once(make_document: Any) -> None:
    from extraction.gateway import CallRecord

    run = make_document().current_run
    before = LLMCall.objects.filter(run=run).count()
    log = services.CallLog(run, redact_pii=False, batch=True)

    def record(error: str = "") -> CallRecord:
        return CallRecord(step="extract", attempt=1, chunk=None, prompt_version="v", model_alias="primary",
                          model_requested="m", messages=[{"role": "user", "content": "hi"}], started_at=0.0,
                          error_class=error)  # fmt: skip

    log.add(record())
    assert LLMCall.objects.filter(run=run).count() == before  # held for the results transaction
    log.add(record("RateLimitError"))
    assert LLMCall.objects.filter(run=run).count() == before + 2  # the failure, and the call held before it
    log.add(record())
    log.flush()
    assert LLMCall.objects.filter(run=run).count() == before + 3 and log.pending == []


def test_a_crash_mid_run_fails_the_document_and_its_run(
    workspace: Any, receipt_type: Any, monkeypatch: Any
) -> None:
    doc = _queued(workspace, receipt_type, "TOTAL 1.00")

    def crash(**kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "run_pipeline", crash)
    extract_document.apply(args=[doc.pk])
    doc.refresh_from_db()
    assert doc.status == "failed" and doc.status_reason == "internal_error: RuntimeError: a bug"
    run = doc.runs.get()
    assert (run.status, run.error_code) == ("failed", "internal_error") and run.finished_at is not None


def test_old_successful_calls_of_finished_documents_are_purged_and_the_rest_kept(
    make_document: Any, settings: Any
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from extraction.tasks import purge_llm_calls

    done, waiting = make_document(), make_document(filename="again.txt")
    Document.objects.filter(pk=done.pk).update(status="reviewed")
    Document.objects.filter(pk=waiting.pk).update(status="needs_review")
    LLMCall.objects.filter(document=done, step="verify").update(parse_status="repaired")
    failed = LLMCall.objects.create(
        run=done.current_run, document=done, step="extract", error_class="RateLimitError", parse_status=""
    )
    LLMCall.objects.update(created_at=timezone.now() - timedelta(days=40))
    settings.REVIEWAPP_LLM_CALL_RETENTION_DAYS = 0
    assert purge_llm_calls() == 0  # off by default: every call is kept
    settings.REVIEWAPP_LLM_CALL_RETENTION_DAYS = 30
    assert purge_llm_calls() == 2  # the reviewed document's classify and extract calls
    kept = set(LLMCall.objects.filter(document=done).values_list("step", "parse_status"))
    assert kept == {("verify", "repaired"), ("extract", "")} and LLMCall.objects.filter(pk=failed.pk).exists()
    assert LLMCall.objects.filter(document=waiting).count() == 3  # still open for review
    assert services.llm_calls_purge(older_than=timedelta(days=60)) == 0  # younger than that: kept
