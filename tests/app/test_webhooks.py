"""Webhooks against a real receiver on 127.0.0.1: signed deliveries, retries with backoff, permanent
failures, the delivery log and replay, subscriptions per workspace, and emit() never raising."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import transaction
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from reviewapp import webhooks
from reviewapp.models import Document, FieldValue, WebhookDelivery, WebhookSubscription
from tests.conftest import _user

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP server on 127.0.0.1 that answers with scripted status codes and checks each signature."""

    def __init__(self) -> None:
        self.statuses: list[int] = []  # consumed one per request; 200 once empty
        self.secret = ""
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(
                    {
                        "headers": dict(self.headers),
                        "body": body,
                        "json": json.loads(body),
                        "signature_ok": receiver.signature_ok(
                            self.headers.get("X-Reviewapp-Signature", ""), body
                        ),
                    }
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def signature_ok(self, header: str, body: bytes) -> bool:
        """Check the signature independently of reviewapp.webhooks: t=<unix>,v1=HMAC-SHA256(secret, t.body)."""
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        if "t" not in parts or abs(time.time() - int(parts["t"])) > 300:
            return False
        expected = hmac.new(
            self.secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(expected, parts.get("v1", ""))

    def events(self) -> list[str]:
        return [r["json"]["event"] for r in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def subscribe(workspace: Any, receiver: Receiver) -> Any:
    def make(events: tuple[str, ...] = webhooks.EVENTS, url: str | None = None, ws: Any = None) -> Any:
        sub = WebhookSubscription.objects.create(
            workspace=ws or workspace,
            url=url or receiver.url,
            events=list(events),
            secret=webhooks.new_secret(),
        )
        receiver.secret = sub.secret
        return sub

    return make


def token_client(user: Any) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return c


def test_extraction_events_are_delivered_signed(
    make_document: Any, subscribe: Any, receiver: Receiver
) -> None:
    sub = subscribe()
    doc = make_document()
    assert doc.status == "needs_review"
    assert receiver.events() == ["document.extracted", "document.needs_review"]
    first = receiver.received[0]
    assert all(r["signature_ok"] for r in receiver.received)
    assert first["json"]["data"]["document"] == {
        "id": doc.pk,
        "workspace": "acme",
        "document_type": "receipt",
        "filename": doc.filename,
        "sha256": doc.sha256,
        "status": "needs_review",
        "created_at": doc.created_at.isoformat(),
        "url": f"/api/v1/documents/{doc.pk}/",
    }
    delivery = WebhookDelivery.objects.get(subscription=sub, event="document.extracted")
    assert first["headers"]["X-Reviewapp-Delivery"] == str(delivery.pk)
    assert first["headers"]["X-Reviewapp-Event"] == "document.extracted"
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None


def test_the_last_review_decision_emits_document_reviewed(
    make_document: Any,
    subscribe: Any,
    receiver: Receiver,
    reviewer: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    doc = make_document()
    subscribe(events=("document.reviewed",))
    c = token_client(reviewer)
    open_ids = list(
        FieldValue.objects.filter(document=doc, status="needs_review").values_list("pk", flat=True)
    )
    for i, pk in enumerate(open_ids):
        with django_capture_on_commit_callbacks(execute=True):
            assert c.post(f"/api/v1/fields/{pk}/accept/", {}, format="json").status_code == 200
        # Only the decision that closes the document emits.
        assert receiver.events() == (["document.reviewed"] if i == len(open_ids) - 1 else [])
    assert receiver.received[0]["json"]["data"]["document"]["status"] == "reviewed"


def test_5xx_and_network_errors_are_retried_until_delivered(
    make_document: Any, subscribe: Any, receiver: Receiver
) -> None:
    subscribe(events=("document.extracted",))
    receiver.statuses = [503, 500]
    make_document()
    # Eager Celery runs each retry at once; in production they wait backoff_seconds().
    assert len(receiver.received) == 3 and all(r["signature_ok"] for r in receiver.received)
    ids = {r["headers"]["X-Reviewapp-Delivery"] for r in receiver.received}
    assert len(ids) == 1  # the same delivery, retried: receivers deduplicate on this id
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)


def test_a_receiver_that_stays_down_fails_after_max_attempts(
    make_document: Any, subscribe: Any, receiver: Receiver, monkeypatch: Any
) -> None:
    monkeypatch.setattr(webhooks, "MAX_ATTEMPTS", 3)
    subscribe(events=("document.extracted",))
    receiver.statuses = [502] * 10
    make_document()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 502)
    assert delivery.last_error.startswith("HTTP 502")
    assert len(receiver.received) == 3


def test_connection_errors_are_recorded_and_retried(
    make_document: Any, subscribe: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(webhooks, "MAX_ATTEMPTS", 2)
    closed = Receiver()
    url = closed.url
    closed.server.server_close()  # nothing listens on that port any more
    subscribe(events=("document.extracted",), url=url)
    make_document()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 2, None)
    assert "ConnectError" in delivery.last_error


def test_a_4xx_answer_fails_at_once(make_document: Any, subscribe: Any, receiver: Receiver) -> None:
    subscribe(events=("document.extracted",))
    receiver.statuses = [410]
    make_document()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 1, 410)
    assert len(receiver.received) == 1


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    base = webhooks.BACKOFF_BASE_SECONDS
    for attempts in range(1, 6):
        wait = webhooks.backoff_seconds(attempts)
        assert base * 2 ** (attempts - 1) <= wait <= base * 2 ** (attempts - 1) + base


def test_only_subscribed_events_of_the_document_workspace_are_sent(
    make_document: Any, subscribe: Any, receiver: Receiver, other_workspace: Any
) -> None:
    subscribe(events=("document.failed",))
    subscribe(ws=other_workspace)
    make_document()
    assert receiver.received == [] and not WebhookDelivery.objects.exists()


def test_non_http_urls_are_refused(subscribe: Any, make_document: Any, workspace: Any, settings: Any) -> None:
    assert webhooks.check_url("file:///etc/passwd") and webhooks.check_url("gopher://127.0.0.1/")
    assert webhooks.check_url("http://127.0.0.1:9/hook") is None  # loopback allowed unless blocked
    settings.REVIEWAPP_WEBHOOK_BLOCK_PRIVATE = True
    assert "non-public" in webhooks.check_url("http://127.0.0.1:9/hook")
    settings.REVIEWAPP_WEBHOOK_BLOCK_PRIVATE = False
    # A row that bypassed validation is still refused at delivery time, without any network call.
    subscribe(events=("document.extracted",), url="ftp://127.0.0.1/hook")
    make_document()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed" and "only http" in delivery.last_error


def test_emit_never_raises_into_its_caller(
    make_document: Any, subscribe: Any, monkeypatch: Any, django_capture_on_commit_callbacks: Any
) -> None:
    doc = make_document()
    webhooks.emit(doc.pk, "document.unknown")
    webhooks.emit(999_999, "document.failed")  # no such document: nothing to send
    subscribe()

    def broken(*args: Any) -> None:
        raise RuntimeError("broker down")

    monkeypatch.setattr(webhooks, "_fan_out", broken)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        webhooks.emit(doc.pk, "document.failed")
    assert len(callbacks) == 1  # it did run, and its error was logged, not raised
    assert not WebhookDelivery.objects.exists()


def test_nothing_is_sent_for_a_rolled_back_change(
    make_document: Any, subscribe: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    doc = make_document()
    subscribe()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        try:
            with transaction.atomic():
                webhooks.emit(doc.pk, "document.failed")
                raise RuntimeError("the state change failed")
        except RuntimeError:
            pass
    assert callbacks == [] and receiver.received == []


def test_signature_verification_rejects_tampering_and_old_timestamps() -> None:
    body = b'{"event":"document.reviewed"}'
    now = int(time.time())
    header = webhooks.sign("s3cret", now, body)
    assert webhooks.verify_signature("s3cret", header, body)
    assert not webhooks.verify_signature("s3cret", header, body + b" ")
    assert not webhooks.verify_signature("other", header, body)
    old = webhooks.sign("s3cret", now - 600, body)
    assert not webhooks.verify_signature("s3cret", old, body)
    assert not webhooks.verify_signature("s3cret", "garbage", body)


# --- the API: subscriptions, log, replay -----------------------------------------------------------------
@pytest.fixture
def ws_admin(workspace: Any) -> Any:
    return _user("wanda", workspace, role="admin")


def test_admins_subscribe_see_the_log_and_replay(
    ws_admin: Any,
    reviewer: Any,
    outsider: Any,
    make_document: Any,
    receiver: Receiver,
    django_capture_on_commit_callbacks: Any,
) -> None:
    c = token_client(ws_admin)
    bad = c.post(
        "/api/v1/webhooks/", {"url": "ftp://x.example/h", "events": ["document.extracted"]}, format="json"
    )
    assert bad.status_code == 400 and "url" in bad.json()["error"]["details"]
    created = c.post(
        "/api/v1/webhooks/", {"url": receiver.url, "events": ["document.extracted"]}, format="json"
    )
    assert created.status_code == 201, created.content
    sub = created.json()
    receiver.secret = sub["secret"]
    assert WebhookSubscription.objects.get().secret == sub["secret"]
    assert "secret" not in c.get(f"/api/v1/webhooks/{sub['id']}/").json()

    make_document()
    log = c.get(f"/api/v1/webhooks/{sub['id']}/deliveries/").json()["results"]
    assert [(d["event"], d["status"], d["attempts"]) for d in log] == [("document.extracted", "delivered", 1)]
    with django_capture_on_commit_callbacks(execute=True):
        replay = c.post(f"/api/v1/webhook-deliveries/{log[0]['id']}/replay/")
    assert replay.status_code == 202 and replay.json()["id"] != log[0]["id"]
    assert len(receiver.received) == 2 and all(r["signature_ok"] for r in receiver.received)
    assert receiver.received[0]["body"] == receiver.received[1]["body"]  # same payload, new delivery id
    assert WebhookDelivery.objects.get(pk=replay.json()["id"]).status == "delivered"

    # A reviewer is not an admin; an admin of another workspace learns nothing.
    assert token_client(reviewer).get("/api/v1/webhooks/").json()["results"] == []
    assert (
        token_client(reviewer)
        .post("/api/v1/webhooks/", {"url": receiver.url, "events": ["document.failed"]}, format="json")
        .status_code
        == 403
    )
    other = token_client(_user("otto", outsider.workspaces.get(), role="admin"))
    for response in [
        other.get(f"/api/v1/webhooks/{sub['id']}/"),
        other.get(f"/api/v1/webhooks/{sub['id']}/deliveries/"),
        other.post(f"/api/v1/webhook-deliveries/{log[0]['id']}/replay/"),
        other.delete(f"/api/v1/webhooks/{sub['id']}/"),
    ]:
        assert response.status_code == 404
    assert c.delete(f"/api/v1/webhooks/{sub['id']}/").status_code == 204
    assert not WebhookSubscription.objects.exists() and Document.objects.count() == 1


def test_a_delivery_whose_task_was_lost_is_queued_again_once(
    make_document: Any, subscribe: Any, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    doc = make_document()
    sub = subscribe(events=("document.failed",))
    now = timezone.now()
    payload = webhooks.document_payload(doc, "document.failed")
    # Written during a broker outage: the row exists, its task never reached the queue.
    lost = WebhookDelivery.objects.create(
        subscription=sub, event="document.failed", payload=payload, next_attempt_at=now - timedelta(minutes=6)
    )
    # Waiting for a retry's back-off (planned in 3 minutes): not lost, must be left alone.
    waiting = WebhookDelivery.objects.create(
        subscription=sub, event="document.failed", payload=payload, attempts=2,
        next_attempt_at=now + timedelta(minutes=3),
    )  # fmt: skip
    assert webhooks.requeue_lost() == 1
    assert [r["headers"]["X-Reviewapp-Delivery"] for r in receiver.received] == [str(lost.pk)]
    lost.refresh_from_db()
    waiting.refresh_from_db()
    assert lost.status == "delivered" and (waiting.status, waiting.attempts) == ("pending", 2)
    assert webhooks.requeue_lost() == 0  # nothing else is overdue
    scheduled = {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "reviewapp.webhooks.requeue_lost_deliveries" in scheduled


def test_a_retry_plans_its_next_attempt(make_document: Any, subscribe: Any, receiver: Receiver) -> None:
    from celery.exceptions import Retry
    from django.utils import timezone

    doc = make_document()
    sub = subscribe(events=("document.failed",))
    delivery = WebhookDelivery.objects.create(
        subscription=sub, event="document.failed", payload=webhooks.document_payload(doc, "document.failed")
    )
    receiver.statuses = [503]
    before = timezone.now()
    with pytest.raises(Retry):
        webhooks.deliver_webhook(delivery.pk)  # called directly, a retry raises instead of queueing
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    wait = (delivery.next_attempt_at - before).total_seconds()
    assert webhooks.BACKOFF_BASE_SECONDS <= wait <= 2 * webhooks.BACKOFF_BASE_SECONDS + 5
    assert webhooks.requeue_lost() == 0  # planned, not lost


def test_a_failed_step_fails_the_document_and_emits_document_failed(
    make_document: Any, subscribe: Any, receiver: Receiver, monkeypatch: Any
) -> None:
    from extraction.gateway import Trace
    from extraction.pipeline import PipelineError
    from reviewapp import services

    subscribe(events=("document.failed",))

    def failing(**kwargs: Any) -> Any:
        return PipelineError(
            "every model for extract failed", step="extract", code="all_routes_failed"
        ), Trace()

    monkeypatch.setattr(services, "run_pipeline", failing)
    doc = make_document()
    assert doc.status == "failed" and doc.status_reason.startswith("all_routes_failed: extract step")
    assert (doc.runs.get().status, doc.runs.get().error_code) == ("failed", "all_routes_failed")
    assert receiver.events() == ["document.failed"]
