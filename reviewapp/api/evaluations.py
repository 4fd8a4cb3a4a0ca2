"""Evaluations and gold export (staff only: gold spans every workspace that uses the document type)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import evaluation as ev
from ..errors import NotFound
from ..models import DocumentType, Evaluation, PromptVersion
from .auth import IsStaffUser


class EvaluationIn(serializers.Serializer):
    document_type = serializers.SlugField()
    prompt_version = serializers.CharField(help_text="Label (`receipt-extract v2`) or version number (`2`).")
    model_alias = serializers.CharField(required=False, allow_blank=True, default="")
    limit = serializers.IntegerField(required=False, min_value=1, allow_null=True, default=None)


class EvaluationOut(serializers.ModelSerializer):
    document_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    prompt_version = serializers.CharField(source="prompt_version.label", read_only=True)
    report = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField(
        help_text="Gold documents planned and done so far while it runs (null before it starts and once done)."
    )

    class Meta:
        model = Evaluation
        fields = ["id", "document_type", "prompt_version", "model_alias", "limit", "status", "report",
                  "error_message", "attempts", "progress", "created_at", "started_at", "heartbeat_at",
                  "finished_at"]  # fmt: skip
        extra_kwargs = {
            "error_message": {"help_text": "Why it failed, e.g. `stuck: …` when the watchdog gave up on it."},
            "attempts": {
                "help_text": "Deliveries of its job that claimed it (a lost worker's job is retried)."
            },
            "heartbeat_at": {"help_text": "When it last made progress (a gold document finished)."},
        }

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {"documents": {"type": "integer"}, "done": {"type": "integer"}},
        }
    )
    def get_progress(self, obj: Evaluation) -> dict[str, int] | None:
        return ev.evaluation_progress(obj)

    def get_report(self, obj: Evaluation) -> dict[str, Any]:
        # Per-item rows can be thousands long: the admin page shows them; the API gives the metrics.
        return {k: v for k, v in (obj.report or {}).items() if k != "items"}


def _prompt(document_type: DocumentType, ref: str) -> PromptVersion:
    qs = document_type.prompt_versions.all()
    version = ref.rsplit("v", 1)[-1].strip() if not ref.isdigit() else ref
    prompt = qs.filter(version=int(version)).first() if version.isdigit() else None
    if prompt is None or (not ref.isdigit() and prompt.label != ref.strip()):
        raise NotFound(f"No prompt version {ref!r} for {document_type.slug}.")
    return prompt


class EvaluationCreate(APIView):
    permission_classes = [IsAuthenticated, IsStaffUser]

    @extend_schema(summary="Evaluate a prompt version and model on gold (staff)", request=EvaluationIn,
                   responses={201: EvaluationOut})  # fmt: skip
    def post(self, request: Request) -> Response:
        data = EvaluationIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        document_type = DocumentType.objects.filter(slug=v["document_type"]).first()
        if document_type is None:
            raise NotFound(f"No document type {v['document_type']!r}.")
        evaluation = ev.evaluation_create(
            document_type=document_type,
            prompt_version=_prompt(document_type, v["prompt_version"]),
            model_alias=v["model_alias"],
            limit=v["limit"],
            user=request.user,
        )
        return Response(EvaluationOut(evaluation).data, status=status.HTTP_201_CREATED)


class EvaluationDetail(APIView):
    permission_classes = [IsAuthenticated, IsStaffUser]

    @extend_schema(summary="Retrieve an evaluation and its report (staff)", responses={200: EvaluationOut})
    def get(self, request: Request, pk: int) -> Response:
        evaluation = (
            Evaluation.objects.select_related("document_type", "prompt_version__document_type")
            .filter(pk=pk)
            .first()
        )
        if evaluation is None:
            raise NotFound("No such evaluation.")
        return Response(EvaluationOut(evaluation).data)


class GoldExport(APIView):
    permission_classes = [IsAuthenticated, IsStaffUser]

    @extend_schema(
        summary="Export a document type's gold set as JSON lines or CSV (staff)",
        parameters=[
            OpenApiParameter(
                "as", str, enum=["jsonl", "csv"], default="jsonl", description="`format` is taken by DRF"
            )
        ],
        responses={(200, "application/x-ndjson"): OpenApiTypes.STR, (200, "text/csv"): OpenApiTypes.STR},
    )
    def get(self, request: Request, slug: str) -> HttpResponse:
        document_type = DocumentType.objects.filter(slug=slug).first()
        if document_type is None:
            raise NotFound(f"No document type {slug!r}.")
        fmt = request.query_params.get("as", "jsonl")
        if fmt not in ("jsonl", "csv"):
            raise NotFound(f"No export format {fmt!r}.")
        body = ev.gold_export(ev.gold_set(document_type), fmt=fmt)
        return HttpResponse(body, content_type="text/csv" if fmt == "csv" else "application/x-ndjson")
