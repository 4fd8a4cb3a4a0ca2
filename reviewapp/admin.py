"""Django admin: where admins manage document types, fields, thresholds and prompt versions, and read traces."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet, Sum
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from . import evaluation as ev
from . import llm
from .errors import ReviewAppError
from .models import (
    Document,
    DocumentType,
    Evaluation,
    ExtractionRun,
    FieldSpec,
    FieldValue,
    LLMCall,
    Membership,
    PromotionEvent,
    PromptVersion,
    ReviewDecision,
    ThresholdChange,
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


def _parse_float(raw: str | None, default: float | None, *, scale: float = 1.0) -> float | None:
    # Admin forms post percentages ("1" = 1 %); an empty or bad value falls back to the default.
    try:
        return float(raw) / scale if raw not in (None, "") else default
    except ValueError:
        return default


@admin.register(DocumentType)
class DocumentTypeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "active_prompt",
        "candidate_prompt",
        "candidate_share",
        "verify_threshold",
        "max_attempts",
    ]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [FieldSpecInline]
    # The active version changes only through the promotion gate (prompt version page) or a rollback.
    readonly_fields = ["active_prompt"]
    change_form_template = "admin/reviewapp/documenttype/change_form.html"

    def get_urls(self) -> list[Any]:
        def view(fn: Any, name: str, route: str) -> Any:
            return path(route, self.admin_site.admin_view(fn), name=f"reviewapp_documenttype_{name}")

        return [
            view(self.gold_view, "gold", "<int:object_id>/gold.<str:fmt>"),
            view(self.threshold_apply_view, "threshold_apply", "<int:object_id>/thresholds/apply/"),
            view(self.rollback_view, "rollback", "<int:object_id>/rollback/"),
            view(self.ab_view, "ab", "<int:object_id>/ab/"),
            view(self.drift_view, "drift", "<int:object_id>/drift/"),
            *super().get_urls(),
        ]

    def _get(self, request: HttpRequest, object_id: int, *, change: bool = False) -> DocumentType:
        obj = get_object_or_404(DocumentType, pk=object_id)
        allowed = (
            self.has_change_permission(request, obj) if change else self.has_view_permission(request, obj)
        )
        if not allowed:
            raise Http404("No such document type.")
        return obj

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
        obj = kwargs.get("obj")
        if obj is not None:
            context.update(self._evaluation_context(request, obj))
        return super().render_change_form(request, context, *args, **kwargs)

    def _evaluation_context(self, request: HttpRequest, obj: DocumentType) -> dict[str, Any]:
        target = _parse_float(request.GET.get("target"), None, scale=100)
        if target is not None and not 0 < target < 1:
            self.message_user(request, "The target error rate must be between 0 and 100 %.", messages.ERROR)
            target = None
        level = _parse_float(request.GET.get("level"), 0.95, scale=100) or 0.95
        level = level if 0 < level < 1 else 0.95
        min_items = int(_parse_float(request.GET.get("min"), 30) or 30)
        thresholds = ev.threshold_overview(
            obj, target_error=target, confidence_level=level, min_items=min_items
        )
        return {
            "gold_count": sum(row["n_gold"] for row in thresholds),
            "thresholds": thresholds,
            "target_pct": None if target is None else round(target * 100, 4),
            "level_pct": round(level * 100, 4),
            "min_items": min_items,
            "drift_alerts": ev.drift_alerts(obj),
            "evaluations": obj.evaluations.select_related("prompt_version")[:10],
            "promotions": obj.promotions.select_related("prompt_version", "previous", "actor")[:10],
            "prompt_versions": obj.prompt_versions.all(),
        }

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        # Thresholds typed in the inline are audited like applied recommendations (without evidence).
        edits = []
        if formset.model is FieldSpec:
            for f in formset.forms:
                if f.instance.pk and "threshold" in f.changed_data and not f.cleaned_data.get("DELETE"):
                    edits.append((f.instance.pk, f.initial.get("threshold"), f.cleaned_data["threshold"]))
        super().save_formset(request, form, formset, change)
        for pk, before, after in edits:
            ev.threshold_record_manual(field_spec_id=pk, from_value=before, to_value=after, user=request.user)

    def gold_view(self, request: HttpRequest, object_id: int, fmt: str) -> HttpResponse:
        obj = self._get(request, object_id)
        if fmt not in ("csv", "jsonl"):
            raise Http404("Export as gold.csv or gold.jsonl.")
        content_type = "text/csv" if fmt == "csv" else "application/jsonl"
        response = HttpResponse(ev.gold_export(ev.gold_set(obj), fmt=fmt), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="{obj.slug}-gold.{fmt}"'
        return response

    @method_decorator(require_POST)
    def threshold_apply_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        obj = self._get(request, object_id, change=True)
        spec = get_object_or_404(FieldSpec, pk=request.POST.get("field_spec"), document_type=obj)
        target = _parse_float(request.POST.get("target"), None, scale=100)
        level = _parse_float(request.POST.get("level"), 0.95, scale=100) or 0.95
        min_items = int(_parse_float(request.POST.get("min"), 30) or 30)
        url = reverse("admin:reviewapp_documenttype_change", args=[obj.pk])
        if target is None or not 0 < target < 1 or not 0 < level < 1:
            self.message_user(request, "Enter a target error rate between 0 and 100 %.", messages.ERROR)
            return HttpResponseRedirect(url)
        try:
            change = ev.threshold_apply(
                field_spec=spec,
                user=request.user,
                target_error=target,
                confidence_level=level,
                min_items=min_items,
            )
        except ev.ThresholdNotApplied as exc:
            self.message_user(request, f"{spec.name}: not changed: {exc.message}", messages.WARNING)
        else:
            self.message_user(request, f"{spec.name}: threshold {change.from_value:g} → {change.to_value:g}.")
        return HttpResponseRedirect(f"{url}?target={target * 100:g}&level={level * 100:g}&min={min_items}")

    @method_decorator(require_POST)
    def rollback_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        obj = self._get(request, object_id, change=True)
        try:
            event = ev.prompt_rollback(
                document_type=obj, user=request.user, reason=request.POST.get("reason", "")
            )
        except ReviewAppError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        else:
            self.message_user(request, f"Rolled back: {event.prompt_version.label} is active again.")
        return HttpResponseRedirect(reverse("admin:reviewapp_documenttype_change", args=[obj.pk]))

    def ab_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        obj = self._get(request, object_id)
        days = int(_parse_float(request.GET.get("days"), 0) or 0)
        since = timezone.now() - timedelta(days=days) if days > 0 else None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": obj,
            "title": f"A/B arms of {obj.name}",
            "arms": ev.ab_comparison(obj, since=since),
            "days": days,
        }
        return TemplateResponse(request, "admin/reviewapp/documenttype/ab.html", context)

    def drift_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        obj = self._get(request, object_id)
        period = "week" if request.GET.get("period") == "week" else "day"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": obj,
            "title": f"Drift of {obj.name} per {period}",
            "period": period,
            "series": ev.drift_series(obj, period=period, periods=12 if period == "week" else 28),
            "drift_alerts": ev.drift_alerts(obj, period=period),
        }
        return TemplateResponse(request, "admin/reviewapp/documenttype/drift.html", context)


def _floating() -> list[Any]:
    from extraction.config import floating_models

    return floating_models(llm.llm_config())


@admin.register(PromptVersion)
class PromptVersionAdmin(admin.ModelAdmin):
    list_display = [
        "label",
        "document_type",
        "model_alias",
        "locked",
        "is_active",
        "created_at",
        "calls",
        "failed_parses",
        "promote_link",
    ]
    list_filter = ["document_type", "locked"]

    def get_readonly_fields(self, request: HttpRequest, obj: PromptVersion | None = None) -> list[str]:
        # A version that produced data is evidence: changing it would falsify every run that cites it.
        locked = ["document_type", "version", "instructions", "model_alias", "few_shot_count"]
        return [*locked, "examples"] if obj and obj.locked else ["examples"]

    def save_model(self, request: HttpRequest, obj: PromptVersion, form: Any, change: bool) -> None:
        if not change and obj.few_shot_count:
            from . import services

            obj.examples = services.prompt_examples_choose(
                document_type=obj.document_type, count=obj.few_shot_count
            )
        super().save_model(request, obj, form, change)

    def get_queryset(self, request: HttpRequest) -> QuerySet[PromptVersion]:
        return super().get_queryset(request).select_related("document_type")

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:object_id>/promote/",
                self.admin_site.admin_view(self.promote_view),
                name="reviewapp_promptversion_promote",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="calls")
    def calls(self, obj: PromptVersion) -> int:
        return LLMCall.objects.filter(prompt_version=obj.label).count()

    @admin.display(description="parse failures / repairs")
    def failed_parses(self, obj: PromptVersion) -> str:
        qs = LLMCall.objects.filter(prompt_version=obj.label)
        return f"{qs.filter(parse_status='failed').count()} / {qs.filter(parse_status='repaired').count()}"

    @admin.display(description="active", boolean=True)
    def is_active(self, obj: PromptVersion) -> bool:
        return obj.document_type.active_prompt_id == obj.pk

    @admin.display(description="promotion")
    def promote_link(self, obj: PromptVersion) -> str:
        if obj.document_type.active_prompt_id == obj.pk:
            return "—"
        url = reverse("admin:reviewapp_promptversion_promote", args=[obj.pk])
        return format_html('<a href="{}">make active…</a>', url)

    def promote_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Show the gate's comparison; POST promotes (an override needs a written reason)."""
        prompt = get_object_or_404(PromptVersion.objects.select_related("document_type"), pk=object_id)
        doc_type = prompt.document_type
        if not self.has_change_permission(request, prompt):
            raise Http404("No such prompt version.")
        if request.method == "POST":
            try:
                event = ev.prompt_promote(
                    document_type=doc_type,
                    prompt_version=prompt,
                    user=request.user,
                    override_reason=request.POST.get("reason", "") if "override" in request.POST else "",
                )
            except ReviewAppError as exc:
                self.message_user(request, f"Not promoted: {exc.message}", messages.ERROR)
            else:
                how = " (gate overridden)" if event.overridden else ""
                self.message_user(request, f"{prompt.label} is now active for {doc_type.name}{how}.")
                return HttpResponseRedirect(
                    reverse("admin:reviewapp_documenttype_change", args=[doc_type.pk])
                )
        gate = ev.promotion_gate(document_type=doc_type, prompt_version=prompt)
        table = (
            ev.comparison_table(gate.baseline, gate.evaluation) if gate.baseline and gate.evaluation else None
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": prompt,
            "title": f"Make {prompt.label} active",
            "prompt": prompt,
            "document_type": doc_type,
            "gate": gate,
            "table": table,
        }
        return TemplateResponse(request, "admin/reviewapp/promptversion/promote.html", context)


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
        "reviewed_at",
        "audit_sample",
        "gold_excluded",
    ]
    list_filter = ["status", "field_spec__document_type", "audit_sample", "gold_excluded"]
    raw_id_fields = ["run", "document", "reviewer", "claimed_by"]
    list_select_related = ["document", "field_spec", "reviewer"]
    actions = ["exclude_from_gold", "include_in_gold"]

    @admin.action(description="Exclude the selected fields from gold")
    def exclude_from_gold(self, request: HttpRequest, queryset: QuerySet[FieldValue]) -> None:
        changed = ev.gold_exclude(field_values=queryset, excluded=True)
        self.message_user(request, f"{changed} field(s) excluded from gold.")

    @admin.action(description="Put the selected fields back into gold")
    def include_in_gold(self, request: HttpRequest, queryset: QuerySet[FieldValue]) -> None:
        changed = ev.gold_exclude(field_values=queryset, excluded=False)
        self.message_user(request, f"{changed} field(s) put back into gold.")


