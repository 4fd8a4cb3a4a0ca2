"""Input and output serializers. Inputs are parsed here; rules live in services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from extraction.schemas import extraction_json_schema

from .. import webhooks
from ..models import (
    ApiKey,
    Document,
    DocumentType,
    ExtractionRun,
    FieldValue,
    LLMCall,
    WebhookDelivery,
    WebhookSubscription,
)


class ErrorDetail(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable: `not_found`, `stale`, `invalid`, …")
    message = serializers.CharField()
    details = serializers.DictField(help_text="Per-field errors for `invalid`; context otherwise.")


class ErrorOut(serializers.Serializer):
    """The one error shape of the API."""

    error = ErrorDetail()


class FieldOut(serializers.ModelSerializer):
    name = serializers.CharField(source="field_spec.name")
    type = serializers.CharField(source="field_spec.type")
    value = serializers.JSONField()
    final_value = serializers.JSONField()
    evidence = serializers.SerializerMethodField()

    class Meta:
        model = FieldValue
        fields = [
            "id",
            "name",
            "type",
            "value",
            "confidence",
            "status",
            "final_value",
            "reasoning",
            "evidence",
            "problem",
            "version",
            "reviewed_at",
        ]

    def get_evidence(self, obj: FieldValue) -> dict[str, Any] | None:
        if obj.evidence_start is None:
            return None
        return {
            "start": obj.evidence_start,
            "end": obj.evidence_end,
            "text": obj.evidence_text,
            "chunk": obj.evidence_chunk,
        }


class DocumentOut(serializers.ModelSerializer):
    document_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    workspace = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    fields = serializers.SerializerMethodField(method_name="fields_of")

    class Meta:
        model = Document
        fields = [
            "id",
            "workspace",
            "document_type",
            "filename",
            "kind",
            "size_bytes",
            "sha256",
            "status",
            "status_reason",
            "created_at",
            "updated_at",
            "fields",
        ]

    @extend_schema_field(FieldOut(many=True))
    def fields_of(self, obj: Document) -> list[dict[str, Any]]:
        from ..selectors import document_fields

        return FieldOut(document_fields(obj), many=True).data


class DocumentListOut(DocumentOut):
    class Meta(DocumentOut.Meta):
        fields = [f for f in DocumentOut.Meta.fields if f != "fields"]


class DocumentCreatedOut(DocumentOut):
    duplicate_of = serializers.IntegerField(
        allow_null=True, help_text="The earlier document of this workspace with the same bytes (SHA-256)."
    )

    class Meta(DocumentOut.Meta):
        fields = [*DocumentOut.Meta.fields, "duplicate_of"]


class DocumentIn(serializers.Serializer):
    document_type = serializers.SlugField(help_text="Slug of the document type, e.g. `invoice`.")
    workspace = serializers.SlugField(
        required=False, help_text="Needed only when you belong to several workspaces."
    )
    file = serializers.FileField(required=False, help_text="The document (multipart only).")
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    filename = serializers.CharField(required=False, max_length=200)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("file") and attrs.get("text") is None:
            raise serializers.ValidationError("Send a `file` (multipart) or `text`.")
        return attrs


class DocumentTextIn(serializers.Serializer):
    """The JSON form of a create: the document's text instead of a file."""

    document_type = serializers.SlugField(help_text="Slug of the document type, e.g. `invoice`.")
    workspace = serializers.SlugField(
        required=False, help_text="Needed only when you belong to several workspaces."
    )
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)
    filename = serializers.CharField(required=False, max_length=200)


BATCH_MAX_DOCUMENTS = 100


class DocumentBatchItemIn(serializers.Serializer):
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)
    filename = serializers.CharField(required=False, max_length=200)


class DocumentBatchTextIn(serializers.Serializer):
    """The JSON form of a batch upload: the documents' texts."""

    document_type = serializers.SlugField(help_text="Slug of the document type of every document.")
    workspace = serializers.SlugField(
        required=False, help_text="Needed only when you belong to several workspaces."
    )
    documents = serializers.ListField(
        child=DocumentBatchItemIn(), min_length=1, max_length=BATCH_MAX_DOCUMENTS
    )


class DocumentBatchFilesIn(serializers.Serializer):
    """The multipart form of a batch upload: one `file` part per document."""

    document_type = serializers.SlugField(help_text="Slug of the document type of every document.")
    workspace = serializers.SlugField(
        required=False, help_text="Needed only when you belong to several workspaces."
    )
    file = serializers.ListField(child=serializers.FileField(), min_length=1, max_length=BATCH_MAX_DOCUMENTS)


class DocumentBatchIn(serializers.Serializer):
    """What the batch upload accepts in either form (DocumentBatchTextIn, DocumentBatchFilesIn)."""

    document_type = serializers.SlugField()
    workspace = serializers.SlugField(required=False)
    documents = serializers.ListField(
        child=DocumentBatchItemIn(), required=False, max_length=BATCH_MAX_DOCUMENTS
    )
    file = serializers.ListField(
        child=serializers.FileField(), required=False, max_length=BATCH_MAX_DOCUMENTS
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("documents")) == bool(attrs.get("file")):
            raise serializers.ValidationError(
                f"Send 1 to {BATCH_MAX_DOCUMENTS} `documents` (JSON) or `file` parts (multipart), not both."
            )
        return attrs


