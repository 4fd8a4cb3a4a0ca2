"""Group commit of extraction results (reviewapp/runstore.py): runs finishing together in one process share a
transaction, each run learns its own outcome, and a failed batch loses nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from extraction.tasks import extract_document
from reviewapp import runstore, services
from reviewapp.models import Document, FieldValue, LLMCall
from tests.conftest import RECEIPT

pytestmark = pytest.mark.django_db(transaction=True)  # the runs' threads must see each other's commits


def _queued(workspace: Any, doc_type: Any, n: int) -> list[int]:
    return [
        Document.objects.create(
            workspace=workspace, document_type=doc_type, filename=f"r{i}.txt", sha256="0" * 64,
            text=RECEIPT + f"\nref {i}",
        ).pk
        for i in range(n)
    ]  # fmt: skip


def _run_together(target: Any, ids: list[int]) -> dict[int, Any]:
    """Run target(document_id) for every id on its own thread, all at once; return each result or error."""
    results: dict[int, Any] = {}
    start = threading.Barrier(len(ids))

    def work(doc_id: int) -> None:
        start.wait()
        try:
            results[doc_id] = target(doc_id)
        except Exception as exc:
            results[doc_id] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.fixture
def batches(monkeypatch: Any, settings: Any) -> list[list[int]]:
    """Record the documents of each results transaction; a wide window so that the runs meet."""
    settings.REVIEWAPP_RESULT_BATCH_MS = 1000
    seen: list[list[int]] = []
    real = runstore.write_results

    def spy(items: Any, now: Any) -> None:
        seen.append([it.document.pk for it in items])
        real(items, now)

    monkeypatch.setattr(runstore, "write_results", spy)
    return seen


def test_runs_finishing_together_share_one_transaction(
    workspace: Any, receipt_type: Any, batches: list[list[int]]
) -> None:
    ids = _queued(workspace, receipt_type, 4)
    outcomes = _run_together(lambda i: services.extraction_execute(document_id=i, token=f"t{i}"), ids)
    assert sorted(outcomes) == sorted(ids)
    for doc in Document.objects.filter(pk__in=ids):
        assert outcomes[doc.pk] == doc.status and doc.status in ("needs_review", "auto_accepted")
        (run,) = doc.runs.all()
        assert run.status == "succeeded" and run.finished_at is not None
        assert FieldValue.objects.filter(run=run).count() == receipt_type.fields.count()
        steps = LLMCall.objects.filter(run=run).order_by("id").values_list("step", flat=True)
        assert list(steps) == ["classify", "extract", "verify"]  # ids in the order the calls were made
    assert sorted(i for batch in batches for i in batch) == sorted(ids)  # each stored exactly once
    assert max(len(b) for b in batches) > 1, batches  # and some of them together


def test_a_document_taken_away_mid_run_is_superseded_alone(
    workspace: Any, receipt_type: Any, batches: list[list[int]], monkeypatch: Any
) -> None:
    ids = _queued(workspace, receipt_type, 3)
    lost = ids[1]
    real = services.run_pipeline

    def pipeline_then_requeue(**kwargs: Any) -> Any:
        out = real(**kwargs)
        if kwargs["document"].pk == lost:  # an admin re-queued it while the models answered
            Document.objects.filter(pk=lost).update(status="queued", claim_token="")
        return out

    monkeypatch.setattr(services, "run_pipeline", pipeline_then_requeue)
    outcomes = _run_together(lambda i: services.extraction_execute(document_id=i, token=f"t{i}"), ids)
    assert outcomes[lost] == "superseded"
    gone = Document.objects.get(pk=lost)
    assert gone.status == "queued" and not gone.fields.exists()
    (run,) = gone.runs.all()
    assert run.status == "abandoned" and LLMCall.objects.filter(run=run).count() == 3  # traces kept
    for i in ids:
        if i != lost:
            doc = Document.objects.get(pk=i)
            assert outcomes[i] == doc.status and doc.status in ("needs_review", "auto_accepted")
            assert doc.fields.count() == receipt_type.fields.count()
    assert any(lost in b and len(b) > 1 for b in batches), batches  # it shared a batch with the others


def test_a_failed_batch_fails_every_run_in_it_visibly_and_keeps_their_calls(
    workspace: Any, receipt_type: Any, batches: list[list[int]], monkeypatch: Any
) -> None:
    ids = _queued(workspace, receipt_type, 3)

    def broken(items: Any, now: Any) -> None:
        raise RuntimeError("disk full")

    # The statement that stores the batch fails: nothing of it is stored.
    monkeypatch.setattr(runstore, "_write_in_one_statement", broken)
    outcomes = _run_together(lambda i: extract_document.apply(args=(i,)).result, ids)
    assert all(isinstance(outcomes[i], RuntimeError) for i in ids), outcomes
    for doc in Document.objects.filter(pk__in=ids):
        assert doc.status == "failed" and "disk full" in doc.status_reason  # visible, not stuck extracting
        (run,) = doc.runs.all()
        assert run.status == "failed" and run.error_code == "internal_error"
        assert not doc.fields.exists()
        assert LLMCall.objects.filter(run=run).count() == 3  # written by the run's own flush, as traces
    assert max(len(b) for b in batches) > 1, batches


def test_two_deliveries_of_one_document_in_one_batch_store_only_the_later_claim(
    workspace: Any, receipt_type: Any, batches: list[list[int]], settings: Any, monkeypatch: Any
) -> None:
    """A redelivery of the same task (same token) takes the claim over: the claim count tells the two runs'
    results apart even when both land in the same statement."""
    settings.REVIEWAPP_CLAIM_BATCH_MS = 0  # both claims succeed, one after the other (no shared claim)
    (doc_id,) = _queued(workspace, receipt_type, 1)
    claimed: dict[int, int] = {}  # thread -> the claim count its delivery saw
    real_claim = services._claim
    me = threading.local()

    def claim(*args: Any) -> Any:
        document = real_claim(*args)
        claimed[me.i] = document.deliveries
        return document

    # Patched once for both threads (a patch per thread would restore the other thread's wrapper, not the real
    # function, and leak it into later tests).
    monkeypatch.setattr(services, "_claim", claim)

    def delivery(i: int) -> str:
        me.i = i
        return services.extraction_execute(document_id=doc_id, token="same-task")

    outcomes = _run_together(delivery, [0, 1])
    doc = Document.objects.get(pk=doc_id)
    later = max(claimed, key=claimed.get)
    assert outcomes[later] == doc.status and outcomes[1 - later] == "superseded", (outcomes, claimed)
    assert doc.deliveries == 2 and doc.status in ("needs_review", "auto_accepted")
    runs = {r.status: r for r in doc.runs.all()}
    assert sorted(runs) == ["abandoned", "succeeded"]
    # The fields are the later claim's run's, once; each run keeps its own three calls.
    assert set(doc.fields.values_list("run", flat=True)) == {runs["succeeded"].pk}
    assert doc.fields.count() == receipt_type.fields.count()
    for run in runs.values():
        assert LLMCall.objects.filter(run=run).count() == 3
    assert batches == [[doc_id, doc_id]], batches


def test_a_run_stored_early_by_a_failed_call_is_finished_in_place(
    workspace: Any, receipt_type: Any, batches: list[list[int]], monkeypatch: Any
) -> None:
    """A failed call is written at once, so its run is stored while running; the batch holding it then
    updates that row (runstore's statement-at-a-time path) and still stores the other runs."""
    from extraction.gateway import CallRecord

    ids = _queued(workspace, receipt_type, 3)
    real = services.run_pipeline

    def pipeline_with_a_failed_retry(**kwargs: Any) -> Any:
        out = real(**kwargs)
        if kwargs["document"].pk == ids[0]:
            kwargs["calls"].add(CallRecord(
                step="verify", attempt=1, chunk=None, prompt_version="v", model_alias="primary",
                model_requested="m", messages=[{"role": "user", "content": "x"}], started_at=0.0,
                error_class="Timeout",
            ))  # fmt: skip
        return out

    monkeypatch.setattr(services, "run_pipeline", pipeline_with_a_failed_retry)
    outcomes = _run_together(lambda i: services.extraction_execute(document_id=i, token=f"t{i}"), ids)
    for doc in Document.objects.filter(pk__in=ids):
        assert outcomes[doc.pk] == doc.status and doc.status in ("needs_review", "auto_accepted")
        (run,) = doc.runs.all()
        assert run.status == "succeeded" and run.finished_at is not None
        calls = LLMCall.objects.filter(run=run)
        assert calls.count() == (4 if doc.pk == ids[0] else 3)
        assert FieldValue.objects.filter(run=run).count() == receipt_type.fields.count()
    assert LLMCall.objects.filter(document_id=ids[0], error_class="Timeout", run__isnull=False).count() == 1
    assert any(ids[0] in b and len(b) > 1 for b in batches), batches


# --- claims, group-committed ----------------------------------------------------------------------------
@pytest.fixture
def claim_batches(monkeypatch: Any, settings: Any) -> list[list[tuple[int, str]]]:
    """Record the requests of each claim statement; a wide window so that the claims meet."""
    settings.REVIEWAPP_CLAIM_BATCH_MS = 1000
    seen: list[list[tuple[int, str]]] = []
    real = runstore.claim_many

    def spy(requests: Any, **kwargs: Any) -> Any:
        seen.append(list(requests))
        return real(requests, **kwargs)

    monkeypatch.setattr(runstore, "claim_many", spy)
    return seen


def test_claims_arriving_together_share_one_statement(
    workspace: Any, receipt_type: Any, claim_batches: list[Any]
) -> None:
    ids = _queued(workspace, receipt_type, 4)
    got = _run_together(lambda i: services._claim(i, f"t{i}"), ids)
    assert len(claim_batches) == 1 and sorted(claim_batches[0]) == sorted((i, f"t{i}") for i in ids)
    for i in ids:
        document = got[i]
        assert document.pk == i and document.claim_token == f"t{i}" and document.deliveries == 1
        assert document.document_type.fields.count() == receipt_type.fields.count()  # loaded with its type
        assert document.workspace.slug == workspace.slug
    stored = Document.objects.filter(pk__in=ids)
    assert {(d.status, d.deliveries) for d in stored} == {("extracting", 1)}
    assert {d.pk: d.claim_token for d in stored} == {i: f"t{i}" for i in ids}


def test_two_deliveries_of_one_task_in_one_claim_batch_run_once(
    workspace: Any, receipt_type: Any, claim_batches: list[Any]
) -> None:
    """A redelivery meeting the first delivery in the same claim statement is refused, as if it came second
    while the first ran: one run, one 'skipped', the message acked by both."""
    (doc_id,) = _queued(workspace, receipt_type, 1)
    outcomes = _run_together(lambda i: services.extraction_execute(document_id=doc_id, token="same"), [0, 1])
    status = Document.objects.get(pk=doc_id).status
    assert sorted(map(str, outcomes.values())) == sorted(["skipped", str(status)]), outcomes
    doc = Document.objects.get(pk=doc_id)
    assert doc.deliveries == 1 and doc.status in ("needs_review", "auto_accepted")
    assert [r.status for r in doc.runs.all()] == ["succeeded"]
    assert claim_batches == [[(doc_id, "same"), (doc_id, "same")]]


def test_one_claim_statement_decides_like_a_claim_each(workspace: Any, receipt_type: Any) -> None:
    """claim_many's statement applies claim()'s rule to each document: queued is taken, one extracting
    under the same token is taken back, under another token only once stale, a terminal one never."""
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    stale = now - timedelta(minutes=30)
    ids = _queued(workspace, receipt_type, 6)
    setups = [  # (status, claim_token, claimed_at) before; then who asks
        ("queued", "", None, "a"),
        ("extracting", "b", now - timedelta(minutes=1), "b"),  # its own redelivery
        ("extracting", "x", now - timedelta(minutes=1), "c"),  # someone else's, fresh
        ("extracting", "x", now - timedelta(hours=1), "d"),  # someone else's, stale
        ("needs_review", "x", now - timedelta(hours=1), "e"),  # done
        ("failed", "", None, "f"),
    ]

    def reset() -> None:
        for i, (status, token, at, _) in zip(ids, setups, strict=True):
            Document.objects.filter(pk=i).update(
                status=status, claim_token=token, claimed_at=at, deliveries=1
            )

    reset()
    one_by_one = [
        runstore.claim(i, s[3], now=now, stale_before=stale) for i, s in zip(ids, setups, strict=True)
    ]
    after_each = list(
        Document.objects.filter(pk__in=ids).order_by("pk").values_list("status", "claim_token", "deliveries")
    )
    reset()
    with connection.execute_wrapper(_count_statements := _Counter()):
        together = runstore.claim_many(
            [(i, s[3]) for i, s in zip(ids, setups, strict=True)], now=now, stale_before=stale
        )
    after_all = list(
        Document.objects.filter(pk__in=ids).order_by("pk").values_list("status", "claim_token", "deliveries")
    )
    assert [d is not None for d in one_by_one] == [True, True, False, True, False, False]
    assert [d and (d.pk, d.claim_token, d.deliveries) for d in together] == [
        d and (d.pk, d.claim_token, d.deliveries) for d in one_by_one
    ]
    assert after_all == after_each
    assert _count_statements.n == 1


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.n += 1
        return execute(sql, params, many, context)
