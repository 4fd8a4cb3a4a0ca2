"""Idempotency-Key on creates: the same key and body replay the first response; another body is a 409.

The record is inserted in the same transaction as the object it creates, so the two commit together or
not at all. A second request with the same key while the first is still running waits on the unique
index (PostgreSQL) and then replays the committed answer. A request that fails (4xx) rolls its record
back: only successful responses are remembered, and a failed request may be retried with the same key.

A key is kept for settings.REVIEWAPP_IDEMPOTENCY_TTL_SECONDS (24 hours by default). After that it is
expired: a request with it is treated as new (the old record is deleted first), and the periodic job
`extraction.tasks.purge_idempotency_records` (Celery beat) deletes expired records in batches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from ..errors import ReviewAppError
from ..models import IdempotencyRecord
from .auth import api_key_of

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
PURGE_BATCH = 5000  # rows per DELETE: short statements, short locks


def retention() -> timedelta:
    """How long a key is remembered; after this it may be reused for a new request."""
    return timedelta(seconds=settings.REVIEWAPP_IDEMPOTENCY_TTL_SECONDS)


def _expired(now: datetime | None = None) -> QuerySet[IdempotencyRecord]:
    return IdempotencyRecord.objects.filter(created_at__lt=(now or timezone.now()) - retention())


def purge_expired(*, now: datetime | None = None, batch: int = PURGE_BATCH) -> int:
    """Delete the records older than the retention, `batch` rows per statement; return how many."""
    expired = _expired(now).order_by("created_at")
    deleted = 0
    while True:
        ids = list(expired.values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        deleted += IdempotencyRecord.objects.filter(pk__in=ids).delete()[0]


class IdempotencyConflict(ReviewAppError):
    code = "idempotency_conflict"
    status = 409


def _scope(request: Request) -> str:
    key = api_key_of(request)
    return f"apikey:{key.pk}" if key is not None else f"user:{request.user.pk}"


def request_fingerprint(request: Request) -> str:
    """Return a hash of what the request asks for, independent of multipart boundaries and key order."""
    items: dict[str, Any] = {}
    data = request.data
    keys = data.keys() if hasattr(data, "keys") else []
    for name in sorted(keys):
        values = data.getlist(name) if hasattr(data, "getlist") else [data[name]]
        out = []
        for value in values:
            if isinstance(value, UploadedFile):
                digest = hashlib.sha256()
                for chunk in value.chunks():
                    digest.update(chunk)
                value.seek(0)  # the view reads the file again
                out.append({"file": value.name, "sha256": digest.hexdigest()})
            else:
                out.append(value)
        items[name] = out if len(out) != 1 else out[0]
    if not keys:
        items = {"_body": data}
    canonical = json.dumps(
        {"method": request.method, "path": request.path, "data": items}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotent(request: Request, handler: Callable[[], Response]) -> Response:
    """Run `handler` once per Idempotency-Key (when the header is present) and replay its response."""
    key = request.headers.get(HEADER)
    if key is None:
        return handler()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ReviewAppError(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters.", code="invalid_idempotency_key"
        )
    scope, fingerprint = _scope(request), request_fingerprint(request)
    with transaction.atomic():
        # An expired record frees its key: delete it first so the insert below can take the key.
        _expired().filter(scope=scope, key=key).delete()
        for _ in range(2):
            try:
                with transaction.atomic():
                    record = IdempotencyRecord.objects.create(scope=scope, key=key, request_hash=fingerprint)
                break
            except IntegrityError:
                replay = _replay(scope, key, fingerprint)
                if replay is not None:
                    return replay
                # The record that held the key expired and was purged in between: take the key now.
        else:
            raise IdempotencyConflict(
                "A request with this key is still in progress.", code="idempotency_in_progress"
            )
        response = handler()
        record.status_code = response.status_code
        record.response_body = response.data
        record.save(update_fields=["status_code", "response_body"])
    return response


def _replay(scope: str, key: str, fingerprint: str) -> Response | None:
    """Return the first response for the key again; None when its record is gone (expired, purged)."""
    first = IdempotencyRecord.objects.filter(scope=scope, key=key).first()
    if first is None:
        return None
    if first.request_hash != fingerprint:
        raise IdempotencyConflict(
            f"This {HEADER} was already used with a different request body.",
            details={"idempotency_key": key},
        )
    if first.status_code is None:
        # Only reachable where the insert did not wait for the first request (not PostgreSQL).
        raise IdempotencyConflict(
            "A request with this key is still in progress.", code="idempotency_in_progress"
        )
    response = Response(first.response_body, status=first.status_code)
    response["Idempotent-Replayed"] = "true"
    return response
