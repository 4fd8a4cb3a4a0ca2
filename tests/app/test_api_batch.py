"""POST /api/v1/documents/batch/: several documents in one request, queued several to a task message."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from reviewapp.models import Document
from tests.app.test_api import api
from tests.conftest import RECEIPT

pytestmark = pytest.mark.django_db
URL = "/api/v1/documents/batch/"


def message_of(pk: int) -> str:
    task_id = Document.objects.get(pk=pk).runs.get().task_id
    message, _, doc = task_id.rpartition(":")
    assert doc == str(pk), task_id
    return message


def test_texts_are_created_in_order_and_queued_together_and_bad_ones_listed(
    reviewer: Any, receipt_type: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.REVIEWAPP_EXTRACT_BATCH = 2
    texts = [RECEIPT + "\nref 1", "", RECEIPT + "\nref 2", "\x01\x02\x03" * 50, RECEIPT + "\nref 3"]
    with django_capture_on_commit_callbacks(execute=True):
        response = api(reviewer).post(
            URL,
            {
                "document_type": "receipt",
                "documents": [{"text": t, "filename": f"n{i}.txt"} for i, t in enumerate(texts)],
            },
            format="json",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert [d["filename"] for d in body["documents"]] == ["n0.txt", "n2.txt", "n4.txt"]
    assert [(r["index"], r["filename"]) for r in body["rejected"]] == [(1, "n1.txt"), (3, "n3.txt")]
    assert body["rejected"][0]["error"]["code"] == "empty"
    assert body["rejected"][1]["error"]["message"]  # a reason a person can read
    ids = [d["id"] for d in body["documents"]]
    assert Document.objects.count() == 3  # the refused ones left nothing
    # Queued REVIEWAPP_EXTRACT_BATCH to a message: the first two together, the third alone.
    assert message_of(ids[0]) == message_of(ids[1])
    assert ":" not in Document.objects.get(pk=ids[2]).runs.get().task_id
    for doc in Document.objects.all():
        assert doc.status in ("needs_review", "auto_accepted"), doc.status_reason
        assert doc.created_by == reviewer


def test_files_in_one_multipart_request(
    reviewer: Any, receipt_type: Any, django_capture_on_commit_callbacks: Any
) -> None:
    files = [
        SimpleUploadedFile(f"f{i}.txt", (RECEIPT + f"\nfile {i}").encode(), content_type="text/plain")
        for i in range(3)
    ]
    with django_capture_on_commit_callbacks(execute=True):
        response = api(reviewer).post(URL, {"document_type": "receipt", "file": files}, format="multipart")
    assert response.status_code == 201, response.content
    ids = [d["id"] for d in response.json()["documents"]]
    assert [Document.objects.get(pk=pk).filename for pk in ids] == ["f0.txt", "f1.txt", "f2.txt"]
    assert len({message_of(pk) for pk in ids}) == 1


def test_a_batch_with_no_acceptable_document_is_a_400_that_says_why(reviewer: Any, receipt_type: Any) -> None:
    response = api(reviewer).post(
        URL, {"document_type": "receipt", "documents": [{"text": ""}, {"text": "  "}]}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "all_rejected"
    assert [r["error"]["code"] for r in error["details"]["rejected"]] == ["empty", "empty"]
    assert not Document.objects.exists()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"document_type": "receipt", "documents": []}, "invalid"),
        ({"document_type": "receipt", "documents": [{"text": "x"}] * 101}, "invalid"),
        ({"document_type": "receipt"}, "invalid"),
        ({"document_type": "nope", "documents": [{"text": RECEIPT}]}, "unknown_document_type"),
        ({"document_type": "receipt", "workspace": "globex", "documents": [{"text": RECEIPT}]}, "not_found"),
    ],
    ids=["empty list", "over 100", "nothing to upload", "unknown type", "someone else's workspace"],
)
def test_malformed_batches_are_refused_whole(
    reviewer: Any, receipt_type: Any, other_workspace: Any, payload: dict[str, Any], code: str
) -> None:
    response = api(reviewer).post(URL, payload, format="json")
    assert response.status_code in (400, 404), response.content
    assert response.json()["error"]["code"] == code
    assert not Document.objects.exists()


def test_an_idempotency_key_replays_the_batch_instead_of_creating_it_twice(
    reviewer: Any, receipt_type: Any
) -> None:
    c = api(reviewer)
    payload = {"document_type": "receipt", "documents": [{"text": RECEIPT + f"\nk{i}"} for i in range(3)]}
    first = c.post(URL, payload, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    again = c.post(URL, payload, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert Document.objects.count() == 3


def test_the_batch_endpoint_needs_a_login(receipt_type: Any) -> None:
    from rest_framework.test import APIClient

    response = APIClient().post(
        URL, {"document_type": "receipt", "documents": [{"text": RECEIPT}]}, format="json"
    )
    assert response.status_code == 401
    assert not Document.objects.exists()