@admin.register(ReviewDecision)
class ReviewDecisionAdmin(admin.ModelAdmin):
    list_display = ["created_at", "reviewer", "action", "field_value", "before_value", "after_value"]
    list_filter = ["action"]
    raw_id_fields = ["field_value", "document"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # append-only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EvaluationForm(forms.ModelForm):
    class Meta:
        model = Evaluation
        fields = ["document_type", "prompt_version", "model_alias", "limit"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        doc_type, prompt = data.get("document_type"), data.get("prompt_version")
        if doc_type and prompt and prompt.document_type_id != doc_type.pk:
            self.add_error("prompt_version", f"{prompt.label} is not a prompt version of {doc_type.name}.")
        return data


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    """Evaluations are created here (queued as a background job) and then only read and compared."""

    list_display = [
        "id",
        "document_type",
        "prompt_version",
        "model_alias",
        "limit",
        "status",
        "attempts",
        "accuracy",
        "created_by",
        "created_at",
    ]
    list_filter = ["document_type", "status", "prompt_version"]
    form = EvaluationForm
    change_form_template = "admin/reviewapp/evaluation/change_form.html"
    actions = ["compare_selected"]

    # What happened to the job: why it failed (the watchdog writes its reason here too), how many
    # deliveries claimed it, when it last made progress.
    RUN_FIELDS = [
        "status",
        "error_message",
        "attempts",
        "documents_done",
        "created_by",
        "created_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Evaluation | None = None) -> list[str]:
        return ["document_type", "prompt_version", "model_alias", "limit", *self.RUN_FIELDS] if obj else []

    def get_fields(self, request: HttpRequest, obj: Evaluation | None = None) -> list[str]:
        fields = ["document_type", "prompt_version", "model_alias", "limit"]
        return [*fields, *self.RUN_FIELDS] if obj else fields

    @admin.display(description="gold documents done")
    def documents_done(self, obj: Evaluation) -> str:
        progress = ev.evaluation_progress(obj)
        return "—" if progress is None else f"{progress['done']} of {progress['documents']}"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Evaluation]:
        return super().get_queryset(request).select_related("document_type", "prompt_version", "created_by")

    def save_model(self, request: HttpRequest, obj: Evaluation, form: Any, change: bool) -> None:
        if change:
            return  # an evaluation is a record: nothing to edit once created
        obj.created_by = request.user
        obj.status = Evaluation.Status.QUEUED
        super().save_model(request, obj, form, change)
        ev.evaluation_enqueue(obj)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "compare/",
                self.admin_site.admin_view(self.compare_view),
                name="reviewapp_evaluation_compare",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="accuracy")
    def accuracy(self, obj: Evaluation) -> str:
        acc = (obj.report or {}).get("overall", {}).get("accuracy")
        return "—" if acc is None else f"{acc:.1%}"

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        obj = kwargs.get("obj")
        if obj is not None and obj.report:
            context["report_rows"] = ev.report_table(obj.report)
            context["report_documents"] = obj.report.get("documents")
            context["report_items"] = obj.report.get("items", [])
        return super().render_change_form(request, context, *args, **kwargs)

    @admin.action(description="Compare the two selected evaluations (older = baseline)")
    def compare_selected(self, request: HttpRequest, queryset: QuerySet[Evaluation]) -> Any:
        picked = list(queryset.order_by("created_at", "id").values_list("pk", flat=True))
        if len(picked) != 2:
            self.message_user(request, "Select exactly two evaluations to compare.", messages.WARNING)
            return None
        url = reverse("admin:reviewapp_evaluation_compare")
        return HttpResponseRedirect(f"{url}?baseline={picked[0]}&candidate={picked[1]}")

    def compare_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise Http404("Not allowed.")
        qs = self.get_queryset(request)
        baseline = get_object_or_404(qs, pk=_parse_int(request.GET.get("baseline")))
        candidate = get_object_or_404(qs, pk=_parse_int(request.GET.get("candidate")))
        try:
            table = ev.comparison_table(baseline, candidate)
        except ReviewAppError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:reviewapp_evaluation_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Evaluation {baseline.pk} vs {candidate.pk}",
            "baseline": baseline,
            "candidate": candidate,
            "table": table,
        }
        return TemplateResponse(request, "admin/reviewapp/evaluation/compare.html", context)