class DocumentRejectedOut(serializers.Serializer):
    index = serializers.IntegerField(help_text="Its position in the request, from 0.")
    filename = serializers.CharField()
    error = ErrorDetail()


class DocumentBatchOut(serializers.Serializer):
    documents = DocumentCreatedOut(many=True, help_text="The documents stored and queued, in request order.")
    rejected = DocumentRejectedOut(many=True, help_text="The documents refused (empty, binary, too large …).")


class DocumentFilterIn(serializers.Serializer):
    status = serializers.ChoiceField(choices=Document.Status.choices, required=False)
    document_type = serializers.SlugField(required=False, help_text="Slug of the document type.")
    workspace = serializers.SlugField(required=False)
    needs_review = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="true: only documents waiting for review."
    )
    created_after = serializers.DateTimeField(required=False, help_text="ISO 8601, inclusive.")
    created_before = serializers.DateTimeField(required=False, help_text="ISO 8601, exclusive.")


class DecisionIn(serializers.Serializer):
    version = serializers.IntegerField(
        required=False, help_text="The field version you saw; stale versions get 409."
    )
    value = serializers.JSONField(required=False, help_text="The corrected value (correct only).")


class DocumentTypeOut(serializers.ModelSerializer):
    json_schema = serializers.SerializerMethodField()
    fields = serializers.SerializerMethodField(method_name="fields_of")

    class Meta:
        model = DocumentType
        fields = ["slug", "name", "description", "fields", "json_schema"]

    def fields_of(self, obj: DocumentType) -> list[dict[str, Any]]:
        return [f.to_data().model_dump(mode="json") for f in obj.fields.all()]

    def get_json_schema(self, obj: DocumentType) -> dict[str, Any]:
        return extraction_json_schema(obj.to_schema())


class RunOut(serializers.ModelSerializer):
    prompt_version = serializers.CharField(source="prompt_version.label")
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6, coerce_to_string=True)

    class Meta:
        model = ExtractionRun
        fields = [
            "id",
            "document",
            "prompt_version",
            "arm",
            "model_requested",
            "model_answered",
            "status",
            "started_at",
            "finished_at",
            "duration_ms",
            "attempts",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_usd",
            "verify_score",
            "chunks",
            "dropped_fields",
            "error_code",
            "error_message",
        ]


class CallOut(serializers.ModelSerializer):
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=6, coerce_to_string=True)
    messages = serializers.JSONField(help_text="PII-redacted when the workspace asks for it.")
    repairs = serializers.JSONField()

    class Meta:
        model = LLMCall
        fields = [
            "id",
            "run",
            "document",
            "step",
            "attempt",
            "chunk",
            "prompt_version",
            "model_alias",
            "model_requested",
            "model_answered",
            "output_mode",
            "messages",
            "raw_response",
            "parse_status",
            "repairs",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_usd",
            "latency_ms",
            "ttft_ms",
            "near_limit",
            "error_class",
            "error_message",
            "created_at",
        ]


class RunFilterIn(serializers.Serializer):
    document = serializers.IntegerField(required=False, min_value=1)
    status = serializers.ChoiceField(choices=ExtractionRun.Status.choices, required=False)


class WebhookSubscriptionIn(serializers.Serializer):
    url = serializers.URLField(max_length=500)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=webhooks.EVENTS), min_length=1, max_length=len(webhooks.EVENTS)
    )
    workspace = serializers.SlugField(required=False, help_text="Needed only when you administer several.")

    def validate_url(self, value: str) -> str:
        problem = webhooks.check_url(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value


class WebhookSubscriptionOut(serializers.ModelSerializer):
    workspace = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    events = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = WebhookSubscription
        fields = ["id", "workspace", "url", "events", "active", "created_at"]


class WebhookSubscriptionCreatedOut(WebhookSubscriptionOut):
    secret = serializers.CharField(help_text="The signing secret. Shown once: store it now.")

    class Meta(WebhookSubscriptionOut.Meta):
        fields = [*WebhookSubscriptionOut.Meta.fields, "secret"]


class WebhookDeliveryOut(serializers.ModelSerializer):
    payload = serializers.JSONField()

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "subscription",
            "event",
            "payload",
            "status",
            "attempts",
            "last_status_code",
            "last_error",
            "created_at",
            "delivered_at",
        ]


class ApiKeyIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.MultipleChoiceField(choices=ApiKey.Scope.choices)
    workspace = serializers.SlugField(required=False, help_text="Needed only when you administer several.")


class ApiKeyOut(serializers.ModelSerializer):
    workspace = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    scopes = serializers.ListField(child=serializers.CharField())
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "workspace",
            "name",
            "prefix",
            "scopes",
            "created_by",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]


class ApiKeyCreatedOut(ApiKeyOut):
    key = serializers.CharField(help_text="The key. Shown once: store it now; only its hash is kept.")

    class Meta(ApiKeyOut.Meta):
        fields = [*ApiKeyOut.Meta.fields, "key"]
