"""The review queue over HTTP: login, isolation, CSRF, decisions, concurrency, query counts."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from reviewapp import services
from reviewapp.models import Document, FieldValue, ReviewDecision
from reviewapp.selectors import QueueFilters
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def open_field(doc: Any) -> FieldValue:
    return FieldValue.objects.filter(document=doc, status="needs_review").select_related("field_spec").first()


def test_anonymous_users_see_only_the_login_page(client: Client) -> None:
    for url in ["/", "/documents/", "/documents/1/"]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
    assert client.get("/accounts/login/").status_code == 200


def test_queue_shows_the_field_with_its_evidence(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    response = client_for(reviewer).get("/")
    assert response.status_code == 200
    body = response.content.decode()
    item = FieldValue.objects.get(claimed_by=reviewer)
    assert item.document_id == doc.pk
    assert f'data-field="{item.pk}"' in body
    assert item.field_spec.name in body
    if item.evidence_text:
        assert f'<mark id="evidence" class="evidence">{item.evidence_text}' in body


def test_outsider_cannot_see_or_decide_another_workspace(make_document: Any, outsider: Any) -> None:
    doc = make_document()
    field = open_field(doc)
    c = client_for(outsider)
    assert c.get(f"/documents/{doc.pk}/").status_code == 404
    assert "Queue is empty" in c.get("/").content.decode()
    response = c.post(f"/fields/{field.pk}/decide/", {"action": "accept", "version": field.version})
    assert response.status_code == 404
    field.refresh_from_db()
    assert field.status == "needs_review"
    assert not ReviewDecision.objects.exists()


def test_review_posts_need_the_csrf_token(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    field = open_field(doc)
    c = client_for(reviewer, csrf=True)
    page = c.get("/")  # sets the CSRF cookie and renders the token into hx-headers on <body>
    response = c.post(
        f"/fields/{field.pk}/decide/", {"action": "accept", "version": field.version}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 403
    field.refresh_from_db()
    assert field.status == "needs_review"
    token = str(page.context["csrf_token"])
    assert f'"X-CSRFToken": "{token}"' in page.content.decode()
    response = c.post(
        f"/fields/{field.pk}/decide/",
        {"action": "accept", "version": field.version},
        HTTP_HX_REQUEST="true",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 200
    field.refresh_from_db()
    assert field.status == "accepted"


def test_accept_swaps_in_the_next_item_and_records_the_decision(make_document: Any, reviewer: Any) -> None:
    make_document()
    make_document(filename="second.txt")
    c = client_for(reviewer)
    c.get("/")
    first = FieldValue.objects.get(claimed_by=reviewer)
    response = c.post(
        f"/fields/{first.pk}/decide/", {"action": "accept", "version": first.version}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body  # a fragment, not a page
    first.refresh_from_db()
    assert first.status == "accepted" and first.final_value == first.value and first.reviewer == reviewer
    decision = ReviewDecision.objects.get(field_value=first)
    assert (decision.action, decision.before_status, decision.after_status) == (
        "accept",
        "needs_review",
        "accepted",
    )
    nxt = FieldValue.objects.get(claimed_by=reviewer)
    assert nxt.pk != first.pk and f'data-field="{nxt.pk}"' in body


def test_invalid_correction_is_shown_inline_and_changes_nothing(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    date_field = FieldValue.objects.get(document=doc, field_spec__name="date")
    FieldValue.objects.filter(pk=date_field.pk).update(status="needs_review")
    c = client_for(reviewer)
    response = c.post(
        f"/fields/{date_field.pk}/decide/",
        {"action": "correct", "value": "31/02/2024", "version": date_field.version},
        HTTP_HX_REQUEST="true",
    )
    body = response.content.decode()
    assert 'aria-invalid="true"' in body and "31/02/2024" in body
    date_field.refresh_from_db()
    assert date_field.status == "needs_review" and not ReviewDecision.objects.exists()
    c.post(
        f"/fields/{date_field.pk}/decide/",
        {"action": "correct", "value": "13 March 2024", "version": date_field.version},
        HTTP_HX_REQUEST="true",
    )
    date_field.refresh_from_db()
    assert (
        date_field.status == "corrected" and date_field.final_value == "2024-03-13"
    )  # normalised before storing


def test_a_stale_decision_is_refused_not_overwritten(
    make_document: Any, reviewer: Any, second_reviewer: Any
) -> None:
    doc = make_document()
    field = open_field(doc)
    seen = field.version
    services.field_decide(user=second_reviewer, field_id=field.pk, action="reject", version=seen)
    response = client_for(reviewer).post(
        f"/fields/{field.pk}/decide/", {"action": "accept", "version": seen}, HTTP_HX_REQUEST="true"
    )
    assert 'data-code="stale"' in response.content.decode()
    field.refresh_from_db()
    assert field.status == "rejected" and field.reviewer == second_reviewer
    assert ReviewDecision.objects.count() == 1


def test_two_reviewers_never_get_the_same_item(
    make_document: Any, reviewer: Any, second_reviewer: Any
) -> None:
    for i in range(3):
        make_document(filename=f"r{i}.txt")
    filters = QueueFilters()
    a = services.queue_claim_next(user=reviewer, filters=filters)
    b = services.queue_claim_next(user=second_reviewer, filters=filters)
    assert a is not None and b is not None and a.pk != b.pk
    assert services.queue_claim_next(user=reviewer, filters=filters).pk == a.pk  # a reload keeps your item


def test_queue_page_runs_a_fixed_number_of_queries(make_document: Any, reviewer: Any) -> None:
    c = client_for(reviewer)
    make_document()
    c.get("/")
    with CaptureQueriesContext(connection) as few:
        c.get("/", HTTP_HX_REQUEST="true")
    for i in range(6):
        make_document(filename=f"more{i}.txt")
    with CaptureQueriesContext(connection) as many:
        c.get("/", HTTP_HX_REQUEST="true")
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]
    assert len(few) <= 20


def test_field_values_are_escaped(make_document: Any, reviewer: Any) -> None:
    doc = make_document("<script>alert(1)</script>\nSUPER MART SDN BHD\nDate: 01/02/2024\nTOTAL RM 5.00\n")
    body = client_for(reviewer).get(f"/documents/{doc.pk}/").content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_upload_in_the_browser_form(
    reviewer: Any, receipt_type: Any, workspace: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from tests.conftest import RECEIPT

    c = client_for(reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        response = c.post(
            "/documents/", {"workspace": workspace.pk, "document_type": "receipt", "text": RECEIPT}
        )
    assert response.status_code == 302
    doc_url = response["Location"]
    page = c.get(doc_url).content.decode()
    assert "SUPER SAVE MART" in page and 'data-testid="doc-status"' in page
    response = c.post("/documents/", {"workspace": workspace.pk, "document_type": "receipt", "text": "   "})
    assert response.status_code == 400
    assert "Choose a file or paste some text" in response.content.decode()


def test_several_files_in_the_browser_form_are_queued_together_and_bad_ones_named(
    reviewer: Any, receipt_type: Any, workspace: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.conftest import RECEIPT

    files = [
        SimpleUploadedFile("a.txt", (RECEIPT + "\nref a").encode(), content_type="text/plain"),
        SimpleUploadedFile("junk.txt", b"\x00\xff\xfe" * 200, content_type="text/plain"),
        SimpleUploadedFile("b.txt", (RECEIPT + "\nref b").encode(), content_type="text/plain"),
    ]
    c = client_for(reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        response = c.post(
            "/documents/", {"workspace": workspace.pk, "document_type": "receipt", "file": files}, follow=True
        )
    assert response.redirect_chain == [("/documents/", 302)]
    page = response.content.decode()
    assert "2 documents queued for extraction." in page
    assert "junk.txt: " in page  # the refused one is named, with its reason
    docs = list(Document.objects.order_by("pk"))
    assert [d.filename for d in docs] == ["a.txt", "b.txt"]
    tokens = [d.runs.get().task_id for d in docs]
    assert len({t.rpartition(":")[0] for t in tokens}) == 1  # one task message for both
    assert all(d.status in ("needs_review", "auto_accepted") for d in docs)
    # All refused: the form says why, and nothing was stored.
    response = c.post(
        "/documents/", {"workspace": workspace.pk, "document_type": "receipt", "file": [files[1]]}
    )
    assert response.status_code == 400 and Document.objects.count() == 2


def test_bulk_accept_accepts_the_selection_and_refuses_stale_ones(
    make_document: Any, reviewer: Any, second_reviewer: Any
) -> None:
    doc = make_document()
    open_fields = list(FieldValue.objects.filter(document=doc, status="needs_review"))
    extra = FieldValue.objects.filter(document=doc).exclude(pk__in=[f.pk for f in open_fields]).first()
    FieldValue.objects.filter(pk=extra.pk).update(status="needs_review")
    stale = FieldValue.objects.get(pk=extra.pk)
    services.field_decide(user=second_reviewer, field_id=stale.pk, action="reject", version=stale.version)
    data = {"ids": [str(f.pk) for f in [*open_fields, stale]]}
    data.update({f"v{f.pk}": str(f.version) for f in [*open_fields, stale]})
    body = (
        client_for(reviewer)
        .post(f"/documents/{doc.pk}/bulk-accept/", data, HTTP_HX_REQUEST="true")
        .content.decode()
    )
    assert f"Accepted {len(open_fields)} field" in body and 'data-code="stale"' in body
    for f in open_fields:
        f.refresh_from_db()
        assert f.status == "accepted" and f.decisions.get().bulk
    stale.refresh_from_db()
    assert stale.status == "rejected" and stale.reviewer == second_reviewer


def test_counts_fragment_for_live_updates(make_document: Any, reviewer: Any) -> None:
    make_document()
    open_now = FieldValue.objects.filter(status="needs_review").count()
    body = client_for(reviewer).get("/queue/counts/?type=receipt", HTTP_HX_REQUEST="true").content.decode()
    assert f'<strong data-testid="open-count">{open_now}</strong>' in body
    assert 'hx-trigger="every 10s"' in body and "type=receipt" in body


def test_pdf_text_is_shown_page_by_page(reviewer: Any, workspace: Any, receipt_type: Any) -> None:
    from tests.core.test_documents import make_pdf

    data = make_pdf([["ACME STORES LTD", "Date: 2024-03-12"], ["TOTAL: 12.50 EUR"]])
    doc = services.document_create(
        workspace=workspace, document_type=receipt_type, user=None, data=data, filename="r.pdf"
    ).document
    assert doc.kind == "pdf" and len(doc.pages) == 2
    body = client_for(reviewer).get(f"/documents/{doc.pk}/").content.decode()
    assert '<span class="page-break">page 2</span>' in body
    assert body.index("page 2") < body.index("TOTAL: 12.50 EUR")
