"""API keys: hashed storage, both headers, revocation, scopes, workspace isolation (404, never 403),
idempotency keys, document filters and delete, admin-only runs and calls, throttling, the command."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from reviewapp.api.keys import api_key_create
from reviewapp.errors import ReviewAppError
from reviewapp.models import ApiKey, Document, FieldValue, IdempotencyRecord, Membership, ReviewDecision
from tests.conftest import RECEIPT, _user

pytestmark = pytest.mark.django_db


@pytest.fixture
def ws_admin(workspace: Any) -> Any:
    """A workspace admin who is not staff: the usual owner of a key."""
    return _user("wanda", workspace, role="admin")


@pytest.fixture
def other_admin(other_workspace: Any) -> Any:
    return _user("otto", other_workspace, role="admin")


def make_key(workspace: Any, owner: Any, scopes: str = "read,write,review") -> str:
    return api_key_create(
        workspace=workspace, name="test", scopes=scopes.split(","), created_by=owner
    ).raw_key


def key_client(raw: str, *, header: str = "bearer") -> APIClient:
    c = APIClient()
    if header == "bearer":
        c.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    else:
        c.credentials(HTTP_X_API_KEY=raw)
    return c


def token_client(user: Any) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return c


def open_field(document: Document) -> FieldValue:
    field = FieldValue.objects.filter(document=document, status="needs_review").first()
    assert field is not None, "the receipt fixture should leave a field to review"
    return field


# --- keys ------------------------------------------------------------------------------------------------
def test_only_a_hash_of_the_key_is_stored(workspace: Any, ws_admin: Any) -> None:
    raw = make_key(workspace, ws_admin)
    assert raw.startswith("ra_")
    _, prefix, secret = raw.split("_", 2)
    key = ApiKey.objects.get(prefix=prefix)
    assert key.hashed_key == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(ApiKey.objects.filter(pk=key.pk).values().get())


def test_a_key_needs_an_admin_owner(workspace: Any, reviewer: Any) -> None:
    with pytest.raises(ReviewAppError) as err:
        api_key_create(workspace=workspace, name="x", scopes=["read"], created_by=reviewer)
    assert err.value.code == "not_workspace_admin"
    with pytest.raises(ReviewAppError):
        api_key_create(workspace=workspace, name="x", scopes=["read"], created_by=None)
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("header", ["bearer", "x-api-key"])
def test_both_headers_authenticate_and_see_only_the_key_workspace(
    header: str, make_document: Any, workspace: Any, other_workspace: Any, ws_admin: Any
) -> None:
    mine = make_document()
    make_document(ws=other_workspace)
    response = key_client(make_key(workspace, ws_admin), header=header).get("/api/v1/documents/")
    assert response.status_code == 200
    assert [d["id"] for d in response.json()["results"]] == [mine.pk]
    assert ApiKey.objects.get().last_used_at is not None


def test_a_superuser_key_is_still_confined_to_its_workspace(
    make_document: Any, workspace: Any, other_workspace: Any, admin_user: Any
) -> None:
    theirs = make_document(ws=other_workspace)
    c = key_client(make_key(workspace, admin_user))
    assert c.get("/api/v1/documents/").json()["results"] == []
    assert c.get(f"/api/v1/documents/{theirs.pk}/").status_code == 404


@pytest.mark.parametrize("raw", ["ra_nope_nope", "ra_", "ra_abc"])
def test_an_unknown_or_malformed_key_is_401(raw: str, workspace: Any, ws_admin: Any) -> None:
    real = make_key(workspace, ws_admin)
    for bad in (raw, real[:-2] + "xx"):
        response = key_client(bad).get("/api/v1/documents/")
        assert response.status_code == 401, bad
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_revoked_key_is_401(workspace: Any, ws_admin: Any) -> None:
    raw = make_key(workspace, ws_admin)
    c = key_client(raw)
    assert c.get("/api/v1/documents/").status_code == 200
    ApiKey.objects.update(revoked_at=timezone.now())
    response = c.get("/api/v1/documents/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "revoked_api_key"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_key_whose_owner_left_the_workspace_is_401(workspace: Any, ws_admin: Any) -> None:
    raw = make_key(workspace, ws_admin)
    Membership.objects.filter(user=ws_admin).delete()
    response = key_client(raw).get("/api/v1/documents/")
    assert response.status_code == 401 and response.json()["error"]["code"] == "orphaned_api_key"


def test_scopes_gate_reads_writes_and_reviews(make_document: Any, workspace: Any, ws_admin: Any) -> None:
    doc = make_document()
    field = open_field(doc)
    read_only = key_client(make_key(workspace, ws_admin, "read"))
    assert read_only.get(f"/api/v1/documents/{doc.pk}/").status_code == 200
    for response in [
        read_only.post("/api/v1/documents/", {"document_type": "receipt", "text": RECEIPT}, format="json"),
        read_only.post(f"/api/v1/documents/{doc.pk}/retry/"),
        read_only.delete(f"/api/v1/documents/{doc.pk}/"),
        read_only.post(f"/api/v1/fields/{field.pk}/accept/", {}, format="json"),
    ]:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "insufficient_scope"
    writer = key_client(make_key(workspace, ws_admin, "write"))
    assert writer.get("/api/v1/documents/").status_code == 403  # no read scope
    created = writer.post(
        "/api/v1/documents/", {"document_type": "receipt", "text": "TOTAL 5.00"}, format="json"
    )
    assert created.status_code == 201
    assert writer.post(f"/api/v1/fields/{field.pk}/accept/", {}, format="json").status_code == 403
    assert Document.objects.count() == 2 and not ReviewDecision.objects.exists()


def test_a_review_key_decides_as_its_owner(make_document: Any, workspace: Any, ws_admin: Any) -> None:
    field = open_field(make_document())
    c = key_client(make_key(workspace, ws_admin, "read,review"))
    stale = c.post(f"/api/v1/fields/{field.pk}/reject/", {"version": field.version + 1}, format="json")
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale"
    bad = c.post(
        f"/api/v1/fields/{field.pk}/correct/", {"version": field.version, "value": ""}, format="json"
    )
    assert bad.status_code == 400
    value = {"date": "2024-03-13", "money": "24.00 MYR", "number": "24"}.get(field.field_spec.type, "x")
    ok = c.post(
        f"/api/v1/fields/{field.pk}/correct/", {"version": field.version, "value": value}, format="json"
    )
    assert ok.status_code == 200, ok.content
    assert ok.json()["status"] == "corrected" and ok.json()["version"] == field.version + 1
    decision = ReviewDecision.objects.get()
    assert decision.reviewer == ws_admin and decision.action == "correct"


def test_workspace_a_key_cannot_read_list_review_or_detect_workspace_b_objects(
    make_document: Any, workspace: Any, other_workspace: Any, ws_admin: Any
) -> None:
    theirs = make_document(ws=other_workspace)
    field = open_field(theirs)
    c = key_client(make_key(workspace, ws_admin))
    listed = c.get("/api/v1/documents/", {"workspace": "globex"})
    assert listed.status_code == 200 and listed.json()["results"] == []
    missing = c.get("/api/v1/documents/99999999/").json()
    for response in [
        c.get(f"/api/v1/documents/{theirs.pk}/"),
        c.get(f"/api/v1/documents/{theirs.pk}/fields/"),
        c.get(f"/api/v1/fields/{field.pk}/"),
        c.post(f"/api/v1/documents/{theirs.pk}/retry/"),
        c.delete(f"/api/v1/documents/{theirs.pk}/"),
        c.post(f"/api/v1/fields/{field.pk}/accept/", {"version": field.version}, format="json"),
        c.post(f"/api/v1/fields/{field.pk}/correct/", {"value": "1.00"}, format="json"),
        c.post(f"/api/v1/fields/{field.pk}/reject/", {}, format="json"),
    ]:
        assert response.status_code == 404, response.content
        # The same answer as for an id that never existed: nothing tells the two apart.
        assert response.json()["error"]["code"] == missing["error"]["code"] == "not_found"
    created = c.post(
        "/api/v1/documents/",
        {"document_type": "receipt", "text": RECEIPT, "workspace": "globex"},
        format="json",
    )
    assert created.status_code == 404
    theirs.refresh_from_db()
    field.refresh_from_db()
    assert field.status == "needs_review" and Document.objects.filter(workspace=other_workspace).count() == 1


# --- idempotency -----------------------------------------------------------------------------------------
def test_the_same_idempotency_key_and_body_replay_the_first_response(
    workspace: Any, ws_admin: Any, receipt_type: Any
) -> None:
    c = key_client(make_key(workspace, ws_admin))
    body = {"document_type": "receipt", "text": RECEIPT}
    first = c.post("/api/v1/documents/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = c.post("/api/v1/documents/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert Document.objects.count() == 1
    other = c.post(
        "/api/v1/documents/", {**body, "text": RECEIPT + "x"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1"
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    fresh = c.post("/api/v1/documents/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert fresh.status_code == 201 and fresh.json()["duplicate_of"] == first.json()["id"]
    assert Document.objects.count() == 2


def test_idempotency_ignores_multipart_boundaries_but_not_file_contents(
    workspace: Any, ws_admin: Any, receipt_type: Any
) -> None:
    c = key_client(make_key(workspace, ws_admin))

    def post(content: bytes) -> Any:
        upload = SimpleUploadedFile("r.txt", content, content_type="text/plain")
        return c.post(
            "/api/v1/documents/",
            {"document_type": "receipt", "file": upload},
            format="multipart",
            HTTP_IDEMPOTENCY_KEY="upload-1",
        )

    first, again = post(RECEIPT.encode()), post(RECEIPT.encode())
    assert first.status_code == again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert post(b"another file").status_code == 409
    assert Document.objects.count() == 1


def test_a_failed_request_does_not_burn_its_idempotency_key(
    workspace: Any, ws_admin: Any, receipt_type: Any
) -> None:
    c = key_client(make_key(workspace, ws_admin))
    bad = c.post(
        "/api/v1/documents/",
        {"document_type": "receipt", "text": ""},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert bad.status_code == 400 and not IdempotencyRecord.objects.exists()
    ok = c.post(
        "/api/v1/documents/",
        {"document_type": "receipt", "text": RECEIPT},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert ok.status_code == 201


def test_idempotency_keys_are_per_principal(
    workspace: Any, ws_admin: Any, reviewer: Any, receipt_type: Any
) -> None:
    body = {"document_type": "receipt", "text": RECEIPT}
    a = key_client(make_key(workspace, ws_admin)).post(
        "/api/v1/documents/", body, format="json", HTTP_IDEMPOTENCY_KEY="same"
    )
    b = token_client(reviewer).post("/api/v1/documents/", body, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]


# --- documents: filters and delete -----------------------------------------------------------------------
def test_document_filters(make_document: Any, workspace: Any, ws_admin: Any) -> None:
    old = make_document()
    new = make_document(RECEIPT.replace("23.10", "30.00"))
    Document.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=10))
    Document.objects.filter(pk=new.pk).update(status="failed")
    c = key_client(make_key(workspace, ws_admin))

    def ids(**params: Any) -> list[int]:
        response = c.get("/api/v1/documents/", params)
        assert response.status_code == 200, response.content
        return [d["id"] for d in response.json()["results"]]

    assert ids() == [new.pk, old.pk]
    assert ids(status="failed") == [new.pk]
    assert ids(needs_review="true") == [old.pk]
    assert ids(needs_review="false") == [new.pk]
    assert ids(document_type="receipt") == [new.pk, old.pk] and ids(document_type="invoice") == []
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(created_after=since) == [new.pk]
    assert ids(created_before=since) == [old.pk]
    bad = c.get("/api/v1/documents/", {"status": "nonsense", "created_after": "yesterday"})
    assert bad.status_code == 400 and set(bad.json()["error"]["details"]) == {"status", "created_after"}


def test_delete_is_allowed_only_for_settled_undecided_documents(
    make_document: Any, workspace: Any, ws_admin: Any
) -> None:
    c = key_client(make_key(workspace, ws_admin))
    plain, decided, running = make_document(), make_document(), make_document()
    field = open_field(decided)
    assert c.post(f"/api/v1/fields/{field.pk}/reject/", {}, format="json").status_code == 200
    Document.objects.filter(pk=running.pk).update(status="extracting")
    gone = c.delete(f"/api/v1/documents/{plain.pk}/")
    assert gone.status_code == 204 and not Document.objects.filter(pk=plain.pk).exists()
    assert not FieldValue.objects.filter(document_id=plain.pk).exists()
    assert c.get(f"/api/v1/documents/{plain.pk}/").status_code == 404
    for doc, code in [(decided, "has_decisions"), (running, "in_progress")]:
        response = c.delete(f"/api/v1/documents/{doc.pk}/")
        assert response.status_code == 409 and response.json()["error"]["code"] == code
        assert Document.objects.filter(pk=doc.pk).exists()


# --- admin-only: runs and calls, webhooks and keys -------------------------------------------------------
def test_runs_and_calls_are_for_staff_only(
    make_document: Any, workspace: Any, ws_admin: Any, admin_user: Any, reviewer: Any
) -> None:
    doc = make_document()
    run = doc.runs.get()
    staff = token_client(admin_user)
    runs = staff.get("/api/v1/runs/", {"document": doc.pk})
    assert runs.status_code == 200 and [r["id"] for r in runs.json()["results"]] == [run.pk]
    assert staff.get(f"/api/v1/runs/{run.pk}/").json()["prompt_version"] == "receipt-extract v1"
    calls = staff.get(f"/api/v1/runs/{run.pk}/calls/").json()["results"]
    assert calls and {c["step"] for c in calls} >= {"extract"}
    staff_key = key_client(make_key(workspace, admin_user))
    for c in (token_client(reviewer), staff_key):
        for url in ("/api/v1/runs/", f"/api/v1/runs/{run.pk}/", f"/api/v1/runs/{run.pk}/calls/"):
            assert c.get(url).status_code == 403, url


def test_workspace_admins_manage_keys_through_the_api(
    workspace: Any, ws_admin: Any, reviewer: Any, other_admin: Any
) -> None:
    admin = token_client(ws_admin)
    created = admin.post("/api/v1/api-keys/", {"name": "ERP", "scopes": ["read"]}, format="json")
    assert created.status_code == 201, created.content
    raw = created.json()["key"]
    assert key_client(raw).get("/api/v1/documents/").status_code == 200
    listed = admin.get("/api/v1/api-keys/").json()["results"]
    assert [k["prefix"] for k in listed] == [created.json()["prefix"]] and "key" not in listed[0]
    # A reviewer, another workspace's admin and the key itself cannot touch it.
    assert (
        token_client(reviewer)
        .post("/api/v1/api-keys/", {"name": "x", "scopes": ["read"]}, format="json")
        .status_code
        == 403
    )
    key_id = created.json()["id"]
    assert token_client(other_admin).post(f"/api/v1/api-keys/{key_id}/revoke/").status_code == 404
    assert key_client(raw).get("/api/v1/api-keys/").status_code == 403
    revoked = admin.post(f"/api/v1/api-keys/{key_id}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert key_client(raw).get("/api/v1/documents/").status_code == 401


def test_the_command_prints_the_key_once_and_can_revoke_it(workspace: Any, ws_admin: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "create_api_key",
        workspace="acme",
        name="cli",
        scopes="read,review",
        user="wanda",
        stdout=out,
        stderr=err,
    )
    raw = out.getvalue().strip()
    key = ApiKey.objects.get()
    assert (
        raw.startswith(f"ra_{key.prefix}_")
        and key.scopes == ["read", "review"]
        and key.created_by == ws_admin
    )
    assert raw not in err.getvalue()
    assert key_client(raw).get("/api/v1/documents/").status_code == 200
    call_command("create_api_key", revoke=key.prefix, stdout=io.StringIO())
    assert key_client(raw).get("/api/v1/documents/").status_code == 401


# --- throttling ------------------------------------------------------------------------------------------
def test_each_key_has_its_own_rate_limit(workspace: Any, ws_admin: Any, settings: Any) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "2/min", "user": "100/min", "anon": "100/min"},
    }
    first, second = key_client(make_key(workspace, ws_admin)), key_client(make_key(workspace, ws_admin))
    assert [first.get("/api/v1/documents/").status_code for _ in range(2)] == [200, 200]
    limited = first.get("/api/v1/documents/")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "throttled" and int(limited["Retry-After"]) > 0
    assert second.get("/api/v1/documents/").status_code == 200
    assert token_client(ws_admin).get("/api/v1/documents/").status_code == 200
