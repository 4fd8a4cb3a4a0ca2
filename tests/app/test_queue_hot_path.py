"""The queue page and the accept, the two requests a reviewer repeats: their statements, the lease they keep,
and what the accept's response shows next (bench/LOAD.md measures them under load)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reviewapp import services
from reviewapp.errors import StaleDecision
from reviewapp.models import FieldValue, ReviewDecision
from reviewapp.selectors import QueueFilters
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def held_by(user: Any) -> list[FieldValue]:
    return list(FieldValue.objects.filter(claimed_by=user, claim_expires_at__gt=timezone.now()))


def sql_of(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries]


def accept(c: Client, field: FieldValue, **extra: Any) -> Any:
    return c.post(
        f"/fields/{field.pk}/decide/",
        {"action": "accept", "version": field.version, **extra},
        HTTP_HX_REQUEST="true",
    )


COUNTS_SQL = "SELECT (SELECT COUNT(*)"


@pytest.mark.django_db(transaction=True)  # real commits: the counts are adjusted when the decision commits
def test_accept_runs_a_fixed_number_of_statements(make_document: Any, reviewer: Any) -> None:
    for i in range(2):
        make_document(filename=f"a{i}.txt")
    c = client_for(reviewer)
    c.get("/")
    field = held_by(reviewer)[0]
    with CaptureQueriesContext(connection) as few:
        response = accept(c, field)
    assert response.status_code == 200
    for i in range(6):
        make_document(filename=f"more{i}.txt")
    field = held_by(reviewer)[0]
    with CaptureQueriesContext(connection) as many:
        accept(c, field)
    assert len(many) == len(few), sql_of(many)
    # user, memberships; the decision (locked read, update, insert, any field left?, and here the document's
    # closing: each receipt has one field to review) and the next claim (candidates, lease, the claimed row)
    # in one transaction (+2 for its begin and end); after its commit, the closed document's webhooks; the
    # siblings. The counts come from the cache, adjusted by the decision.
    assert len(few) == 14, "\n".join(s[:90] for s in sql_of(few))
    assert not [s for s in sql_of(few) if s.startswith(COUNTS_SQL)]


def test_queue_page_reload_reads_only(make_document: Any, reviewer: Any) -> None:
    make_document()
    c = client_for(reviewer)
    with CaptureQueriesContext(connection) as first:
        c.get("/")
    with CaptureQueriesContext(connection) as page:
        c.get("/")
    statements = sql_of(page)
    assert not [s for s in statements if s.startswith(("UPDATE", "INSERT", "DELETE"))], statements
    # user, memberships, the held field with its document, type and spec, siblings; the counts and the filter
    # options come from the cache that the first page filled (counts in one statement, options in two)
    assert len(statements) == 4, statements
    assert len([s for s in sql_of(first) if s.startswith(COUNTS_SQL)]) == 1
    assert not [s for s in statements if s.startswith((COUNTS_SQL, 'SELECT "reviewapp_documenttype"."slug"'))]


def test_a_reload_extends_a_lease_only_once_it_has_aged(make_document: Any, reviewer: Any) -> None:
    make_document()
    c = client_for(reviewer)
    c.get("/")
    (field,) = held_by(reviewer)
    fresh = field.claim_expires_at
    c.get("/")
    field.refresh_from_db()
    assert field.claim_expires_at == fresh  # claimed a moment ago: not written again
    aged = timezone.now() + timedelta(seconds=200)
    FieldValue.objects.filter(pk=field.pk).update(claim_expires_at=aged)
    c.get("/")
    field.refresh_from_db()
    assert field.claim_expires_at > aged + timedelta(seconds=90)
    assert field.claimed_by == reviewer


def test_after_a_decision_a_field_you_still_hold_comes_first(make_document: Any, reviewer: Any) -> None:
    for i in range(3):
        make_document(filename=f"h{i}.txt")
    filters = QueueFilters()
    kept = services.queue_claim_next(user=reviewer, filters=filters)
    # Skip it (j), then go back (k) to nothing: another field is claimed while `kept` stays held.
    other = services.queue_claim_next(user=reviewer, filters=filters, skip=(kept.pk,))
    assert other.pk != kept.pk and {f.pk for f in held_by(reviewer)} == {kept.pk, other.pk}
    body = accept(client_for(reviewer), other).content.decode()
    assert f'data-field="{kept.pk}"' in body
    assert {f.pk for f in held_by(reviewer)} == {kept.pk}


def test_a_refused_decision_claims_nothing(make_document: Any, reviewer: Any, second_reviewer: Any) -> None:
    for i in range(2):
        make_document(filename=f"s{i}.txt")
    field = services.queue_claim_next(user=reviewer, filters=QueueFilters())
    services.field_decide(user=reviewer, field_id=field.pk, action="reject", version=field.version)
    with pytest.raises(StaleDecision):
        services.queue_decide_next(
            user=second_reviewer,
            field_id=field.pk,
            action="accept",
            version=field.version,
            value=None,
            filters=QueueFilters(),
        )
    assert held_by(second_reviewer) == []
    assert ReviewDecision.objects.filter(reviewer=second_reviewer).count() == 0


def test_a_decision_on_an_older_extraction_is_refused(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    field = FieldValue.objects.filter(document=doc, status="needs_review").first()
    doc.runs.filter(pk=field.run_id).update(status="failed")  # no current run any more
    response = accept(client_for(reviewer), field)
    assert 'data-code="already_decided"' in response.content.decode()
    field.refresh_from_db()
    assert field.status == "needs_review" and not ReviewDecision.objects.exists()


@pytest.mark.django_db(transaction=True)  # real commits: the counts are adjusted when the decision commits
def test_counts_reflect_your_own_decision_at_once(make_document: Any, reviewer: Any) -> None:
    make_document()
    c = client_for(reviewer)
    c.get("/")  # caches the counts
    open_before = FieldValue.objects.filter(status="needs_review").count()
    body = accept(c, held_by(reviewer)[0]).content.decode()
    assert f'<strong data-testid="open-count">{open_before - 1}</strong>' in body
    assert "1 decided today by you" in body