def _parse_int(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() else 0


@admin.register(ThresholdChange)
class ThresholdChangeAdmin(admin.ModelAdmin):
    """The audit of threshold changes: read-only."""

    list_display = ["created_at", "field_spec", "from_value", "to_value", "changed_by"]
    list_filter = ["field_spec__document_type"]
    list_select_related = ["field_spec__document_type", "changed_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(PromotionEvent)
class PromotionEventAdmin(admin.ModelAdmin):
    """The audit of promotions, overrides and rollbacks: read-only."""

    list_display = [
        "created_at",
        "document_type",
        "prompt_version",
        "previous",
        "overridden",
        "is_rollback",
        "actor",
        "reason",
    ]
    list_filter = ["document_type", "overridden", "is_rollback"]
    list_select_related = [
        "document_type",
        "prompt_version__document_type",
        "previous__document_type",
        "actor",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- API keys and webhooks (issue 6) ---------------------------------------------------------------------
from django import forms  # noqa: E402

from . import webhooks  # noqa: E402
from .api import keys as api_keys  # noqa: E402
from .models import ApiKey, WebhookDelivery, WebhookSubscription  # noqa: E402


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ["workspace", "name", "scopes"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here (the key is shown once, in a message) and revoked with the action."""

    form = ApiKeyForm
    list_display = [
        "name",
        "workspace",
        "prefix",
        "scopes",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["workspace", "revoked_at"]
    list_select_related = ["workspace", "created_by"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_by", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        obj.scopes = api_keys.check_scopes(form.cleaned_data["scopes"])
        if change:
            super().save_model(request, obj, form, change)
            return
        # Review decisions made with the key are recorded as this admin's: ReviewDecision needs a person.
        obj.created_by = request.user
        raw = api_keys.assign_secret(obj)
        super().save_model(request, obj, form, change)
        self.message_user(request, f"Copy the key now, it is not shown again: {raw}", level="warning")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_keys.api_key_revoke(api_key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")


class WebhookSubscriptionForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=[(e, e) for e in webhooks.EVENTS], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = WebhookSubscription
        fields = ["workspace", "url", "events", "secret", "active"]

    def clean_url(self) -> str:
        problem = webhooks.check_url(self.cleaned_data["url"])
        if problem:
            raise forms.ValidationError(problem)
        return self.cleaned_data["url"]


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    form = WebhookSubscriptionForm
    list_display = ["url", "workspace", "events", "active", "created_at"]
    list_filter = ["workspace", "active"]
    list_select_related = ["workspace"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {**super().get_changeform_initial_data(request), "secret": webhooks.new_secret()}


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """The delivery log: every attempt's outcome; replay sends a payload again as a new delivery."""

    list_display = [
        "id",
        "event",
        "subscription",
        "status",
        "attempts",
        "last_status_code",
        "created_at",
        "delivered_at",
    ]
    list_filter = ["status", "event", "subscription__workspace"]
    list_select_related = ["subscription"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Replay selected deliveries")
    def replay(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        copies = [webhooks.delivery_replay(delivery=d) for d in queryset]
        self.message_user(request, f"Queued {len(copies)} new delivery(ies).")
