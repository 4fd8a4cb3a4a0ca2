"""The data model: workspaces, document types and their schemas, documents, runs, fields, decisions, calls."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Q
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from extraction.schemas import DocumentSchema, FieldType
from extraction.schemas import FieldSpec as FieldSpecData


def _now():
    # A seam for tests that need to move the clock.
    return timezone.now()


class Workspace(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(unique=True)
    redact_pii = models.BooleanField(
        default=False,
        help_text="Redact emails, phone, card/account numbers and national ids in stored prompts.",
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="workspaces"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        REVIEWER = "reviewer", "Reviewer"
        ADMIN = "admin", "Admin"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.REVIEWER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "workspace"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"


class DocumentType(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    active_prompt = models.ForeignKey(
        "PromptVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    verify_threshold = models.FloatField(
        default=0.7, help_text="Verifier score under which the extraction is regenerated with its feedback."
    )
    max_attempts = models.PositiveSmallIntegerField(default=3)
    audit_sample_rate = models.FloatField(
        default=0.0,
        help_text="Share of auto-accepted fields sent to review anyway, to measure their error rate.",
    )
    candidate_prompt = models.ForeignKey(
        "PromptVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="A/B: a prompt version (and its model) that gets a share of the documents.",
    )
    candidate_share = models.FloatField(
        default=0.0, help_text="Share of documents routed to the candidate (0-1)."
    )
    promotion_margin = models.FloatField(
        default=0.02, help_text="Largest accuracy drop (overall or per field) a promotion may cause."
    )
    drift_band = models.FloatField(
        default=3.0, help_text="Alert when a field's correction rate leaves mean ± k·sd."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Bumped whenever the type, one of its fields or prompt versions changes (config_changed below), so
    # that workers can cache the type per process and still see every change on their next claim.
    config_version = models.PositiveIntegerField(default=1, editable=False)

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def config_changed(type_id: int | None) -> None:
        """Bump the type's config version: call after any write that bypasses save() (a queryset update)."""
        if type_id is not None:
            DocumentType.objects.filter(pk=type_id).update(config_version=F("config_version") + 1)

    def to_schema(self) -> DocumentSchema:
        """Return the pipeline's view of this type (fields in display order)."""
        # Sorted here rather than with order_by() so that a prefetch_related("fields") is used.
        fields = sorted(self.fields.all(), key=lambda f: (f.position, f.pk))
        return DocumentSchema(
            slug=self.slug,
            name=self.name,
            description=self.description,
            fields=tuple(f.to_data() for f in fields),
        )


class FieldSpec(models.Model):
    document_type = models.ForeignKey(DocumentType, on_delete=models.CASCADE, related_name="fields")
    name = models.SlugField(max_length=64)
    type = models.CharField(max_length=16, choices=[(t.value, t.value) for t in FieldType], default="text")
    description = models.CharField(max_length=500, blank=True)
    required = models.BooleanField(default=False)
    threshold = models.FloatField(
        default=0.85, help_text="Confidence at or above which a value is auto-accepted."
    )
    choices = models.JSONField(default=list, blank=True, help_text="Allowed values for enum fields.")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["document_type", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["document_type", "name"], name="unique_field_per_type"),
            models.CheckConstraint(condition=Q(threshold__gte=0) & Q(threshold__lte=1), name="threshold_0_1"),
        ]

    def __str__(self) -> str:
        return f"{self.document_type.slug}.{self.name}"

    def to_data(self) -> FieldSpecData:
        return FieldSpecData(
            name=self.name,
            type=FieldType(self.type),
            description=self.description,
            required=self.required,
            threshold=self.threshold,
            choices=tuple(self.choices or ()),
        )


class PromptVersion(models.Model):
    """A prompt for one document type. Immutable once a run has used it: tune by adding a new version."""

    document_type = models.ForeignKey(DocumentType, on_delete=models.CASCADE, related_name="prompt_versions")
    version = models.PositiveIntegerField()
    instructions = models.TextField(blank=True, help_text="Extra guidance added to the extraction prompt.")
    model_alias = models.CharField(
        max_length=100,
        blank=True,
        help_text="Model alias from the LLM config; blank: the config's extract task.",
    )
    few_shot_count = models.PositiveSmallIntegerField(
        default=0,
        help_text="Include this many corrected examples from reviewers, chosen when the version is created.",
    )
    # Frozen at creation so the version stays immutable; evaluations leave their documents out of the gold.
    examples = models.JSONField(default=list, blank=True, editable=False)
    locked = models.BooleanField(default=False, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["document_type", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["document_type", "version"], name="unique_prompt_version")
        ]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        """Return the explicit version label also written into the system prompt, e.g. `invoice-extract v3`."""
        return f"{self.document_type.slug}-extract v{self.version}"

    @property
    def example_document_ids(self) -> set[int]:
        return {int(e["document"]) for e in self.examples or [] if e.get("document") is not None}

    def lock(self) -> None:
        if not self.locked:
            PromptVersion.objects.filter(pk=self.pk).update(locked=True)
            self.locked = True


