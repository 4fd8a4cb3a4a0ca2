"""REST API v1: token auth, create by text and by file, retrieve, review, workspace isolation."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from reviewapp.models import Document, FieldValue
from tests.conftest import RECEIPT

pytestmark = pytest.mark.django_db


def api(user: Any) -> APIClient:
    c = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    c.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return c


def test_unauthenticated_requests_get_401_json(client: Any) -> None:
    response = APIClient().get("/api/v1/documents/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_create_by_text_then_poll_and_read_fields(
    reviewer: Any, receipt_type: Any, django_capture_on_commit_callbacks: Any
) -> None:
    c = api(reviewer)
    with django_capture_on_commit_callbacks(execute=True):
        response = c.post("/api/v1/documents/", {"document_type": "receipt", "text": RECEIPT}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["duplicate_of"] is None
    doc = c.get(f"/api/v1/documents/{body['id']}/").json()
    assert doc["status"] in ("needs_review", "auto_accepted")
    fields = {f["name"]: f for f in doc["fields"]}
    assert fields["total"]["value"] == "23.10 MYR"
    assert {"value", "confidence", "status", "final_value", "evidence"} <= set(fields["total"])


def test_create_by_file_and_detect_duplicates(reviewer: Any, receipt_type: Any) -> None:
    c = api(reviewer)
    upload = lambda: SimpleUploadedFile("r.txt", RECEIPT.encode(), content_type="text/plain")  # noqa: E731
    first = c.post(
        "/api/v1/documents/", {"document_type": "receipt", "file": upload()}, format="multipart"
    ).json()
    second = c.post(
        "/api/v1/documents/", {"document_type": "receipt", "file": upload()}, format="multipart"
    ).json()
    assert second["duplicate_of"] == first["id"]
    assert second["sha256"] == first["sha256"]


def test_bad_upload_gets_a_clear_error_and_creates_nothing(reviewer: Any, receipt_type: Any) -> None:
    response = api(reviewer).post(
        "/api/v1/documents/", {"document_type": "receipt", "text": ""}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty"
    assert not Document.objects.exists()


def test_review_through_the_api_with_optimistic_concurrency(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    field = FieldValue.objects.filter(document=doc, status="needs_review").first()
    c = api(reviewer)
    stale = c.post(f"/api/v1/fields/{field.pk}/accept/", {"version": field.version + 5}, format="json")
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale"
    ok = c.post(f"/api/v1/fields/{field.pk}/accept/", {"version": field.version}, format="json")
    assert ok.status_code == 200 and ok.json()["status"] == "accepted"


def test_another_workspace_token_learns_nothing(make_document: Any, outsider: Any) -> None:
    doc = make_document()
    field = FieldValue.objects.filter(document=doc).first()
    c = api(outsider)
    assert c.get("/api/v1/documents/").json()["results"] == []
    for response in [
        c.get(f"/api/v1/documents/{doc.pk}/"),
        c.get(f"/api/v1/documents/{doc.pk}/fields/"),
        c.post(f"/api/v1/documents/{doc.pk}/retry/"),
        c.post(f"/api/v1/fields/{field.pk}/accept/", {}, format="json"),
        c.get("/api/v1/documents/999999/"),
    ]:
        assert response.status_code == 404  # not 403: the object's existence is not disclosed
        assert response.json()["error"]["code"] == "not_found"


def test_document_type_schema_is_published(reviewer: Any, invoice_type: Any) -> None:
    body = api(reviewer).get("/api/v1/document-types/invoice/").json()
    assert [f["name"] for f in body["fields"]][:3] == ["invoice_number", "vendor", "invoice_date"]
    currency = body["json_schema"]["properties"]["fields"]["properties"]["currency"]["properties"]["value"]
    assert currency["enum"] == ["USD", "EUR", "GBP", "MYR", None]


def test_openapi_schema_is_served(reviewer: Any) -> None:
    response = api(reviewer).get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert "/api/v1/documents/" in response.json()["paths"]


def test_unknown_api_paths_answer_json_404_even_to_a_post_with_a_cookie(reviewer: Any) -> None:
    c = api(reviewer)
    c.cookies["sessionid"] = "whatever"  # a cookie would bring Django's HTML CSRF page on a plain view
    for response in [c.get("/api/v1/documents/-1/"), c.post("/api/v1/fields/null,null/accept/")]:
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json()["error"]["code"] == "not_found"
