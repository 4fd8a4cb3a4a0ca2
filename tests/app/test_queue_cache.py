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
from reviewapp.compiled import Actual, bind, instances, model_statement
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


def snapshot(obj: Any) -> Any:
    """What a model instance holds: its loaded attributes (and annotations), deferred fields, cached related rows."""
    if obj is None:
        return None
    attrs = {k: v for k, v in obj.__dict__.items() if k != "_state"}
    related = {k: snapshot(v) for k, v in obj._state.fields_cache.items()}
    return type(obj), attrs, sorted(obj.get_deferred_fields()), related, obj._state.db, obj._state.adding


def compiled_and_orm(build: Any, shape: tuple[Any, ...], values: dict[str, Any]) -> tuple[Any, Any]:
    """(SQL, parameters, instances) of the compiled statement (compiled.instances) and of the ORM's queryset."""
    for _ in range(2):  # the second time from the compiled statement
        got = instances(build, shape, values)
    st = model_statement(build, connection.vendor, *shape)
    assert st is not None
    orm_qs = build(Actual(values), *shape)
    sql, params = orm_qs.query.sql_with_params()
    return (st.sql, bind(st.slots, values), [snapshot(o) for o in got]), (
        sql,
        list(params),
        [snapshot(o) for o in orm_qs],
    )


def test_the_compiled_claimed_field_is_the_orms(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    fields = selectors.document_fields(doc)
    FieldValue.objects.filter(pk=fields[0].pk).update(value={"a": [1, "<b>"]}, evidence_start=None)
    for fv in fields[:2]:
        compiled, orm = compiled_and_orm(selectors._claimed_by_pk, (), {"pk": fv.pk})
        assert compiled == orm
        assert len(compiled[2]) == 1 and compiled[2][0][3]  # the related document, type and spec are cached
        assert snapshot(selectors.claimed_field(fv.pk)) == snapshot(selectors.claimed().get(pk=fv.pk))
    with pytest.raises(FieldValue.DoesNotExist):
        selectors.claimed_field(-1)


@pytest.mark.parametrize(
    ("filters", "skip"),
    [
        (QueueFilters(), ()),
        (QueueFilters(sort="age"), (1, 2)),
        (QueueFilters(document_type="receipt", field="total", band="mid", max_age_days=7), (3,)),
        (QueueFilters(workspace=-1), ()),  # a workspace the reviewer is not in: nothing
    ],
)
def test_the_compiled_held_field_is_the_orms(
    make_document: Any, reviewer: Any, other_workspace: Workspace, filters: Any, skip: Any
) -> None:
    Membership.objects.create(user=reviewer, workspace=other_workspace)
    make_document()
    make_document(ws=other_workspace, filename="other.txt")
    now = timezone.now()
    assert selectors.held_field(reviewer, filters, now=now, skip=skip) is None  # nothing held yet
    claimed = services.queue_claim_next(user=reviewer, filters=QueueFilters())
    got = selectors._queue_shape(reviewer, filters, now=now, skip=skip)
    if filters.workspace is not None:
        assert got is None and selectors.held_field(reviewer, filters, now=now, skip=skip) is None
        return
    shape, values = got
    compiled, orm = compiled_and_orm(selectors._held_by, shape, values)
    assert compiled == orm
    held = selectors.held_field(reviewer, filters, now=now, skip=skip)
    if filters == QueueFilters():
        assert held is not None and held.pk == claimed.pk
        assert selectors.held_field(reviewer, filters, now=now, skip=(claimed.pk,)) is None
        later = now + timedelta(seconds=400)  # the lease has expired by then
        assert selectors.held_field(reviewer, filters, now=later) is None


@pytest.mark.parametrize("n_workspaces", [1, 2])
def test_the_decisions_compiled_locked_read_is_the_orms(
    make_document: Any, reviewer: Any, other_workspace: Workspace, n_workspaces: int
) -> None:
    if n_workspaces == 2:
        Membership.objects.create(user=reviewer, workspace=other_workspace)
    doc = make_document()
    field = selectors.document_fields(doc)[0]
    ids = selectors.workspace_ids(reviewer)
    values = {"pk": field.pk, **{f"ws{i}": w for i, w in enumerate(ids)}}
    with transaction.atomic():
        compiled, orm = compiled_and_orm(services._locked_field, (len(ids),), values)
    assert compiled == orm
    assert 'FOR UPDATE OF "reviewapp_fieldvalue"' in compiled[0]  # the row, not its spec
    (fv,) = compiled[2]
    assert fv[1]["current_run_id"] == field.run_id and "field_spec" in fv[3]
    # Another workspace's field is not found, as with the ORM.
    with transaction.atomic():
        assert instances(services._locked_field, (1,), {"pk": field.pk, "ws0": -5}) == []


def test_the_compiled_claim_update_is_the_orms_and_respects_live_leases(
    make_document: Any, reviewer: Any, second_reviewer: Any
) -> None:
    doc = make_document()
    a, b = selectors.document_fields(doc)[:2]
    FieldValue.objects.filter(pk__in=[a.pk, b.pk]).update(status="needs_review", claimed_by=None)
    now = timezone.now()
    expires = now + timedelta(seconds=300)
    with transaction.atomic():
        with CaptureQueriesContext(connection) as compiled:
            assert services._claim_update(a.pk, reviewer.pk, now, expires) == 1
        transaction.set_rollback(True)
    with transaction.atomic():
        with CaptureQueriesContext(connection) as orm:
            qs = services._claimable(a.pk, reviewer, now)
            assert qs.update(claimed_by=reviewer, claim_expires_at=expires) == 1
        transaction.set_rollback(True)
    assert [q["sql"] for q in compiled.captured_queries] == [q["sql"] for q in orm.captured_queries]
    # A live lease of another reviewer wins; the reviewer's own lease, an expired one or none are taken.
    assert services._claim_update(a.pk, second_reviewer.pk, now, expires) == 1
    assert services._claim_update(a.pk, reviewer.pk, now, expires) == 0
    assert services._claim_update(a.pk, second_reviewer.pk, now, expires) == 1  # its own
    later = expires + timedelta(seconds=1)
    assert services._claim_update(a.pk, reviewer.pk, later, later + timedelta(seconds=300)) == 1
    FieldValue.objects.filter(pk=b.pk).update(status="accepted")
    assert services._claim_update(b.pk, reviewer.pk, now, expires) == 0  # decided: not claimable
    a.refresh_from_db()
    assert a.claimed_by_id == reviewer.pk


@pytest.mark.django_db(transaction=True)  # autocommit: no transaction around the test
def test_the_compiled_locked_read_refuses_to_run_outside_a_transaction(reviewer: Any) -> None:
    from django.db.transaction import TransactionManagementError

    with pytest.raises(TransactionManagementError):  # as the ORM's select_for_update
        instances(services._locked_field, (1,), {"pk": 1, "ws0": 1})