class Document(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        EXTRACTING = "extracting", "Extracting"
        NEEDS_REVIEW = "needs_review", "Needs review"
        AUTO_ACCEPTED = "auto_accepted", "Auto-accepted"
        FAILED = "failed", "Failed"
        REVIEWED = "reviewed", "Reviewed"

    # The state machine: every change goes through transition() or a conditional update that respects it.
    TRANSITIONS: dict[str, set[str]] = {
        Status.QUEUED: {Status.EXTRACTING, Status.FAILED},
        Status.EXTRACTING: {Status.NEEDS_REVIEW, Status.AUTO_ACCEPTED, Status.FAILED, Status.QUEUED},
        Status.NEEDS_REVIEW: {Status.REVIEWED, Status.QUEUED},
        Status.AUTO_ACCEPTED: {Status.QUEUED},
        Status.FAILED: {Status.QUEUED},
        Status.REVIEWED: {Status.QUEUED},
    }
    TERMINAL = {Status.NEEDS_REVIEW, Status.AUTO_ACCEPTED, Status.FAILED, Status.REVIEWED}

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="documents")
    document_type = models.ForeignKey(DocumentType, on_delete=models.PROTECT, related_name="documents")
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=16, default="text")
    file = models.FileField(upload_to="documents/%Y/%m/", blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, db_index=True)
    text = models.TextField(blank=True)
    pages = models.JSONField(default=list, blank=True)  # [[start, end], ...] of each PDF page in text
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.TextField(blank=True)
    deliveries = models.PositiveIntegerField(default=0)
    claim_token = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=_now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["workspace", "status", "created_at"], name="doc_ws_status_created"),
            models.Index(fields=["workspace", "sha256"], name="doc_ws_sha"),
            models.Index(fields=["status", "claimed_at"], name="doc_status_claimed"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.filename}"

    @staticmethod
    def hash_bytes(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def can_transition(self, to: str) -> bool:
        return to in self.TRANSITIONS.get(self.status, set())

    def transition(self, to: str, *, reason: str = "") -> None:
        """Move to `to`, locking the row: a worker and a reviewer may both act on it.

        Raise InvalidTransition when the state machine forbids the move from the row's current state.
        """
        from .errors import InvalidTransition

        with transaction.atomic():
            current = Document.objects.select_for_update().only("status").get(pk=self.pk)
            if to not in self.TRANSITIONS.get(current.status, set()):
                raise InvalidTransition(f"document {self.pk} cannot go from {current.status} to {to}")
            Document.objects.filter(pk=self.pk).update(status=to, status_reason=reason, updated_at=_now())
        self.status, self.status_reason = to, reason

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def current_run(self) -> ExtractionRun | None:
        return self.runs.current().first()


class ExtractionRunQuerySet(models.QuerySet):
    def current(self) -> ExtractionRunQuerySet:
        """The runs a document's current run is chosen from, newest first: the document's current run is the
        first (succeeded, not an evaluation's). Also usable as a subquery (`.values("pk")[:1]`)."""
        return self.filter(status=ExtractionRun.Status.SUCCEEDED, evaluation__isnull=True).order_by("-id")


class ExtractionRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        ABANDONED = "abandoned", "Abandoned (worker lost)"

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="runs")
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="runs")
    evaluation = models.ForeignKey(
        "Evaluation", null=True, blank=True, on_delete=models.CASCADE, related_name="runs"
    )  # set for re-extractions made by an evaluation; they never change the document
    arm = models.CharField(max_length=16, default="active")
    model_requested = models.CharField(max_length=200, blank=True)
    model_answered = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    task_id = models.CharField(max_length=64, blank=True)
    started_at = models.DateTimeField(default=_now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    verify_score = models.FloatField(null=True, blank=True)
    classification = models.JSONField(default=dict, blank=True)
    chunks = models.PositiveSmallIntegerField(default=1)
    dropped_fields = models.JSONField(default=list, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)

    objects = ExtractionRunQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["document", "status"], name="run_doc_status")]

    def __str__(self) -> str:
        return f"run {self.pk} of document {self.document_id} ({self.status})"


