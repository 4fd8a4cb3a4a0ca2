"""What the queue keeps between requests (bench/LOAD.md, third pass): the counts and the filter options in the
cache, adjusted or dropped when what they show changes; statements compiled once and run with each request's
values; the Redis cache client kept instead of rebuilt."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reviewapp import selectors, services
from reviewapp.models import DocumentType, FieldValue, Membership, Workspace
from reviewapp.selectors import QueueFilters
from tests.conftest import client_for

pytestmark = pytest.mark.django_db
COUNTS_SQL = "SELECT (SELECT COUNT(*)"


def open_count(body: str) -> str:
    return body.split('data-testid="open-count">', 1)[1].split("<", 1)[0]


def accept(c: Client, field: FieldValue) -> str:
    response = c.post(
        f"/fields/{field.pk}/decide/", {"action": "accept", "version": field.version}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db(transaction=True)  # the counts are adjusted when a decision commits
def test_a_decision_adjusts_the_count_other_reviewers_see_without_a_recount(
    make_document: Any, reviewer: Any, second_reviewer: Any
) -> None:
    for i in range(3):
        make_document(filename=f"r{i}.txt")
    rita, sam = client_for(reviewer), client_for(second_reviewer)
    assert open_count(rita.get("/").content.decode()) == "3"
    sam.get("/")
    field = FieldValue.objects.get(claimed_by=second_reviewer)
    accept(sam, field)
    with CaptureQueriesContext(connection) as page:
        body = rita.get("/").content.decode()
    assert open_count(body) == "2"  # the shared count, decremented by sam's decision
    assert not [q for q in page.captured_queries if q["sql"].startswith(COUNTS_SQL)]
    assert "0 decided today by you" in body  # sam's decision is not rita's


def test_a_rolled_back_decision_leaves_the_counts_alone(
    make_document: Any, reviewer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    make_document()
    filters = QueueFilters()
    before = selectors.queue_counts(reviewer, filters)
    field = services.queue_claim_next(user=reviewer, filters=filters)
    with (
        django_capture_on_commit_callbacks(execute=True) as adjustments,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        services.field_decide(user=reviewer, field_id=field.pk, action="accept", version=field.version)
        raise RuntimeError("the request failed after the decision")
    assert adjustments == []
    assert selectors.queue_counts(reviewer, filters) == before == {"open": 1, "done_today": 0}


def test_a_count_above_the_cap_stays_above_it_after_decisions(
    make_document: Any, reviewer: Any, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    for i in range(4):
        make_document(filename=f"c{i}.txt")
    monkeypatch.setattr(selectors, "OPEN_COUNT_CAP", 2)
    filters = QueueFilters()
    assert selectors.queue_counts(reviewer, filters) == {"open": 3, "done_today": 0}  # 3: "more than 2"
    for _ in range(2):
        field = services.queue_claim_next(user=reviewer, filters=filters)
        with django_capture_on_commit_callbacks(execute=True):
            services.field_decide(user=reviewer, field_id=field.pk, action="accept", version=field.version)
    # 2 fields are left, but the cached count only knew "more than 2": it says so until it is recounted
    assert selectors.queue_counts(reviewer, filters) == {"open": 3, "done_today": 2}
    cache.clear()
    assert selectors.queue_counts(reviewer, filters) == {"open": 2, "done_today": 2}


def test_new_fields_show_in_the_count_once_it_expires(
    make_document: Any, reviewer: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(selectors, "QUEUE_COUNTS_SECONDS", 1)
    make_document()
    assert selectors.queue_counts(reviewer)["open"] == 1
    make_document(filename="later.txt")
    assert selectors.queue_counts(reviewer)["open"] == 1  # cached
    time.sleep(1.1)
    assert selectors.queue_counts(reviewer)["open"] == 2


def test_filter_options_follow_workspace_and_type_changes_and_stay_per_workspace(
    make_document: Any, reviewer: Any, outsider: Any, workspace: Workspace
) -> None:
    make_document()
    c = client_for(reviewer)
    with CaptureQueriesContext(connection) as first:
        assert ">Acme</option>" in c.get("/").content.decode()
    assert [
        q for q in first.captured_queries if q["sql"].startswith('SELECT "reviewapp_documenttype"."slug"')
    ]
    Workspace.objects.filter(pk=workspace.pk).update(name="Renamed")  # no signal: the cached options stay
    assert ">Acme</option>" in c.get("/").content.decode()
    Workspace.objects.get(pk=workspace.pk).save()  # a save (the admin's) drops them, in every process
    body = c.get("/").content.decode()
    assert ">Renamed</option>" in body and ">Acme</option>" not in body
    DocumentType.objects.create(slug="invoice-x", name="Invoice X")
    assert ">Invoice X</option>" in c.get("/").content.decode()
    outsider_page = client_for(outsider).get("/").content.decode()
    assert ">Renamed</option>" not in outsider_page and ">Globex</option>" in outsider_page


def test_a_new_membership_shows_its_workspace_at_once(reviewer: Any, other_workspace: Workspace) -> None:
    c = client_for(reviewer)
    assert ">Globex</option>" not in c.get("/").content.decode()
    Membership.objects.create(user=reviewer, workspace=other_workspace)
    assert ">Globex</option>" in c.get("/").content.decode()


@pytest.mark.parametrize(
    ("filters", "skip", "held"),
    [
        (QueueFilters(), (), True),
        (QueueFilters(), (5, 7, 5), False),
        (
            QueueFilters(document_type="receipt", field="total", band="mid", max_age_days=7, sort="age"),
            (3,),
            True,
        ),
        (QueueFilters(workspace=-1), (), True),  # a workspace the reviewer is not in: nothing
    ],
)
def test_the_compiled_candidate_statement_is_the_orms(
    make_document: Any,
    reviewer: Any,
    workspace: Workspace,
    other_workspace: Workspace,
    filters: Any,
    skip: Any,
    held: bool,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("compiled only where UNION parts can be ordered and limited (PostgreSQL)")
    Membership.objects.create(user=reviewer, workspace=other_workspace)
    make_document()
    make_document(ws=other_workspace, filename="other.txt")
    now = timezone.now()
    for _ in range(2):  # the second time from the compiled template
        got = selectors.claim_candidates_statement(reviewer, filters, now=now, skip=skip, held=held)
    ids = selectors.workspace_ids(reviewer)
    if filters.workspace is not None:
        assert got is None and selectors.claim_candidates(reviewer, filters, now=now) == []
        return
    orm = selectors._claim_candidates(
        ids=ids,
        user_id=reviewer.pk,
        now=now,
        since=now - timedelta(days=filters.max_age_days or 0),
        skip=tuple(dict.fromkeys(skip)),
        filters=filters,
        held=held,
    )
    sql, params = orm.query.sql_with_params()
    assert got == (sql, list(params))
    rows = selectors.claim_candidates(reviewer, filters, now=now, skip=skip, held=held)
    assert rows == [tuple(r) for r in orm]
    if filters == QueueFilters():
        assert len(rows) == 2  # both workspaces' open fields


def test_queue_siblings_read_from_compiled_sql_match_the_fields(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    fields = selectors.document_fields(doc)
    corrected = fields[0]
    FieldValue.objects.filter(pk=corrected.pk).update(status="corrected", final_value={"a": [1, "<b>"]})
    FieldValue.objects.filter(pk=fields[1].pk).update(value=None, final_value=None)
    rows = selectors.queue_siblings(doc)
    assert [r["pk"] for r in rows] == [f.pk for f in fields]
    assert rows[0]["shown"] == {"a": [1, "<b>"]} and rows[0]["label"] == "Corrected"
    assert rows[1]["shown"] == "—"
    assert rows[2]["shown"] == fields[2].value


def test_the_other_fields_list_is_escaped(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    other = FieldValue.objects.filter(document=doc).exclude(status="needs_review").first()
    FieldValue.objects.filter(pk=other.pk).update(final_value="<script>x()</script>")
    body = client_for(reviewer).get("/").content.decode()
    assert "<script>x()</script>" not in body
    assert '<span class="fval">&lt;script&gt;x()&lt;/script&gt;</span>' in body


@pytest.fixture
def redis_cache() -> Any:
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith("redis://"):
        pytest.skip("needs Redis (make test sets CELERY_BROKER_URL=redis://…)")
    from reviewapp.cache import RedisCache

    return RedisCache(url, {"KEY_PREFIX": f"test-{uuid.uuid4().hex}"})


def test_the_redis_cache_keeps_one_client(redis_cache: Any) -> None:
    redis_cache.set("a", 1, 30)
    client = redis_cache._cache.get_client()
    assert redis_cache.get("a") == 1
    assert redis_cache._cache.get_client() is client
    assert redis_cache._cache.get_client(write=True) is client  # one server: one pool, one client
    redis_cache.delete("a")


def test_redis_incr_counts_only_an_existing_key_and_keeps_its_expiry(redis_cache: Any) -> None:
    with pytest.raises(ValueError):
        redis_cache.incr("missing", 1)
    assert redis_cache.get("missing") is None  # not created without an expiry
    redis_cache.set("n", 5, 30)
    assert redis_cache.decr("n", 2) == 3
    assert redis_cache.get("n") == 3
    key = redis_cache.make_key("n")
    assert 0 < redis_cache._cache.get_client().ttl(key) <= 30
    redis_cache.delete("n")
