"""Several documents to a task message: how bulk imports are queued (services.enqueue_extractions,
extraction.tasks.extract_documents). Here the tasks run eagerly; tests/app/test_worker.py runs them in a real
gevent worker (side by side, within its concurrency; killed mid-message)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from django.db import OperationalError

from extraction.tasks import extract_documents
from reviewapp import services
from reviewapp.models import Document
from tests.conftest import RECEIPT

pytestmark = pytest.mark.django_db


def create(workspace: Any, receipt_type: Any, n: int, prefix: str = "b") -> list[int]:
    return [
        services.document_create(
            workspace=workspace,
            document_type=receipt_type,
            user=None,
            data=(RECEIPT + f"\nref {prefix}{i}").encode(),
            filename=f"{prefix}{i}.txt",
        ).document.pk
        for i in range(n)
    ]


def messages_of(ids: list[int]) -> Counter[str]:
    """How many of the documents each task message carried, read from their runs' claim tokens."""
    tokens = {}
    for doc in Document.objects.filter(pk__in=ids):
        task_id = doc.runs.get().task_id
        message, _, pk = task_id.rpartition(":")
        assert pk == str(doc.pk), task_id  # the token names its document: claims of one message differ
        tokens[doc.pk] = message
    return Counter(tokens.values())


def test_a_bulk_import_sends_its_documents_a_batch_to_a_message(
    workspace: Any, receipt_type: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.REVIEWAPP_EXTRACT_BATCH = 4
    with django_capture_on_commit_callbacks(execute=True), services.extraction_batch():
        ids = create(workspace, receipt_type, 10)
    assert sorted(messages_of(ids).values()) == [2, 4, 4]
    for doc in Document.objects.filter(pk__in=ids):
        assert doc.status in ("needs_review", "auto_accepted"), doc.status_reason
        assert doc.fields.count() == 4


def test_documents_queued_one_by_one_still_travel_alone(
    workspace: Any, receipt_type: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        ids = create(workspace, receipt_type, 2)
    for doc in Document.objects.filter(pk__in=ids):
        assert ":" not in doc.runs.get().task_id  # extract_document: the token is the task id itself


def test_a_batch_block_that_fails_still_sends_what_it_committed(
    workspace: Any, receipt_type: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        services.extraction_batch(),
    ):
        ids = create(workspace, receipt_type, 3)
        raise RuntimeError("the import stopped at the fourth file")
    assert set(messages_of(ids).values()) == {3}  # sent, together, not left for the watchdog
    assert all(d.is_terminal for d in Document.objects.filter(pk__in=ids))


def test_a_crash_fails_that_document_alone(
    workspace: Any,
    receipt_type: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=False):  # created, not yet sent
        ids = create(workspace, receipt_type, 3)
    bad = ids[1]
    run_pipeline = services.run_pipeline

    def crash_on_bad(*, document: Any, **kwargs: Any) -> Any:
        if document.pk == bad:
            raise RuntimeError("a bug met one document")
        return run_pipeline(document=document, **kwargs)

    monkeypatch.setattr(services, "run_pipeline", crash_on_bad)
    result = extract_documents.apply(args=(ids,), task_id="t-crash").get()
    assert result == {"crashed": 1, **Counter(Document.objects.get(pk=pk).status for pk in ids if pk != bad)}
    failed = Document.objects.get(pk=bad)
    assert failed.status == "failed"
    assert failed.status_reason == "internal_error: RuntimeError: a bug met one document"
    assert failed.runs.get().status == "failed"  # closed, with its trace, not left running
    for pk in ids:
        if pk != bad:
            assert Document.objects.get(pk=pk).runs.get().status == "succeeded"


def test_a_database_outage_retries_the_message_with_the_documents_it_stopped(
    workspace: Any,
    receipt_type: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        ids = create(workspace, receipt_type, 3)
    down_for = {ids[0], ids[2]}
    seen: list[tuple[int, str]] = []
    execute = services.extraction_execute

    def flaky(*, document_id: int, token: str) -> str:
        seen.append((document_id, token))
        if document_id in down_for:
            down_for.discard(document_id)  # the database is back for the retry
            raise OperationalError("connection refused")
        return execute(document_id=document_id, token=token)

    monkeypatch.setattr(services, "extraction_execute", flaky)
    extract_documents.apply(args=(ids,), task_id="t-outage").get()
    # The retry carried only the two documents the outage stopped, under the same claim tokens.
    assert seen == [(pk, f"t-outage:{pk}") for pk in ids] + [
        (ids[0], f"t-outage:{ids[0]}"),
        (ids[2], f"t-outage:{ids[2]}"),
    ]
    for doc in Document.objects.filter(pk__in=ids):
        assert doc.status in ("needs_review", "auto_accepted"), doc.status_reason
        assert doc.runs.filter(status="succeeded").count() == 1


def test_a_redelivered_message_skips_the_documents_it_already_finished(
    workspace: Any, receipt_type: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        ids = create(workspace, receipt_type, 2)
    first = extract_documents.apply(args=(ids,), task_id="t-again").get()
    again = extract_documents.apply(args=(ids,), task_id="t-again").get()
    assert sum(first.values()) == 2 and "skipped" not in first
    assert again == {"skipped": 2}
    for doc in Document.objects.filter(pk__in=ids):
        assert doc.runs.count() == 1
