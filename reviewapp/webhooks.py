"""Webhooks: document events POSTed to the workspace's subscribed URLs, signed and retried with backoff.

`emit()` is called by the services at each state change. It never raises into its caller: once the
transaction commits it writes one WebhookDelivery row per matching subscription and queues one Celery task
per row. The task makes the HTTP call outside any transaction, records every attempt on the row and
retries network errors, 429 and 5xx with exponential backoff; other answers fail the delivery for good.
Delivery is at least once: receivers deduplicate on the `X-Reviewapp-Delivery` header. A delivery whose
task was lost (queued during a broker outage) stays pending; the `requeue_lost_deliveries` beat task
queues it again once it is a few minutes past its planned attempt.

Signature (as Stripe does it): `X-Reviewapp-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<raw body>")>`. Receivers recompute it over the raw body and refuse timestamps older than a few
minutes (see `verify_signature`), which stops replays of a captured request.

SSRF: only http(s) URLs are accepted, redirects are never followed, and with
`REVIEWAPP_WEBHOOK_BLOCK_PRIVATE = True` hosts resolving to loopback, private, link-local or reserved
addresses are refused. That switch is off by default because the tests (and local setups) use a receiver on
127.0.0.1; turn it on in production, where a workspace admin could otherwise make the server POST to an
internal service. The check resolves DNS before the request, so DNS rebinding can still slip through: an
egress proxy is the complete answer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from celery import shared_task
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from .models import Document, WebhookDelivery, WebhookSubscription

log = logging.getLogger(__name__)

EVENTS = ("document.extracted", "document.needs_review", "document.reviewed", "document.failed")
SIGNATURE_HEADER = "X-Reviewapp-Signature"
MAX_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 30  # 30 s, 1 min, 2 min, 4 min, 8 min (+ jitter): about 15 minutes in all
TIMEOUT_SECONDS = 10
SIGNATURE_TOLERANCE_SECONDS = 300

Status = WebhookDelivery.Status


def _now():
    # A seam for tests that need to move the clock.
    return timezone.now()


# --- emitting --------------------------------------------------------------------------------------------
def emit(document_id: int, *events: str, workspace_id: int | None = None) -> None:
    """Queue deliveries of `events` for the document's workspace subscriptions, once the transaction commits.

    Several events of one state change go out through one fan-out (one query when nobody subscribed);
    `workspace_id`, when the caller knows it, saves looking the document up. Never raises: a webhook problem
    must not undo or break the state change that triggered it.
    """
    known = [e for e in events if e in EVENTS]
    for event in set(events) - set(known):
        log.error("webhooks: unknown event %r for document %s", event, document_id)
    if not known:
        return
    try:
        # robust: an error in the fan-out is logged and does not stop the other on-commit callbacks.
        # (A lambda, not functools.partial: Django logs a robust callback's failure by its __qualname__.)
        transaction.on_commit(lambda: _fan_out(document_id, known, workspace_id), robust=True)
    except Exception:
        log.exception("webhooks: could not schedule %s for document %s", known, document_id)


def emit_many(changes: list[tuple[int, tuple[str, ...], int]]) -> None:
    """emit() for several documents' state changes, `(document_id, events, workspace_id)` each: one query
    for all their subscriptions once the transaction commits (the extraction results of a batch)."""
    if not changes:
        return
    try:
        transaction.on_commit(lambda: _fan_out_many(changes), robust=True)
    except Exception:
        log.exception("webhooks: could not schedule events for documents %s", [c[0] for c in changes])


def _fan_out_many(changes: list[tuple[int, tuple[str, ...], int]]) -> None:
    workspaces = sorted({workspace_id for _, _, workspace_id in changes})
    # Most workspaces subscribe to nothing: find out with one plain query before loading any model.
    table = connection.ops.quote_name(WebhookSubscription._meta.db_table)
    marks = ", ".join(["%s"] * len(workspaces))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {table} WHERE active AND workspace_id IN ({marks}) LIMIT 1",  # noqa: S608
            workspaces,
        )
        if cursor.fetchone() is None:
            return
    subscriptions = list(WebhookSubscription.objects.filter(active=True, workspace_id__in=workspaces))
    for document_id, events, workspace_id in changes:
        mine = [s for s in subscriptions if s.workspace_id == workspace_id]
        if mine:
            try:
                _fan_out(document_id, [e for e in events if e in EVENTS], workspace_id, subscriptions=mine)
            except Exception:  # one document's failure must not stop the others' deliveries
                log.exception("webhooks: fan-out failed for document %s", document_id)


def document_payload(document: Document, event: str) -> dict[str, Any]:
    return {
        "event": event,
        "created_at": _now().isoformat(),
        "data": {
            "document": {
                "id": document.pk,
                "workspace": document.workspace.slug,
                "document_type": document.document_type.slug,
                "filename": document.filename,
                "sha256": document.sha256,
                "status": document.status,
                "created_at": document.created_at.isoformat(),
                "url": f"/api/v1/documents/{document.pk}/",
            }
        },
    }


def _fan_out(
    document_id: int,
    events: list[str],
    workspace_id: int | None = None,
    *,
    subscriptions: list[WebhookSubscription] | None = None,
) -> list[int]:
    """Write a delivery row per subscription and wanted event, and queue each; return their ids."""
    if subscriptions is None:
        found = WebhookSubscription.objects.filter(active=True)
        if workspace_id is not None:
            found = found.filter(workspace_id=workspace_id)
        else:
            found = found.filter(workspace__documents=document_id)
        subscriptions = list(found)
    # Events filtered in Python: JSONField `contains` is not available on SQLite (the embedded mode).
    wanted = [(s, e) for e in events for s in subscriptions if e in (s.events or [])]
    if not wanted:
        return []  # the common case: one query, and the document is never loaded
    document = Document.objects.select_related("workspace", "document_type").filter(pk=document_id).first()
    if document is None:
        return []
    payloads = {e: document_payload(document, e) for e in events}
    ids = []
    for subscription, event in wanted:
        delivery = WebhookDelivery.objects.create(
            subscription=subscription, event=event, payload=payloads[event]
        )
        ids.append(delivery.pk)
        _queue(delivery.pk)
    return ids


def _queue(delivery_id: int) -> None:
    transaction.on_commit(lambda: deliver_webhook.delay(delivery_id))


def delivery_replay(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """Send a delivery's payload again as a new delivery (the log keeps the old one as it was)."""
    with transaction.atomic():
        copy = WebhookDelivery.objects.create(
            subscription_id=delivery.subscription_id, event=delivery.event, payload=delivery.payload
        )
        _queue(copy.pk)
    return copy


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# --- signing ---------------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Return whether `header` signs `body` with `secret` within `tolerance` seconds (for receivers)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --- URL safety ------------------------------------------------------------------------------------------
def check_url(url: str) -> str | None:
    """Return why `url` may not receive webhooks, or None when it may."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "only http:// and https:// URLs can receive webhooks"
    if getattr(settings, "REVIEWAPP_WEBHOOK_BLOCK_PRIVATE", False):
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return f"cannot resolve {parts.hostname}"
        for info in infos:
            ip = ipaddress.ip_address(info[4][0])
            if not ip.is_global:
                return f"{parts.hostname} resolves to a non-public address ({ip})"
    return None


# --- delivering ------------------------------------------------------------------------------------------
def backoff_seconds(attempts: int) -> float:
    """Return the wait before the next attempt after `attempts` failed ones (exponential, with jitter)."""
    base = BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1)
    return base + random.uniform(0, BACKOFF_BASE_SECONDS)  # jitter: spread retries to a recovering host


def attempt_delivery(delivery_id: int) -> str:
    """Make one attempt; return "delivered", "retry", "failed" or "skipped" (not pending any more)."""
    delivery = WebhookDelivery.objects.select_related("subscription").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != Status.PENDING:
        return "skipped"
    subscription = delivery.subscription
    problem = None if subscription.active else "the subscription is inactive"
    problem = problem or check_url(subscription.url)
    if problem:
        _record(delivery, status=Status.FAILED, code=None, error=problem)
        return "failed"
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "reviewapp-webhooks/1",
        "X-Reviewapp-Event": delivery.event,
        "X-Reviewapp-Delivery": str(delivery.pk),
        SIGNATURE_HEADER: sign(subscription.secret, int(time.time()), body),
    }
    code: int | None = None
    try:
        # No transaction is open here: the call may take TIMEOUT_SECONDS and must hold no lock meanwhile.
        response = httpx.post(
            subscription.url, content=body, headers=headers, timeout=TIMEOUT_SECONDS, follow_redirects=False
        )
        code = response.status_code
        error = "" if response.is_success else f"HTTP {code}: {response.text[:500]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    retryable = code is None or code == 429 or code >= 500
    if code is not None and 200 <= code < 300:
        status = Status.DELIVERED
    elif retryable and delivery.attempts + 1 < MAX_ATTEMPTS:
        status = Status.PENDING
    else:
        status = Status.FAILED
    _record(delivery, status=status, code=code, error=error)
    if status == Status.PENDING:
        return "retry"
    return "delivered" if status == Status.DELIVERED else "failed"


def _record(delivery: WebhookDelivery, *, status: str, code: int | None, error: str) -> None:
    # Conditional on still pending: a duplicate task that lost the race must not overwrite the outcome.
    WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.PENDING).update(
        status=status,
        attempts=F("attempts") + 1,
        last_status_code=code,
        last_error=error[:2000],
        delivered_at=_now() if status == Status.DELIVERED else None,
    )


@shared_task(bind=True, acks_late=True, max_retries=None, name="reviewapp.webhooks.deliver_webhook")
def deliver_webhook(self: Any, delivery_id: int) -> str:
    """Deliver one webhook; retry later while attempt_delivery says so (it counts attempts on the row)."""
    outcome = attempt_delivery(delivery_id)
    if outcome == "retry":
        attempts = WebhookDelivery.objects.filter(pk=delivery_id).values_list("attempts", flat=True).first()
        countdown = backoff_seconds(attempts or 1)
        WebhookDelivery.objects.filter(pk=delivery_id, status=Status.PENDING).update(
            next_attempt_at=_now() + timedelta(seconds=countdown)
        )
        raise self.retry(countdown=countdown)
    log.info("webhook delivery %s: %s", delivery_id, outcome)
    return outcome


LOST_AFTER = timedelta(minutes=5)


def requeue_lost(*, grace: timedelta = LOST_AFTER, limit: int = 500) -> int:
    """Queue again the pending deliveries whose task never ran (lost in a broker outage); return how many.

    A delivery is lost when it is still pending `grace` after its planned attempt. Its planned time moves
    to now first, so a delivery that is only slow is queued at most once per `grace` (delivery is at least
    once anyway: receivers deduplicate on X-Reviewapp-Delivery).
    """
    now = _now()
    lost = WebhookDelivery.objects.filter(status=Status.PENDING, next_attempt_at__lt=now - grace)
    requeued = 0
    for pk in lost.order_by("next_attempt_at").values_list("pk", flat=True)[:limit]:
        if WebhookDelivery.objects.filter(
            pk=pk, status=Status.PENDING, next_attempt_at__lt=now - grace
        ).update(next_attempt_at=now):
            try:
                deliver_webhook.delay(pk)
            except Exception:  # the broker is still down: the next run of the watchdog tries again
                log.warning("webhooks: could not queue delivery %s again; will retry", pk, exc_info=True)
                break
            requeued += 1
    if requeued:
        log.warning("webhooks: queued %s lost deliveries again", requeued)
    return requeued


@shared_task(name="reviewapp.webhooks.requeue_lost_deliveries")
def requeue_lost_deliveries() -> int:
    return requeue_lost()
