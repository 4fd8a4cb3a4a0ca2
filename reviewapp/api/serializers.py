"""Input and output serializers. Inputs are parsed here; rules live in services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from extraction.schemas import extraction_json_schema

from ..models import Document, DocumentType, FieldValue


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


class DocumentIn(serializers.Serializer):
    document_type = serializers.SlugField()
    workspace = serializers.SlugField(required=False)
    file = serializers.FileField(required=False)
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    filename = serializers.CharField(required=False, max_length=200)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("file") and attrs.get("text") is None:
            raise serializers.ValidationError("Send a `file` (multipart) or `text`.")
        return attrs


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
