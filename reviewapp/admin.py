"""Django admin: where admins manage document types, fields, thresholds and prompt versions, and read traces."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpRequest

from . import llm
from .models import (
    Document,
    DocumentType,
    Evaluation,
    ExtractionRun,
    FieldSpec,
    FieldValue,
    LLMCall,
    Membership,
    PromptVersion,
    ReviewDecision,
    Workspace,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "redact_pii", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
    search_fields = ["name", "slug"]


class FieldSpecInline(admin.TabularInline):
    model = FieldSpec
    extra = 0
    fields = ["position", "name", "type", "description", "required", "threshold", "choices"]


@admin.register(DocumentType)
class DocumentTypeAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "active_prompt", "verify_threshold", "max_attempts"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [FieldSpecInline]

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        floating = [f"{m.model_name} → {m.model}" for m in _floating()]
        if floating:
            self.message_user(
                request,
                "Floating (unpinned) model names in the LLM config: " + ", ".join(floating),
                level="warning",
            )
        return super().render_change_form(request, context, *args, **kwargs)


def _floating() -> list[Any]:
    from extraction.config import floating_models

    return floating_models(llm.llm_config())


@admin.register(PromptVersion)
class PromptVersionAdmin(admin.ModelAdmin):
    list_display = ["label", "document_type", "model_alias", "locked", "created_at", "calls", "failed_parses"]
    list_filter = ["document_type", "locked"]

    def get_readonly_fields(self, request: HttpRequest, obj: PromptVersion | None = None) -> list[str]:
        # A version that produced data is evidence: changing it would falsify every run that cites it.
        return ["document_type", "version", "instructions", "model_alias"] if obj and obj.locked else []

    def get_queryset(self, request: HttpRequest) -> QuerySet[PromptVersion]:
        return super().get_queryset(request).select_related("document_type")

    @admin.display(description="calls")
    def calls(self, obj: PromptVersion) -> int:
        return LLMCall.objects.filter(prompt_version=obj.label).count()

    @admin.display(description="parse failures / repairs")
    def failed_parses(self, obj: PromptVersion) -> str:
        qs = LLMCall.objects.filter(prompt_version=obj.label)
        return f"{qs.filter(parse_status='failed').count()} / {qs.filter(parse_status='repaired').count()}"


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["id", "filename", "workspace", "document_type", "status", "deliveries", "created_at"]
    list_filter = ["status", "document_type", "workspace"]
    search_fields = ["filename", "sha256"]
    readonly_fields = ["sha256", "claim_token", "claimed_at", "deliveries"]
    exclude = ["text"]


class LLMCallInline(admin.TabularInline):
    model = LLMCall
    extra = 0
    can_delete = False
    fields = [
        "step",
        "attempt",
        "chunk",
        "model_alias",
        "model_answered",
        "parse_status",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "near_limit",
        "error_class",
    ]
    readonly_fields = fields
    show_change_link = True


@admin.register(ExtractionRun)
class ExtractionRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "document",
        "prompt_version",
        "model_answered",
        "status",
        "attempts",
        "verify_score",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "duration_ms",
        "started_at",
    ]
    list_filter = ["status", "prompt_version", "model_answered", "arm"]
    inlines = [LLMCallInline]
    raw_id_fields = ["document"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LLMCall)
class LLMCallAdmin(admin.ModelAdmin):
    """The trace. Filter by prompt version and parse status to see the raw replies that needed repair."""

    list_display = [
        "id",
        "created_at",
        "step",
        "prompt_version",
        "model_alias",
        "model_answered",
        "parse_status",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "latency_ms",
        "near_limit",
        "error_class",
    ]
    list_filter = ["step", "parse_status", "prompt_version", "model_alias", "near_limit", "error_class"]
    search_fields = ["raw_response", "error_message"]
    raw_id_fields = ["run", "document"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # Per prompt version and model: calls, failures, tokens and cost, above the list.
        summary = (
            LLMCall.objects.values("prompt_version", "model_alias", "document__document_type__slug")
            .annotate(
                calls=Count("id"),
                failures=Count("id", filter=~Q(error_class="")),
                repaired=Count("id", filter=Q(parse_status="repaired")),
                unparsed=Count("id", filter=Q(parse_status="failed")),
                tokens=Sum("prompt_tokens") + Sum("completion_tokens"),
                cost=Sum("cost_usd"),
                documents=Count("document", distinct=True),
            )
            .order_by("document__document_type__slug", "prompt_version", "model_alias")
        )
        summary = [
            {
                **row,
                "tokens_per_doc": (row["tokens"] or 0) / max(1, row["documents"]),
                "cost_per_doc": (row["cost"] or 0) / max(1, row["documents"]),
            }
            for row in summary
        ]
        extra_context = {
            **(extra_context or {}),
            "summary": summary,
            "breakers": [b.to_dict() for b in llm.breaker().states()],
        }
        return super().changelist_view(request, extra_context)


@admin.register(FieldValue)
class FieldValueAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "document",
        "field_spec",
        "value",
        "confidence",
        "status",
        "final_value",
        "reviewer",
        "gold_excluded",
    ]
    list_filter = ["status", "field_spec__document_type", "audit_sample", "gold_excluded"]
    raw_id_fields = ["run", "document", "reviewer", "claimed_by"]


@admin.register(ReviewDecision)
class ReviewDecisionAdmin(admin.ModelAdmin):
    list_display = ["created_at", "reviewer", "action", "field_value", "before_value", "after_value"]
    list_filter = ["action"]
    raw_id_fields = ["field_value", "document"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # append-only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ["id", "document_type", "prompt_version", "model_alias", "status", "created_at"]
