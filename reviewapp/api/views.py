"""REST API v1: input serializer -> service -> output serializer. Other workspaces' objects are 404.

Authentication: API key (`Authorization: Bearer ra_…` or `X-Api-Key`), user token, or session (for the
browsable API). A key acts inside its one workspace with its scopes: read for GETs, write to create, retry
and delete, review to accept / correct / reject. Runs and calls are for staff; webhooks and API keys for
workspace admins, by session or user token.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, services, webhooks
from ..errors import NotFound, ReviewAppError
from ..models import (
    ApiKey,
    Document,
    DocumentType,
    ExtractionRun,
    LLMCall,
    WebhookDelivery,
    WebhookSubscription,
)
from . import schema as _schema  # noqa: F401  (registers the API-key security scheme)
from .auth import IsStaffUser, NoApiKey
from .idempotency import idempotent
from .keys import api_key_create, api_key_revoke
from .serializers import (
    BATCH_MAX_DOCUMENTS,
    ApiKeyCreatedOut,
    ApiKeyIn,
    ApiKeyOut,
    CallOut,
    DecisionIn,
    DocumentBatchFilesIn,
    DocumentBatchIn,
    DocumentBatchOut,
    DocumentBatchTextIn,
    DocumentCreatedOut,
    DocumentFilterIn,
    DocumentIn,
    DocumentListOut,
    DocumentOut,
    DocumentTextIn,
    DocumentTypeOut,
    ErrorOut,
    FieldOut,
    RunFilterIn,
    RunOut,
    WebhookDeliveryOut,
    WebhookSubscriptionCreatedOut,
    WebhookSubscriptionIn,
    WebhookSubscriptionOut,
)
from .services import admin_workspace, admin_workspaces, document_delete, webhook_subscribe

# --- examples (shown in Swagger / Redoc) -----------------------------------------------------------------
FIELD_EXAMPLE = {
    "id": 41,
    "name": "total",
    "type": "money",
    "value": "23.10 MYR",
    "confidence": 0.62,
    "status": "needs_review",
    "final_value": None,
    "reasoning": "The line starting with TOTAL.",
    "evidence": {"start": 231, "end": 253, "text": "TOTAL               RM 23.10", "chunk": 0},
    "problem": "",
    "version": 1,
    "reviewed_at": None,
}
DOCUMENT_EXAMPLE = {
    "id": 7,
    "workspace": "acme",
    "document_type": "receipt",
    "filename": "receipt.txt",
    "kind": "text",
    "size_bytes": 412,
    "sha256": "9f2c…",
    "status": "needs_review",
    "status_reason": "",
    "created_at": "2026-03-12T14:22:00Z",
    "updated_at": "2026-03-12T14:22:03Z",
    "fields": [FIELD_EXAMPLE],
}
LIST_DOCUMENT = {k: v for k, v in DOCUMENT_EXAMPLE.items() if k != "fields"}
RUN_EXAMPLE = {
    "id": 12,
    "document": 7,
    "prompt_version": "receipt-extract v1",
    "arm": "active",
    "model_requested": "reviewapp/heuristic-v1",
    "model_answered": "reviewapp/heuristic-v1",
    "status": "succeeded",
    "started_at": "2026-03-12T14:22:01Z",
    "finished_at": "2026-03-12T14:22:03Z",
    "duration_ms": 1830,
    "attempts": 1,
    "prompt_tokens": 812,
    "completion_tokens": 240,
    "cached_tokens": 0,
    "cost_usd": "0.000000",
    "verify_score": 0.91,
    "chunks": 1,
    "dropped_fields": [],
    "error_code": "",
    "error_message": "",
}
SUBSCRIPTION_EXAMPLE = {
    "id": 3,
    "workspace": "acme",
    "url": "https://hooks.example.com/reviewapp",
    "events": ["document.needs_review", "document.reviewed"],
    "active": True,
    "created_at": "2026-03-12T14:00:00Z",
}
DELIVERY_EXAMPLE = {
    "id": 90,
    "subscription": 3,
    "event": "document.reviewed",
    "payload": {"event": "document.reviewed", "created_at": "…", "data": {"document": {"id": 7}}},
    "status": "delivered",
    "attempts": 2,
    "last_status_code": 200,
    "last_error": "",
    "created_at": "2026-03-12T15:00:00Z",
    "delivered_at": "2026-03-12T15:00:31Z",
}
KEY_EXAMPLE = {
    "id": 5,
    "workspace": "acme",
    "name": "ERP sync",
    "prefix": "3fa94c0d21be",
    "scopes": ["read", "write"],
    "created_by": "ada",
    "created_at": "2026-03-12T14:00:00Z",
    "last_used_at": None,
    "revoked_at": None,
}


def _example(name: str, value: Any, *, request: bool = False, code: str = "200") -> OpenApiExample:
    return OpenApiExample(
        name,
        value=value,
        request_only=request,
        response_only=not request,
        status_codes=None if request else [code],
    )


STALE = OpenApiExample(
    "stale version",
    value={
        "error": {
            "code": "stale",
            "message": "This field was changed by rita after you loaded it; reload to see the current value.",
            "details": {},
        }
    },
    response_only=True,
    status_codes=["409"],
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255},
    OpenApiParameter.HEADER,
    description="Any unique string (≤255 chars). Repeating it with the same body replays the first "
    "response; with another body it is a 409. Kept 24 hours.",
)


def _workspace(request: Request, slug: str | None) -> Any:
    allowed = selectors.workspaces_for(request.user)
    if slug:
        ws = allowed.filter(slug=slug).first()
        if ws is None:
            raise NotFound(f"No workspace {slug!r}.")
        return ws
    if allowed.count() != 1:
        raise ReviewAppError(
            "You belong to several workspaces: name one with `workspace`.", code="workspace_required"
        )
    return allowed.get()


def _document_type(slug: str) -> DocumentType:
    """The type an upload names; an unknown one is a 400 (the request is wrong, not a missing resource)."""
    doc_type = DocumentType.objects.filter(slug=slug).first()
    if doc_type is None:
        raise ReviewAppError(
            f"No document type {slug!r}.", code="unknown_document_type", details={"document_type": slug}
        )
    return doc_type


# --- documents -------------------------------------------------------------------------------------------
@extend_schema_view(
    get=extend_schema(
        summary="List documents",
        description="Newest first, cursor-paginated. Filters combine with AND.",
        parameters=[DocumentFilterIn],
        examples=[_example("a page", LIST_DOCUMENT)],
    ),
    post=extend_schema(
        summary="Upload a document",
        description="Multipart with `file`, or JSON with `text`. The extraction is queued: poll the document "
        "until its status is terminal. `duplicate_of` names an earlier upload of the same bytes.",
        parameters=[IDEMPOTENCY_KEY],
        request={"application/json": DocumentTextIn, "multipart/form-data": DocumentIn},
        responses={201: DocumentCreatedOut, 409: ErrorOut},
        examples=[
            _example("text", {"document_type": "receipt", "text": "TOTAL RM 23.10"}, request=True),
            _example(
                "created",
                {**DOCUMENT_EXAMPLE, "status": "queued", "fields": [], "duplicate_of": None},
                code="201",
            ),
        ],
    ),
)
class DocumentListCreate(generics.ListCreateAPIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_serializer_class(self) -> Any:
        return DocumentIn if self.request.method == "POST" else DocumentListOut

    def get_queryset(self) -> QuerySet[Document]:
        qs = selectors.documents_for(self.request.user)
        if getattr(self, "swagger_fake_view", False):
            return qs
        params = DocumentFilterIn(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        f = params.validated_data
        if f.get("status"):
            qs = qs.filter(status=f["status"])
        if f.get("document_type"):
            qs = qs.filter(document_type__slug=f["document_type"])
        if f.get("workspace"):
            qs = qs.filter(workspace__slug=f["workspace"])
        if f.get("needs_review") is True:
            qs = qs.filter(status=Document.Status.NEEDS_REVIEW)
        elif f.get("needs_review") is False:
            qs = qs.exclude(status=Document.Status.NEEDS_REVIEW)
        if f.get("created_after"):
            qs = qs.filter(created_at__gte=f["created_after"])
        if f.get("created_before"):
            qs = qs.filter(created_at__lt=f["created_before"])
        return qs

    def post(self, request: Request, *args: object, **kwargs: object) -> Response:
        return idempotent(request, lambda: self._create(request))

    def _create(self, request: Request) -> Response:
        data = DocumentIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        doc_type = _document_type(v["document_type"])
        upload = v.get("file")
        created = services.document_create(
            workspace=_workspace(request, v.get("workspace")),
            document_type=doc_type,
            user=request.user,
            data=upload.read() if upload else v["text"].encode("utf-8"),
            filename=upload.name if upload else v.get("filename") or "text.txt",
            content_type=upload.content_type if upload else "text/plain",
        )
        document = created.document
        document.duplicate_of = created.duplicate_of.pk if created.duplicate_of else None
        return Response(DocumentCreatedOut(document).data, status=status.HTTP_201_CREATED)


class DocumentBatchCreate(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(
        summary="Upload several documents",
        description=f"Up to {BATCH_MAX_DOCUMENTS} documents of one type: JSON with `documents` (texts), or "
        "multipart with one `file` part per document. Each is checked and stored on its own: the refused "
        "ones are listed in `rejected` with the reason, the others are created and queued together, "
        "several to a task message (cheaper for the workers than one upload each). 201 when at least one "
        "was created; 400 `all_rejected` when none was.",
        parameters=[IDEMPOTENCY_KEY],
        request={"application/json": DocumentBatchTextIn, "multipart/form-data": DocumentBatchFilesIn},
        responses={201: DocumentBatchOut, 400: ErrorOut},
        examples=[
            _example(
                "texts",
                {"document_type": "receipt", "documents": [{"text": "TOTAL RM 23.10", "filename": "a.txt"}]},
                request=True,
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        return idempotent(request, lambda: self._create(request))

    def _create(self, request: Request) -> Response:
        data = DocumentBatchIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        doc_type = _document_type(v["document_type"])
        workspace = _workspace(request, v.get("workspace"))
        if v.get("file"):
            files = [(f.read(), f.name, f.content_type) for f in v["file"]]
        else:
            files = [
                (d["text"].encode("utf-8"), d.get("filename") or f"text-{i}.txt", "text/plain")
                for i, d in enumerate(v["documents"])
            ]
        made, refused = services.documents_create(
            workspace=workspace, document_type=doc_type, user=request.user, files=files
        )
        created = []
        for c in made:
            c.document.duplicate_of = c.duplicate_of.pk if c.duplicate_of else None
            created.append(c.document)
        rejected = [
            {
                "index": r.index,
                "filename": r.filename,
                "error": {"code": r.error.code, "message": r.error.message, "details": r.error.details},
            }
            for r in refused
        ]
        if not created:
            raise ReviewAppError(
                "No document was accepted.", code="all_rejected", details={"rejected": rejected}
            )
        body = DocumentBatchOut({"documents": created, "rejected": rejected}).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema_view(
    get=extend_schema(
        summary="Retrieve a document",
        description="Status and the fields of its current run.",
        examples=[_example("needs review", DOCUMENT_EXAMPLE)],
    ),
    delete=extend_schema(
        summary="Delete a document",
        description="Refused with 409 while it is queued or extracting (`in_progress`) and once a human "
        "decided any of its fields (`has_decisions`: decisions are the audit trail).",
        responses={204: None, 409: ErrorOut},
    ),
)
class DocumentDetail(generics.RetrieveDestroyAPIView):
    serializer_class = DocumentOut

    def get_queryset(self) -> QuerySet[Document]:
        return selectors.documents_for(self.request.user)

    def perform_destroy(self, instance: Document) -> None:
        document_delete(document=instance)


class DocumentRetry(APIView):
    @extend_schema(
        summary="Re-queue a document's extraction",
        description="From failed, or to re-extract a finished document. A no-op while it is queued or "
        "extracting.",
        request=None,
        responses={200: DocumentOut},
        examples=[_example("queued again", {**DOCUMENT_EXAMPLE, "status": "queued", "fields": []})],
    )
    def post(self, request: Request, pk: int) -> Response:
        doc = services.document_retry(document=selectors.document_for(request.user, pk))
        return Response(DocumentOut(doc).data)


class DocumentFields(APIView):
    @extend_schema(
        summary="List a document's fields",
        description="The fields of its current run, in schema order.",
        responses={200: FieldOut(many=True)},
        examples=[_example("fields", [FIELD_EXAMPLE])],
    )
    def get(self, request: Request, pk: int) -> Response:
        doc = selectors.document_for(request.user, pk)
        return Response(FieldOut(selectors.document_fields(doc), many=True).data)


# --- fields ----------------------------------------------------------------------------------------------
class FieldDetail(APIView):
    @extend_schema(
        summary="Retrieve a field", responses={200: FieldOut}, examples=[_example("field", FIELD_EXAMPLE)]
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(FieldOut(selectors.field_for(request.user, pk)).data)


class _Decision(APIView):
    """Accept, correct or reject a field: the same service, validation and concurrency rules as the UI.

    With an API key the decision is recorded as made by the key's creator (ReviewDecision.reviewer is a
    person), so give review keys to the people who answer for them.
    """

    required_scope = "review"
    action = ""

    def post(self, request: Request, pk: int) -> Response:
        data = DecisionIn(data=request.data)
        data.is_valid(raise_exception=True)
        fv = services.field_decide(
            user=request.user,
            field_id=pk,
            action=self.action,
            version=data.validated_data.get("version"),
            value=data.validated_data.get("value"),
        )
        return Response(FieldOut(fv).data)


_DECISION_DOC = (
    "Send the `version` you saw: if the field changed since, the answer is 409 `stale` and nothing is "
    "overwritten; 409 `claimed` when another reviewer holds it in the queue."
)


class FieldAccept(_Decision):
    action = "accept"

    @extend_schema(
        summary="Accept a field's value",
        description=_DECISION_DOC,
        request=DecisionIn,
        responses={200: FieldOut, 409: ErrorOut},
        examples=[
            _example("accept", {"version": 1}, request=True),
            _example(
                "accepted", {**FIELD_EXAMPLE, "status": "accepted", "final_value": "23.10 MYR", "version": 2}
            ),
            STALE,
        ],
    )
    def post(self, request: Request, pk: int) -> Response:
        return super().post(request, pk)


class FieldCorrect(_Decision):
    action = "correct"

    @extend_schema(
        summary="Correct a field's value",
        description="`value` is validated and normalised by the field's type (400 `invalid_value` "
        "otherwise). " + _DECISION_DOC,
        request=DecisionIn,
        responses={200: FieldOut, 409: ErrorOut},
        examples=[
            _example("correct", {"version": 1, "value": "23.50 MYR"}, request=True),
            _example(
                "corrected",
                {**FIELD_EXAMPLE, "status": "corrected", "final_value": "23.50 MYR", "version": 2},
            ),
            STALE,
        ],
    )
    def post(self, request: Request, pk: int) -> Response:
        return super().post(request, pk)


class FieldReject(_Decision):
    action = "reject"

    @extend_schema(
        summary="Reject a field's value",
        description="The final value becomes null. " + _DECISION_DOC,
        request=DecisionIn,
        responses={200: FieldOut, 409: ErrorOut},
        examples=[
            _example("reject", {"version": 1}, request=True),
            _example("rejected", {**FIELD_EXAMPLE, "status": "rejected", "version": 2}),
            STALE,
        ],
    )
    def post(self, request: Request, pk: int) -> Response:
        return super().post(request, pk)


# --- document types --------------------------------------------------------------------------------------
TYPE_EXAMPLE = {
    "slug": "receipt",
    "name": "Receipt",
    "description": "A till receipt.",
    "fields": [{"name": "total", "type": "money", "required": True, "threshold": 0.85}],
    "json_schema": {"type": "object", "properties": {"fields": {"type": "object"}}},
}


@extend_schema_view(
    get=extend_schema(summary="List document types", examples=[_example("types", [TYPE_EXAMPLE])])
)
class DocumentTypeList(generics.ListAPIView):
    serializer_class = DocumentTypeOut
    queryset = DocumentType.objects.prefetch_related("fields").order_by("slug")
    pagination_class = None


@extend_schema_view(
    get=extend_schema(
        summary="Retrieve a document type",
        description="Its fields, and the JSON Schema the extraction must satisfy.",
        examples=[_example("receipt", TYPE_EXAMPLE)],
    )
)
class DocumentTypeDetail(generics.RetrieveAPIView):
    serializer_class = DocumentTypeOut
    queryset = DocumentType.objects.prefetch_related("fields")
    lookup_field = "slug"


# --- runs and calls (staff) ------------------------------------------------------------------------------
def _runs(user: Any) -> QuerySet[ExtractionRun]:
    return ExtractionRun.objects.filter(
        document__workspace_id__in=selectors.workspace_ids(user)
    ).select_related("prompt_version__document_type")


@extend_schema_view(
    get=extend_schema(
        summary="List extraction runs (staff)",
        parameters=[RunFilterIn],
        examples=[_example("runs", RUN_EXAMPLE)],
    )
)
class RunList(generics.ListAPIView):
    serializer_class = RunOut
    permission_classes = [IsAuthenticated, IsStaffUser]

    def get_queryset(self) -> QuerySet[ExtractionRun]:
        qs = _runs(self.request.user)
        if getattr(self, "swagger_fake_view", False):
            return qs
        params = RunFilterIn(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        if params.validated_data.get("document"):
            qs = qs.filter(document_id=params.validated_data["document"])
        if params.validated_data.get("status"):
            qs = qs.filter(status=params.validated_data["status"])
        return qs


@extend_schema_view(
    get=extend_schema(summary="Retrieve an extraction run (staff)", examples=[_example("run", RUN_EXAMPLE)])
)
class RunDetail(generics.RetrieveAPIView):
    serializer_class = RunOut
    permission_classes = [IsAuthenticated, IsStaffUser]

    def get_queryset(self) -> QuerySet[ExtractionRun]:
        return _runs(self.request.user)


CALL_EXAMPLE = {
    "id": 301,
    "run": 12,
    "document": 7,
    "step": "extract",
    "attempt": 1,
    "chunk": None,
    "prompt_version": "receipt-extract v1",
    "model_alias": "offline",
    "model_requested": "reviewapp/heuristic-v1",
    "model_answered": "reviewapp/heuristic-v1",
    "output_mode": "json_schema",
    "messages": [{"role": "system", "content": "…"}],
    "raw_response": '{"fields": {…}}',
    "parse_status": "ok",
    "repairs": [],
    "prompt_tokens": 600,
    "completion_tokens": 200,
    "cached_tokens": 0,
    "cost_usd": "0.000000",
    "latency_ms": 4,
    "ttft_ms": None,
    "near_limit": False,
    "error_class": "",
    "error_message": "",
    "created_at": "2026-03-12T14:22:02Z",
}


@extend_schema_view(
    get=extend_schema(
        summary="List a run's model calls (staff)",
        description="Every call, failed ones included, oldest first.",
        examples=[_example("calls", CALL_EXAMPLE)],
    )
)
class RunCalls(generics.ListAPIView):
    serializer_class = CallOut
    permission_classes = [IsAuthenticated, IsStaffUser]

    def get_queryset(self) -> QuerySet[LLMCall]:
        if getattr(self, "swagger_fake_view", False):
            return LLMCall.objects.none()
        run = _runs(self.request.user).filter(pk=self.kwargs["pk"]).first()
        if run is None:
            raise NotFound("No such run.")
        return LLMCall.objects.filter(run=run)


# --- webhooks (workspace admins) -------------------------------------------------------------------------
def _subscriptions(user: Any) -> QuerySet[WebhookSubscription]:
    return WebhookSubscription.objects.filter(workspace__in=admin_workspaces(user)).select_related(
        "workspace"
    )


@extend_schema_view(
    get=extend_schema(
        summary="List webhook subscriptions (workspace admins)",
        examples=[_example("subscriptions", SUBSCRIPTION_EXAMPLE)],
    ),
    post=extend_schema(
        summary="Subscribe a URL to document events (workspace admins)",
        description="Deliveries are POSTed as JSON, signed `X-Reviewapp-Signature: t=<unix>,v1=<hex "
        'HMAC-SHA256(secret, "<t>.<body>")>`, and retried with exponential backoff on network errors, 429 '
        "and 5xx. The `secret` is in this response only.",
        request=WebhookSubscriptionIn,
        responses={201: WebhookSubscriptionCreatedOut},
        examples=[
            _example(
                "subscribe",
                {"url": "https://hooks.example.com/reviewapp", "events": ["document.needs_review"]},
                request=True,
            ),
            _example("created", {**SUBSCRIPTION_EXAMPLE, "secret": "whsec_…"}, code="201"),
        ],
    ),
)
class WebhookList(generics.ListCreateAPIView):
    permission_classes = [IsAuthenticated, NoApiKey]
    serializer_class = WebhookSubscriptionOut

    def get_queryset(self) -> QuerySet[WebhookSubscription]:
        return _subscriptions(self.request.user)

    def post(self, request: Request, *args: object, **kwargs: object) -> Response:
        data = WebhookSubscriptionIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        subscription = webhook_subscribe(
            workspace=admin_workspace(request.user, v.get("workspace")), url=v["url"], events=v["events"]
        )
        return Response(WebhookSubscriptionCreatedOut(subscription).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    get=extend_schema(
        summary="Retrieve a webhook subscription", examples=[_example("subscription", SUBSCRIPTION_EXAMPLE)]
    ),
    delete=extend_schema(summary="Delete a webhook subscription and its delivery log"),
)
class WebhookDetail(generics.RetrieveDestroyAPIView):
    permission_classes = [IsAuthenticated, NoApiKey]
    serializer_class = WebhookSubscriptionOut

    def get_queryset(self) -> QuerySet[WebhookSubscription]:
        return _subscriptions(self.request.user)


@extend_schema_view(
    get=extend_schema(
        summary="A subscription's delivery log (workspace admins)",
        description="Newest first: status, attempts, last HTTP status and error of each delivery.",
        examples=[_example("log", DELIVERY_EXAMPLE)],
    )
)
class WebhookDeliveries(generics.ListAPIView):
    permission_classes = [IsAuthenticated, NoApiKey]
    serializer_class = WebhookDeliveryOut

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        if getattr(self, "swagger_fake_view", False):
            return WebhookDelivery.objects.none()
        subscription = _subscriptions(self.request.user).filter(pk=self.kwargs["pk"]).first()
        if subscription is None:
            raise NotFound("No such webhook.")
        return WebhookDelivery.objects.filter(subscription=subscription)


class WebhookDeliveryReplay(APIView):
    permission_classes = [IsAuthenticated, NoApiKey]

    @extend_schema(
        summary="Send a delivery again (workspace admins)",
        description="Queues a new delivery with the same event and payload; the original stays in the log.",
        request=None,
        responses={202: WebhookDeliveryOut},
        examples=[
            _example("queued", {**DELIVERY_EXAMPLE, "id": 91, "status": "pending", "attempts": 0}, code="202")
        ],
    )
    def post(self, request: Request, pk: int) -> Response:
        delivery = WebhookDelivery.objects.filter(
            pk=pk, subscription__workspace__in=admin_workspaces(request.user)
        ).first()
        if delivery is None:
            raise NotFound("No such delivery.")
        copy = webhooks.delivery_replay(delivery=delivery)
        return Response(WebhookDeliveryOut(copy).data, status=status.HTTP_202_ACCEPTED)


# --- API keys (workspace admins) -------------------------------------------------------------------------
def _keys(user: Any) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(workspace__in=admin_workspaces(user)).select_related(
        "workspace", "created_by"
    )


@extend_schema_view(
    get=extend_schema(
        summary="List API keys (workspace admins)",
        description="Prefixes only: the secret was shown once, when the key was created.",
        examples=[_example("keys", KEY_EXAMPLE)],
    ),
    post=extend_schema(
        summary="Create an API key (workspace admins)",
        description="The key is in this response only; store it. Decisions made with a `review` key are "
        "recorded as yours.",
        request=ApiKeyIn,
        responses={201: ApiKeyCreatedOut},
        examples=[
            _example("create", {"name": "ERP sync", "scopes": ["read", "write"]}, request=True),
            _example("created", {**KEY_EXAMPLE, "key": "ra_3fa94c0d21be_…"}, code="201"),
        ],
    ),
)
class ApiKeyList(generics.ListCreateAPIView):
    permission_classes = [IsAuthenticated, NoApiKey]
    serializer_class = ApiKeyOut

    def get_queryset(self) -> QuerySet[ApiKey]:
        return _keys(self.request.user)

    def post(self, request: Request, *args: object, **kwargs: object) -> Response:
        data = ApiKeyIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        created = api_key_create(
            workspace=admin_workspace(request.user, v.get("workspace")),
            name=v["name"],
            scopes=sorted(v["scopes"]),
            created_by=request.user,
        )
        created.api_key.key = created.raw_key
        return Response(ApiKeyCreatedOut(created.api_key).data, status=status.HTTP_201_CREATED)


class ApiKeyRevoke(APIView):
    permission_classes = [IsAuthenticated, NoApiKey]

    @extend_schema(
        summary="Revoke an API key (workspace admins)",
        description="Takes effect on the next request (401 `revoked_api_key`). Idempotent.",
        request=None,
        responses={200: ApiKeyOut},
        examples=[_example("revoked", {**KEY_EXAMPLE, "revoked_at": "2026-03-13T09:00:00Z"})],
    )
    def post(self, request: Request, pk: int) -> Response:
        key = _keys(request.user).filter(pk=pk).first()
        if key is None:
            raise NotFound("No such API key.")
        return Response(ApiKeyOut(api_key_revoke(api_key=key)).data)
