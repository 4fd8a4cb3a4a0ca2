"""The queue page and the accept, the two requests a reviewer repeats: their statements, the lease they keep,
and what the accept's response shows next (bench/LOAD.md measures them under load)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from reviewapp import services
from reviewapp.models import FieldValue, ReviewDecision
from reviewapp.selectors import QueueFilters

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


def held_by(user: Any) -> list[FieldValue]:
    return list(FieldValue.objects.filter(claimed_by=user, claim_expires_at__gt=timezone.now()))


def accept(c: Client, field: FieldValue, **extra: Any) -> Any:
    return c.post(
        f"/fields/{field.pk}/decide/",
        {"action": "accept", "version": field.version, **extra},
        HTTP_HX_REQUEST="true",
    )


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


def test_a_decision_on_an_older_extraction_is_refused(make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    field = FieldValue.objects.filter(document=doc, status="needs_review").first()
    doc.runs.filter(pk=field.run_id).update(status="failed")  # no current run any more
    response = accept(client_for(reviewer), field)
    assert 'data-code="already_decided"' in response.content.decode()
    field.refresh_from_db()
    assert field.status == "needs_review" and not ReviewDecision.objects.exists()


def test_counts_reflect_your_own_decision_at_once(make_document: Any, reviewer: Any) -> None:
    make_document()
    c = client_for(reviewer)
    c.get("/")
    open_before = FieldValue.objects.filter(status="needs_review").count()
    body = accept(c, held_by(reviewer)[0]).content.decode()
    assert f'<strong data-testid="open-count">{open_before - 1}</strong>' in body
    assert "1 decided today by you" in body
