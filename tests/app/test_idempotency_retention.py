"""Idempotency-Key records expire after REVIEWAPP_IDEMPOTENCY_TTL_SECONDS: an expired key is new, and a
periodic job purges the old records."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from extraction import tasks
from reviewapp.api import idempotency
from reviewapp.celery import app as celery_app
from reviewapp.models import Document, IdempotencyRecord
from tests.conftest import RECEIPT

pytestmark = pytest.mark.django_db
TTL = 3600


@pytest.fixture(autouse=True)
def _one_hour_ttl(settings: Any) -> None:
    settings.REVIEWAPP_IDEMPOTENCY_TTL_SECONDS = TTL


@pytest.fixture
def client(reviewer: Any, receipt_type: Any) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=reviewer).key}")
    return c


def post(client: APIClient, text: str, key: str) -> Any:
    body = {"document_type": "receipt", "text": text}
    return client.post("/api/v1/documents/", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def age(key: str, seconds: float) -> None:
    IdempotencyRecord.objects.filter(key=key).update(created_at=timezone.now() - timedelta(seconds=seconds))


def test_a_key_is_replayed_within_its_ttl_and_new_once_expired(client: APIClient) -> None:
    first = post(client, RECEIPT, "k")
    age("k", TTL - 60)
    replay = post(client, RECEIPT, "k")
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert post(client, RECEIPT + "other", "k").status_code == 409

    age("k", TTL + 60)
    # Expired: another body is a new request, not a conflict; its record now holds the key.
    second = post(client, RECEIPT + "other", "k")
    assert second.status_code == 201 and "Idempotent-Replayed" not in second
    assert second.json()["id"] != first.json()["id"]
    assert post(client, RECEIPT + "other", "k").json()["id"] == second.json()["id"]
    age("k", TTL + 60)
    # Expired: the same body runs again too (a new document), it is not the old response replayed.
    third = post(client, RECEIPT + "other", "k")
    assert third.status_code == 201 and "Idempotent-Replayed" not in third
    assert third.json()["id"] != second.json()["id"]
    assert Document.objects.count() == 3 and IdempotencyRecord.objects.count() == 1


def test_the_purge_deletes_expired_records_in_batches_and_keeps_live_ones(reviewer: Any) -> None:
    now = timezone.now()
    ages = {"fresh": 0, "almost": TTL - 1, "old-1": TTL + 1, "old-2": 2 * TTL, "old-3": 30 * TTL}
    for key, seconds in ages.items():
        IdempotencyRecord.objects.create(
            scope=f"user:{reviewer.pk}",
            key=key,
            request_hash="x",
            status_code=201,
            created_at=now - timedelta(seconds=seconds),
        )
    assert idempotency.purge_expired(now=now, batch=2) == 3
    assert set(IdempotencyRecord.objects.values_list("key", flat=True)) == {"fresh", "almost"}
    assert idempotency.purge_expired(now=now) == 0


def test_the_purge_job_is_scheduled_and_runs(reviewer: Any) -> None:
    celery_app.loader.import_default_modules()
    entry = [
        e
        for e in django_settings.CELERY_BEAT_SCHEDULE.values()
        if e["task"] == tasks.purge_idempotency_records.name
    ]
    assert len(entry) == 1 and entry[0]["task"] in celery_app.tasks
    IdempotencyRecord.objects.create(
        scope="user:1", key="old", request_hash="x", created_at=timezone.now() - timedelta(seconds=TTL + 1)
    )
    assert tasks.purge_idempotency_records.apply().get() == 1
    assert not IdempotencyRecord.objects.exists()


def test_a_key_whose_record_is_purged_mid_request_is_taken_as_new(
    client: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = post(client, RECEIPT, "k")
    replay = idempotency._replay

    def purged_meanwhile(scope: str, key: str, fingerprint: str) -> Any:
        # Our insert hit the old record, which expired and was purged before we could read it.
        IdempotencyRecord.objects.filter(scope=scope, key=key).delete()
        return replay(scope, key, fingerprint)

    monkeypatch.setattr(idempotency, "_replay", purged_meanwhile)
    again = post(client, RECEIPT, "k")
    assert again.status_code == 201 and "Idempotent-Replayed" not in again
    assert again.json()["id"] != first.json()["id"]
    assert IdempotencyRecord.objects.get(key="k").response_body["id"] == again.json()["id"]