class FieldValue(models.Model):
    class Status(models.TextChoices):
        AUTO_ACCEPTED = "auto_accepted", "Auto-accepted"
        NEEDS_REVIEW = "needs_review", "Needs review"
        ACCEPTED = "accepted", "Accepted"
        CORRECTED = "corrected", "Corrected"
        REJECTED = "rejected", "Rejected"

    DECIDED = {Status.ACCEPTED, Status.CORRECTED, Status.REJECTED}

    run = models.ForeignKey(ExtractionRun, on_delete=models.CASCADE, related_name="fields")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="fields")
    workspace = models.ForeignKey(
        Workspace, on_delete=models.CASCADE, related_name="+"
    )  # denormalised for the queue
    field_spec = models.ForeignKey(FieldSpec, on_delete=models.PROTECT, related_name="values")
    value = models.JSONField(null=True, blank=True)  # normalised model value
    raw_value = models.JSONField(null=True, blank=True)  # exactly what the model said
    confidence = models.FloatField(default=0.0)
    model_confidence = models.FloatField(
        default=0.0
    )  # the extractor's own, before combining with the verifier
    reasoning = models.TextField(blank=True)
    evidence_start = models.PositiveIntegerField(null=True, blank=True)
    evidence_end = models.PositiveIntegerField(null=True, blank=True)
    evidence_text = models.TextField(blank=True)
    evidence_chunk = models.PositiveSmallIntegerField(null=True, blank=True)
    supported = models.BooleanField(
        default=False, help_text="The evidence span was found in the document text."
    )
    problem = models.CharField(max_length=200, blank=True)  # why it went to review besides low confidence
    verdict = models.CharField(max_length=16, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    audit_sample = models.BooleanField(
        default=False
    )  # sent to review although above threshold, to measure errors
    final_value = models.JSONField(null=True, blank=True)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    version = models.PositiveIntegerField(default=1)  # optimistic concurrency for review decisions
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    gold_excluded = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=_now)

    class Meta:
        ordering = ["document_id", "field_spec__position"]
        constraints = [models.UniqueConstraint(fields=["run", "field_spec"], name="unique_field_per_run")]
        indexes = [
            # The review queue: open items per workspace, least confident first.
            models.Index(
                fields=["workspace", "confidence", "id"],
                name="fv_queue",
                condition=Q(status="needs_review"),
            ),
            models.Index(
                fields=["workspace", "created_at", "id"],
                name="fv_queue_age",
                condition=Q(status="needs_review"),
            ),  # the queue sorted oldest first
            models.Index(fields=["document", "status"], name="fv_doc_status"),
            models.Index(fields=["field_spec", "status"], name="fv_spec_status"),
        ]

    def __str__(self) -> str:
        return f"{self.field_spec.name} of document {self.document_id}"

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.NEEDS_REVIEW

    def claim_is_live(self, now=None) -> bool:
        return bool(self.claim_expires_at and self.claim_expires_at > (now or _now()))

    @staticmethod
    def lease(seconds: int = 120):
        return _now() + timedelta(seconds=seconds)


class ReviewDecision(models.Model):
    """Append-only audit trail of every human action on a field."""

    class Action(models.TextChoices):
        ACCEPT = "accept", "Accept"
        CORRECT = "correct", "Correct"
        REJECT = "reject", "Reject"

    field_value = models.ForeignKey(FieldValue, on_delete=models.CASCADE, related_name="decisions")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="decisions")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=16, choices=Action.choices)
    before_status = models.CharField(max_length=16)
    after_status = models.CharField(max_length=16)
    before_value = models.JSONField(null=True, blank=True)
    after_value = models.JSONField(null=True, blank=True)
    bulk = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=_now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.reviewer} {self.action} {self.field_value}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Append-only: an audit row is written once and never changed.
        if self.pk is not None:
            raise ValueError("ReviewDecision rows are append-only")
        super().save(*args, **kwargs)


class LLMCall(models.Model):
    """One model call, failed ones included: the trace behind every value."""

    run = models.ForeignKey(
        ExtractionRun, null=True, blank=True, on_delete=models.CASCADE, related_name="calls"
    )
    document = models.ForeignKey(
        Document, null=True, blank=True, on_delete=models.CASCADE, related_name="calls"
    )
    step = models.CharField(max_length=16)
    attempt = models.PositiveSmallIntegerField(default=1)
    chunk = models.PositiveSmallIntegerField(null=True, blank=True)
    prompt_version = models.CharField(max_length=100, blank=True)
    model_alias = models.CharField(max_length=200, blank=True)
    model_requested = models.CharField(max_length=200, blank=True)
    model_answered = models.CharField(max_length=200, blank=True)
    output_mode = models.CharField(max_length=16, blank=True)  # json_schema | json_object | prompt
    messages = models.JSONField(default=list)
    raw_response = models.TextField(blank=True)
    parse_status = models.CharField(max_length=16, blank=True)  # ok | repaired | failed
    repairs = models.JSONField(default=list, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    near_limit = models.BooleanField(default=False)
    error_class = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=_now, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["prompt_version", "parse_status"], name="call_prompt_parse")]

    def __str__(self) -> str:
        return f"{self.step} call {self.pk} ({self.model_alias})"

    @property
    def ok(self) -> bool:
        return not self.error_class


class Evaluation(models.Model):
    """A re-extraction of gold documents with a prompt version and model, compared with gold."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    document_type = models.ForeignKey(DocumentType, on_delete=models.CASCADE, related_name="evaluations")
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.CASCADE, related_name="evaluations")
    model_alias = models.CharField(max_length=200, blank=True)
    limit = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    report = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=_now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The watchdog's view (reviewapp.evaluation.runs): which delivery of the job runs it, how many have
    # claimed it, when it last showed progress, and the documents done so far (so a retry resumes).
    claim_token = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    progress = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of {self.prompt_version} / {self.model_alias or 'default'}"


class ThresholdChange(models.Model):
    """Audit of a threshold change: who, when, from/to, and the evidence shown when it was applied."""

    field_spec = models.ForeignKey(FieldSpec, on_delete=models.CASCADE, related_name="threshold_changes")
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    from_value = models.FloatField()
    to_value = models.FloatField()
    evidence = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=_now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.field_spec}: {self.from_value} -> {self.to_value}"


class PromotionEvent(models.Model):
    """Audit of a prompt version (or model) becoming active, with the gate's verdict or the override reason."""

    document_type = models.ForeignKey(DocumentType, on_delete=models.CASCADE, related_name="promotions")
    prompt_version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    previous = models.ForeignKey(
        PromptVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    evaluation = models.ForeignKey(
        Evaluation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    baseline = models.ForeignKey(
        Evaluation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    comparison = models.JSONField(default=dict, blank=True)
    overridden = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    is_rollback = models.BooleanField(default=False)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=_now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prompt_version} active for {self.document_type}"


class ApiKey(models.Model):
    """A workspace's API key. Only a hash is stored; the key is shown once, when created."""

    class Scope(models.TextChoices):
        READ = "read", "Read"
        WRITE = "write", "Write"
        REVIEW = "review", "Review"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)  # shown in lists and logs to identify the key
    hashed_key = models.CharField(max_length=128)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=_now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class IdempotencyRecord(models.Model):
    """The first response to a request with an Idempotency-Key, replayed for the same key and body."""

    scope = models.CharField(max_length=100)  # whose key: "user:<id>" or "apikey:<id>"
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=_now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="unique_idempotency_key")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}"


class WebhookSubscription(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100)
    events = models.JSONField(
        default=list,
        help_text="document.extracted, document.needs_review, document.reviewed, document.failed",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=_now)

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=50)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=_now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # When the queued task should run (now, or after a retry's back-off): a pending delivery well past it
    # lost its task (a broker outage) and the watchdog queues it again.
    next_attempt_at = models.DateTimeField(default=_now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="webhook_pending")
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.subscription} ({self.status})"


@receiver([post_save, post_delete], sender=DocumentType)
@receiver([post_save, post_delete], sender=FieldSpec)
@receiver([post_save, post_delete], sender=PromptVersion)
def _type_config_changed(sender: type[models.Model], instance: Any, signal: Any, **kwargs: Any) -> None:
    # A saved type bumps itself; a saved or deleted field or prompt bumps its type. (A queryset update sends
    # no signal: its caller calls DocumentType.config_changed.)
    if sender is not DocumentType:
        DocumentType.config_changed(instance.document_type_id)
    elif signal is post_save:
        DocumentType.config_changed(instance.pk)
