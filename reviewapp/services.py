"""Writes: document intake, the extraction run around the core pipeline, and review decisions.

Slow I/O (model calls) never runs inside a transaction: a run claims its document with a conditional
UPDATE, calls the models with no lock held, then writes all its results in one transaction, so a document
never shows half a run.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import DatabaseError, InterfaceError, transaction
from django.db.models import Q
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone
from django.utils.text import get_valid_filename

from extraction.documents import DocumentError, extract_text
from extraction.gateway import CallRecord, Trace
from extraction.normalize import InvalidValue, normalize, values_equal
from extraction.pipeline import Pipeline, PipelineError, PipelineOptions, PipelineResult
from extraction.redaction import redact
from extraction.schemas import DocumentSchema
from extraction.tracing import LangfuseSettings, export_run

from . import compiled, llm, runstore, webhooks
from .errors import (
    AlreadyDecided,
    InvalidCorrection,
    NotFound,
    ServiceUnavailable,
    StaleDecision,
    UploadRejected,
)
from .models import (
    Document,
    DocumentType,
    ExtractionRun,
    FieldValue,
    LLMCall,
    PromptVersion,
    ReviewDecision,
    Workspace,
)
from .selectors import (
    claimed_field,
    held_field,
    lease_free,
    queue_counts_decided,
    workspace_ids,
)

log = logging.getLogger(__name__)
Status = Document.Status


# --- intake --------------------------------------------------------------------------------------------
@dataclass
class Created:
    document: Document
    duplicate_of: Document | None


def check_broker(timeout: float = 2.0) -> None:
    """Raise ServiceUnavailable when the job queue cannot be reached, before anything is stored.

    An upload during a broker outage must fail loudly, not leave a document nobody will process. (If the
    broker drops between this check and the publish, the document stays `queued` and the watchdog
    re-queues it: late, but not lost.)
    """
    from .celery import app

    if app.conf.task_always_eager:
        return
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu raises the transport's own connection errors
        raise ServiceUnavailable(
            "The job queue is unavailable; nothing was saved. Try again in a minute."
        ) from exc


def enqueue_extraction(document_id: int) -> None:
    """Queue the extraction once the surrounding transaction commits (the worker must see the row).

    Inside `extraction_batch()` the document joins the batch instead, sent when the block ends.
    """
    batch = _batch.get()
    if batch is not None:
        transaction.on_commit(lambda: batch.append(document_id))
        return
    enqueue_extractions([document_id])


def enqueue_extractions(document_ids: list[int]) -> None:
    """Queue the extraction of several documents once the surrounding transaction commits: one task message
    per REVIEWAPP_EXTRACT_BATCH documents (extract_documents), a lone document as extract_document."""
    from extraction.tasks import extract_document, extract_documents

    ids = list(document_ids)
    size = settings.REVIEWAPP_EXTRACT_BATCH

    def send() -> None:
        for i in range(0, len(ids), size):
            chunk = ids[i : i + size]
            if len(chunk) == 1:
                extract_document.delay(chunk[0])
            else:
                extract_documents.delay(chunk)

    if ids:
        transaction.on_commit(send)


_batch: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("extraction_batch", default=None)


@contextlib.contextmanager
def extraction_batch() -> Iterator[list[int]]:
    """Collect the documents queued inside the block (each once its transaction commits) and send them
    together when it ends: a bulk import's documents share task messages (enqueue_extractions). A block that
    raises still sends what was committed: those documents exist and must not wait for the watchdog."""
    ids: list[int] = []
    token = _batch.set(ids)
    try:
        yield ids
    finally:
        _batch.reset(token)
        # After the commits the block's own on_commit callbacks wait for (they run in order), if any.
        transaction.on_commit(lambda: enqueue_extractions(ids))


def document_create(
    *,
    workspace: Workspace,
    document_type: DocumentType,
    user: Any,
    data: bytes,
    filename: str,
    content_type: str | None = None,
) -> Created:
    """Validate an upload, store it and queue its extraction. A rejected upload leaves nothing behind."""
    filename = get_valid_filename(filename or "document.txt")[:200] or "document.txt"
    try:
        extracted = extract_text(data, filename, content_type, max_bytes=settings.REVIEWAPP_MAX_UPLOAD_BYTES)
    except DocumentError as exc:
        raise UploadRejected(str(exc), code=exc.code) from exc
    check_broker()
    sha = Document.hash_bytes(data)
    duplicate = Document.objects.filter(workspace=workspace, sha256=sha).order_by("id").first()
    with transaction.atomic():
        doc = Document(
            workspace=workspace,
            document_type=document_type,
            filename=filename,
            content_type=content_type or "",
            kind=extracted.kind,
            size_bytes=len(data),
            sha256=sha,
            text=extracted.text,
            pages=[list(p) for p in extracted.pages],
            status=Status.QUEUED,
            status_reason="; ".join(extracted.warnings),
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        doc.file.save(filename, ContentFile(data), save=False)
        doc.save()
        enqueue_extraction(doc.pk)
    return Created(doc, duplicate)


@dataclass(frozen=True)
class Refused:
    index: int  # its position among the files given
    filename: str
    error: UploadRejected


def documents_create(
    *,
    workspace: Workspace,
    document_type: DocumentType,
    user: Any,
    files: Iterable[tuple[bytes, str, str | None]],
) -> tuple[list[Created], list[Refused]]:
    """Create several documents of one type from (data, filename, content type), each checked on its own: a
    refused one is reported and the others go on. The created ones are queued together (several to a task
    message, extraction_batch). `files` is read one at a time: a generator keeps one file in memory."""
    created, refused = [], []
    with extraction_batch():
        for index, (data, filename, content_type) in enumerate(files):
            try:
                created.append(
                    document_create(
                        workspace=workspace,
                        document_type=document_type,
                        user=user,
                        data=data,
                        filename=filename,
                        content_type=content_type,
                    )
                )
            except UploadRejected as exc:
                refused.append(Refused(index, filename, exc))
    return created, refused


def document_retry(*, document: Document) -> Document:
    """Send a document through extraction again (from failed, or to re-extract a finished one)."""
    with transaction.atomic():
        locked = Document.objects.select_for_update().get(pk=document.pk)
        if locked.status in (Status.QUEUED, Status.EXTRACTING):
            return locked  # already on its way: retrying twice must not queue twice
        locked.transition(Status.QUEUED, reason="retry requested")
        Document.objects.filter(pk=locked.pk).update(deliveries=0, claim_token="", claimed_at=None)
        enqueue_extraction(locked.pk)
    locked.refresh_from_db()
    return locked


# --- the run ---------------------------------------------------------------------------------------------
def _claim(document_id: int, token: str) -> Document | None:
    """Claim the document for this delivery of the task; None when another delivery owns it or it's done.

    The conditional UPDATE is the lock: of two workers racing for a queued document only one changes the
    row. A redelivery of the same task (same id, after a worker died) may take its own claim back, and a
    claim older than the stuck timeout is up for grabs. The document comes back with everything the run
    reads (type, fields, active prompt, workspace), so the run itself makes no further reads.
    """
    # Claims arriving together in this process (a batch of results wakes its tasks at once, and the slots
    # they free take new ones) share one statement: runstore.claims.
    return runstore.claims.submit((document_id, token), window=settings.REVIEWAPP_CLAIM_BATCH_MS / 1000)


def _call_row(run: ExtractionRun, pii: bool, record: CallRecord) -> tuple[Any, ...]:
    """The LLMCall row of `record`, in runstore.CALL_FIELDS order."""
    messages = record.messages
    if pii:
        messages = [{**m, "content": redact(str(m.get("content", "")))} for m in messages]
    return (
        run.pk, run.document_id, record.step, record.attempt, record.chunk, record.prompt_version,
        record.model_alias, record.model_requested, record.model_answered, record.output_mode, messages,
        redact(record.raw_response) if pii else record.raw_response, record.parse_status, record.repairs,
        record.prompt_tokens, record.completion_tokens, record.cached_tokens,
        Decimal(str(round(record.cost_usd, 6))), record.latency_ms, record.ttft_ms, record.near_limit,
        record.error_class, record.error_message, timezone.now(),
    )  # fmt: skip


class CallLog:
    """Writes a run's LLMCall rows: at once, or (`batch=True`) with the run's results when it ends.

    Batching saves an INSERT per call on the hot path. A failed call is written at once all the same, with
    any held before it: when a run dies, its failures are the trace someone will look for. The caller
    must flush() when the run ends whatever happened (extraction_execute does, in a finally).
    """

    def __init__(self, run: ExtractionRun, *, redact_pii: bool, batch: bool = False) -> None:
        self.run = run
        self.redact_pii = redact_pii
        self.batch = batch
        self.pending: list[tuple[Any, ...]] = []

    def add(self, record: CallRecord) -> None:
        self.pending.append(_call_row(self.run, self.redact_pii, record))
        if not self.batch or record.error_class:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            runstore.ensure_run(self.run)  # a run is stored with its results, unless its calls come first
            rows, self.pending = self.pending, []
            runstore.insert_calls([(self.run.pk, *row[1:]) for row in rows])


def active_prompt(document_type: DocumentType) -> PromptVersion:
    prompt = document_type.active_prompt or document_type.prompt_versions.order_by("-version").first()
    if prompt is None:
        prompt = PromptVersion.objects.create(document_type=document_type, version=1)
    return _with_type(prompt, document_type)


def _with_type(prompt: PromptVersion, document_type: DocumentType) -> PromptVersion:
    # The prompt's label names its type: hand it the one already loaded instead of a query per run.
    if prompt.document_type_id == document_type.pk:
        prompt.document_type = document_type
    return prompt


def prompt_examples_choose(*, document_type: DocumentType, count: int) -> list[dict[str, Any]]:
    """Return up to `count` instructive corrections for a new prompt version's few-shot block.

    Instructive means confidently wrong: corrected fields with the highest model confidence, at most one
    per document, spread over the fields in turn.
    """
    if count <= 0:
        return []
    corrected = (
        FieldValue.objects.filter(
            field_spec__document_type=document_type, status=FieldValue.Status.CORRECTED, gold_excluded=False,
            run__evaluation__isnull=True,
        )
        .select_related("field_spec", "document")
        .order_by("-model_confidence", "-id")[: count * 20]
    )  # fmt: skip
    per_field: dict[str, list[FieldValue]] = {}
    for fv in corrected:
        per_field.setdefault(fv.field_spec.name, []).append(fv)
    chosen: list[dict[str, Any]] = []
    used_docs: set[int] = set()
    while len(chosen) < count and any(per_field.values()):
        for name in list(per_field):
            queue = per_field[name]
            while queue and queue[0].document_id in used_docs:
                queue.pop(0)
            if not queue or len(chosen) >= count:
                continue
            fv = queue.pop(0)
            used_docs.add(fv.document_id)
            lo = max(0, (fv.evidence_start or 0) - 150)
            excerpt = (
                fv.document.text[lo : (fv.evidence_end or lo) + 150]
                if fv.evidence_start is not None
                else fv.document.text[:300]
            )
            chosen.append({"field": name, "text": excerpt, "wrong": fv.value, "right": fv.final_value,
                           "document": fv.document_id, "field_value": fv.pk})  # fmt: skip
    return chosen


def route_prompt(document_type: DocumentType, *, draw: float | None = None) -> tuple[PromptVersion, str]:
    """Return the prompt version for a new run and its A/B arm ("active" or "candidate")."""
    share = document_type.candidate_share
    if document_type.candidate_prompt_id is not None and share > 0:
        draw = random.random() if draw is None else draw  # a traffic split, not a secret
        if draw < share:
            return _with_type(document_type.candidate_prompt, document_type), "candidate"
    return active_prompt(document_type), "active"


_CANDIDATES_TTL_SECONDS = 5.0
_candidates: tuple[float, list[DocumentSchema]] = (0.0, [])


def classify_candidates(declared: DocumentSchema) -> list[DocumentSchema]:
    """Return the document types the classifier chooses from: names and descriptions, no fields.

    They change rarely and are read for every document, so each process keeps them a few seconds (and
    forgets them when it saves a type itself); a declared type missing from the list refreshes it at once.
    """
    global _candidates
    expires, cached = _candidates
    if expires > time.monotonic() and any(c.slug == declared.slug for c in cached):
        return cached
    cached = [
        DocumentSchema(slug=t.slug, name=t.name, description=t.description, fields=())
        for t in DocumentType.objects.only("slug", "name", "description").order_by("slug")
    ]
    _candidates = (time.monotonic() + _CANDIDATES_TTL_SECONDS, cached)
    return cached


@receiver([post_save, post_delete], sender=DocumentType)
def _forget_candidates(**kwargs: Any) -> None:
    global _candidates
    _candidates = (0.0, [])


def extraction_fail(
    *, document_id: int, token: str, code: str, message: str, run: ExtractionRun | None = None
) -> bool:
    """Fail this delivery's document and its running run, and emit document.failed.

    For every way a run ends badly: a step failed (`run` given), the task crashed or timed out, or the
    document was redelivered too often. Return False when the document is not ours any more.
    """
    now = timezone.now()
    runs = ExtractionRun.objects.filter(
        document_id=document_id, task_id=token, status=ExtractionRun.Status.RUNNING
    )
    closed: dict[str, Any] = {"finished_at": now}
    if run is not None:
        runs = runs.filter(pk=run.pk)
        closed["duration_ms"] = int((now - run.started_at).total_seconds() * 1000)
    with transaction.atomic():
        failed = Document.objects.filter(pk=document_id, status=Status.EXTRACTING, claim_token=token).update(
            status=Status.FAILED, status_reason=f"{code}: {message}"[:4000], updated_at=now
        )
        runs.update(
            status=ExtractionRun.Status.FAILED, error_code=code, error_message=message[:4000], **closed
        )
        if failed:
            webhooks.emit(document_id, "document.failed")
    return bool(failed)


def extraction_execute(*, document_id: int, token: str) -> str:
    """Run the pipeline for one document and store its outcome. Return what happened, for logs and tests.

    Idempotent: a second delivery for a document that another delivery owns, or that is already
    terminal, does nothing ("skipped").
    """
    document = _claim(document_id, token)
    if document is None:
        return "skipped"
    if document.deliveries > settings.REVIEWAPP_MAX_DELIVERIES:
        extraction_fail(
            document_id=document_id,
            token=token,
            code="gave_up",
            message=f"extraction was started {document.deliveries - 1} times without finishing",
        )
        return "failed"
    if document.deliveries > 1:
        # A run left 'running' by a worker that died belongs to an earlier delivery: close it. (A first
        # delivery has none: runs that crash or time out are closed by the task's handlers.)
        document.runs.filter(status=ExtractionRun.Status.RUNNING, evaluation__isnull=True).update(
            status=ExtractionRun.Status.ABANDONED, finished_at=timezone.now(), error_code="worker_lost"
        )
    prompt, arm = route_prompt(document.document_type)
    run = runstore.new_run(
        document=document,
        prompt=prompt,
        token=token,
        arm=arm,
        model_requested=prompt.model_alias or llm.gateway().pinned_model("extract"),
        now=timezone.now(),
    )
    started = time.perf_counter()
    calls = CallLog(run, redact_pii=document.workspace.redact_pii, batch=True)
    try:
        outcome, trace = run_pipeline(document=document, run=run, calls=calls)
        if isinstance(outcome, PipelineError):
            calls.flush()
            runstore.ensure_run(run)
            message = f"{outcome.step} step: {outcome}"
            extraction_fail(document_id=document_id, token=token, code=outcome.code, message=message, run=run)
            _export_trace(document, run, trace, "failed", f"{outcome.code}: {outcome}")
            return "failed"
        status = _store_result(document, run, outcome, trace, started, calls)
    except BaseException:
        _keep_trace(run, calls)
        raise
    _export_trace(document, run, trace, status)
    return status


def _keep_trace(run: ExtractionRun, calls: CallLog) -> None:
    """A run that crashed (or whose results could not be stored) keeps its row, left 'running' for the
    task's failure handler to close, and its calls: they are the trace someone will look for. Unless the
    database is what failed: then the task retries and the next delivery starts a new run."""
    try:
        calls.flush()
        runstore.ensure_run(run)
    except (DatabaseError, InterfaceError):
        log.warning("run of document %s: could not store its trace", run.document_id, exc_info=True)


def _export_trace(
    document: Document, run: ExtractionRun, trace: Trace, status: str, error: str | None = None
) -> None:
    """Send the run to Langfuse when it is configured (after the commit, never failing the run)."""
    keys = LangfuseSettings(
        settings.LANGFUSE_PUBLIC_KEY, settings.LANGFUSE_SECRET_KEY, settings.LANGFUSE_HOST
    )
    if not keys.enabled:
        return
    export_run(
        keys,
        run_id=run.pk,
        document_id=document.pk,
        workspace=document.workspace.slug,
        document_type=document.document_type.slug,
        prompt_version=run.prompt_version.label,
        status=status,
        calls=trace.calls,
        started_at=run.started_at.timestamp(),
        finished_at=time.time(),
        error=error,
        redact_pii=document.workspace.redact_pii,
    )


def run_pipeline(
    *,
    document: Document,
    run: ExtractionRun,
    model_alias: str | None = None,
    calls: CallLog | None = None,
) -> tuple[PipelineResult | PipelineError, Trace]:
    """Run the chain for `document` with the run's prompt version; every call is stored on `run`.

    Return the result or the PipelineError that stopped the chain. Nothing about the document changes
    here: extraction_execute stores results, an evaluation compares them with gold. Calls are written as
    they happen unless the caller passes its own (batching) CallLog.
    """
    prompt = run.prompt_version
    prompt.lock()
    doc_type = document.document_type
    alias = model_alias or prompt.model_alias
    calls = calls or CallLog(run, redact_pii=document.workspace.redact_pii)
    trace = Trace(on_call=calls.add)
    options = PipelineOptions(
        prompt_label=prompt.label,
        instructions=prompt.instructions,
        verify_threshold=doc_type.verify_threshold,
        max_attempts=doc_type.max_attempts,
        extract_aliases=[alias] if alias else None,
        examples=[e for e in prompt.examples if e.get("document") != document.pk],
    )
    # A type from the worker's cache (runstore) carries its schema, built once per config version.
    schema = getattr(doc_type, "run_schema", None) or doc_type.to_schema()
    try:
        result = Pipeline(llm.gateway()).run(
            text=document.text,
            schema=schema,
            candidates=classify_candidates(schema),
            options=options,
            trace=trace,
        )
    except PipelineError as exc:
        return exc, trace
    return result, trace


def _store_result(
    document: Document, run: ExtractionRun, result: Any, trace: Trace, started: float, calls: CallLog
) -> str:
    """Store a succeeded run's fields, calls and outcome (with other runs finishing now: runstore)."""
    specs = {f.name: f.pk for f in document.document_type.fields.all()}  # loaded with the type
    rate = document.document_type.audit_sample_rate or settings.REVIEWAPP_AUDIT_SAMPLE_RATE
    now = timezone.now()
    rows = []
    needs_review = False
    for g in result.fields:
        status = g.status
        audit = status == FieldValue.Status.AUTO_ACCEPTED and rate > 0 and random.random() < rate
        accepted = status == FieldValue.Status.AUTO_ACCEPTED and not audit
        needs_review = needs_review or not accepted
        ev = g.evidence
        rows.append((
            run.pk, document.pk, document.workspace_id, specs[g.name], g.value, g.raw_value, g.confidence,
            g.model_confidence, g.reasoning[:2000], ev.start if ev else None, ev.end if ev else None,
            ev.text[:2000] if ev else "", ev.chunk if ev else None, g.supported, g.problem[:200], g.verdict,
            FieldValue.Status.NEEDS_REVIEW if audit else status, audit, g.value if accepted else None,
            1, False, now,
        ))  # fmt: skip
    item = runstore.Finished(
        document=document,
        run=run,
        document_status=Status.NEEDS_REVIEW if needs_review else Status.AUTO_ACCEPTED,
        status_reason="; ".join(result.warnings)[:4000],
        run_values={
            "status": ExtractionRun.Status.SUCCEEDED,
            "model_answered": result.model_answered,
            "finished_at": now,
            "duration_ms": int((time.perf_counter() - started) * 1000),
            "attempts": result.attempts,
            "prompt_tokens": trace.prompt_tokens,
            "completion_tokens": trace.completion_tokens,
            "cached_tokens": trace.cached_tokens,
            "cost_usd": Decimal(str(round(trace.cost_usd, 6))),
            "verify_score": result.verify_score,
            "classification": result.classification.model_dump() if result.classification else {},
            "chunks": result.chunks,
            "dropped_fields": result.dropped_fields,
        },
        fields=rows,
        calls=calls,
        events=("document.extracted", "document.needs_review") if needs_review else ("document.extracted",),
    )
    window = settings.REVIEWAPP_RESULT_BATCH_MS / 1000
    return runstore.results.submit(item, window=window)


def requeue_stuck(*, older_than: timedelta) -> dict[str, int]:
    """Find documents stuck in `extracting` (or `queued` with no worker) and re-queue or fail them."""
    now = timezone.now()
    stuck = Document.objects.filter(
        Q(status=Status.EXTRACTING, claimed_at__lt=now - older_than)
        | Q(status=Status.QUEUED, updated_at__lt=now - older_than)
    ).values_list("pk", "deliveries", "status")
    requeued = failed = 0
    with extraction_batch():  # the re-queued documents share task messages
        for pk, deliveries, status in stuck:
            if deliveries >= settings.REVIEWAPP_MAX_DELIVERIES:
                if Document.objects.filter(pk=pk, status=status).update(
                    status=Status.FAILED,
                    status_reason=f"stuck: gave up after {deliveries} deliveries",
                    updated_at=now,
                ):
                    failed += 1
                    webhooks.emit(pk, "document.failed")
                continue
            with transaction.atomic():
                if Document.objects.filter(pk=pk, status=status).update(
                    status=Status.QUEUED,
                    claim_token="",
                    claimed_at=None,
                    updated_at=now,
                    status_reason=f"re-queued by the watchdog after {older_than}",
                ):
                    enqueue_extraction(pk)
                    requeued += 1
    return {"requeued": requeued, "failed": failed}


def llm_calls_purge(*, older_than: timedelta, batch: int = 5000) -> int:
    """Delete old successful LLM calls of finished documents (their prompts and answers); return how many.

    The stored calls are most of the database's growth (about 30 KB a document). Kept whatever their age:
    failed and repaired calls (the raw failures are what prompt tuning needs), calls of evaluation runs,
    and calls of documents still waiting for review. A run keeps its totals (tokens, cost, duration).
    """
    cutoff = timezone.now() - older_than
    old = LLMCall.objects.filter(
        created_at__lt=cutoff,
        error_class="",
        parse_status="ok",
        run__evaluation__isnull=True,
        document__status__in=[Status.REVIEWED, Status.AUTO_ACCEPTED],
    ).order_by()
    deleted = 0
    while ids := list(old.values_list("pk", flat=True)[:batch]):
        deleted += LLMCall.objects.filter(pk__in=ids).delete()[0]
    return deleted


# --- review ----------------------------------------------------------------------------------------------
Action = ReviewDecision.Action


def _open_of_run(run_id: Any) -> Any:
    return FieldValue.objects.filter(run_id=run_id, status=FieldValue.Status.NEEDS_REVIEW).values_list("pk")[
        :1
    ]


def _close_document_if_done(document_id: int, run_id: int) -> None:
    if compiled.rows(_open_of_run, run_id):  # any field of the run left to review? (compiled once)
        return
    if Document.objects.filter(pk=document_id, status=Status.NEEDS_REVIEW).update(
        status=Status.REVIEWED, updated_at=timezone.now()
    ):
        webhooks.emit(document_id, "document.reviewed")


@functools.cache
def _current_run_id() -> Any:
    """The id of the field's document's current run (Document.current_run) as a subquery: the decision reads
    it with the locked row instead of in a query of its own. Built once per process: a query resolves (and so
    copies) an expression it is given, never changes it."""
    from django.db.models import OuterRef, Subquery

    return Subquery(
        ExtractionRun.objects.filter(document_id=OuterRef("document_id")).current().values("pk")[:1]
    )


def _locked_field(si: Any, n_ids: int) -> Any:
    """The decision's read: the field, if in one of the user's workspaces, locked (not its spec), with its spec
    and its document's current run id. Compiled once per number of workspaces (compiled.instances)."""
    return (
        FieldValue.objects.select_for_update(of=("self",))
        .select_related("field_spec")
        .annotate(current_run_id=_current_run_id())
        .filter(pk=si.int("pk"), workspace_id__in=[si.int(f"ws{i}") for i in range(n_ids)])
    )


def field_decide(
    *,
    user: Any,
    field_id: int,
    action: str,
    version: int | None = None,
    value: Any = None,
    bulk: bool = False,
) -> FieldValue:
    """Record a reviewer's decision on a field: accept, correct (with `value`) or reject.

    `version` is the row version the reviewer saw; if the row changed since (someone else decided), raise
    StaleDecision instead of overwriting. The row is locked for the read-check-write.
    """
    with transaction.atomic():
        return _decide(user=user, field_id=field_id, action=action, version=version, value=value, bulk=bulk)


def _decide(
    *, user: Any, field_id: int, action: str, version: int | None, value: Any, bulk: bool, filters: Any = None
) -> FieldValue:
    """field_decide's work; the caller holds the transaction. `filters`: the queue's, whose cached open count
    the decision adjusts besides the unfiltered one (selectors.queue_counts_decided)."""
    if action not in Action.values:
        raise InvalidCorrection(f"unknown action {action!r}", code="invalid_action")
    ids = list(dict.fromkeys(workspace_ids(user)))
    locked = compiled.instances(
        _locked_field, (len(ids),), {"pk": field_id, **{f"ws{i}": w for i, w in enumerate(ids)}}
    )
    if not locked:
        raise NotFound("No such field.")
    (fv,) = locked
    if version is not None and fv.version != version:
        who = f" by {fv.reviewer}" if fv.reviewer_id else ""
        raise StaleDecision(
            f"This field was changed{who} after you loaded it; reload to see the current value."
        )
    if fv.claim_is_live() and fv.claimed_by_id not in (None, user.pk):
        raise StaleDecision("Another reviewer is working on this field.", code="claimed")
    if fv.current_run_id != fv.run_id:  # the current run is a succeeded one by definition
        raise AlreadyDecided("This value belongs to an older extraction of the document.")
    before_status, before_value = (
        fv.status,
        fv.final_value if fv.status in FieldValue.DECIDED else fv.value,
    )
    if action == Action.ACCEPT:
        fv.status, fv.final_value = FieldValue.Status.ACCEPTED, fv.value
    elif action == Action.REJECT:
        fv.status, fv.final_value = FieldValue.Status.REJECTED, None
    else:
        spec = fv.field_spec.to_data()
        try:
            corrected = normalize(spec, value)
        except InvalidValue as exc:
            raise InvalidCorrection(str(exc), details={"field": spec.name}) from exc
        if corrected is None and spec.required:
            raise InvalidCorrection(
                f"{spec.name} is required: enter a value or reject it", details={"field": spec.name}
            )
        same = values_equal(spec, corrected, fv.value)
        fv.status = FieldValue.Status.ACCEPTED if same else FieldValue.Status.CORRECTED
        fv.final_value = fv.value if same else corrected
    fv.reviewer, fv.reviewed_at = user, timezone.now()
    fv.version += 1
    fv.claimed_by, fv.claim_expires_at = None, None
    fv.save(
        update_fields=[
            "status",
            "final_value",
            "reviewer",
            "reviewed_at",
            "version",
            "claimed_by",
            "claim_expires_at",
        ]
    )
    ReviewDecision.objects.create(
        field_value=fv,
        document_id=fv.document_id,
        reviewer=user,
        action=action,
        before_status=before_status,
        after_status=fv.status,
        before_value=before_value,
        after_value=fv.final_value,
        bulk=bulk,
    )
    _close_document_if_done(fv.document_id, fv.run_id)
    was_open = before_status == FieldValue.Status.NEEDS_REVIEW
    transaction.on_commit(
        functools.partial(queue_counts_decided, user, was_open=was_open, filters=filters), robust=True
    )
    return fv


def fields_bulk_accept(*, user: Any, versions: dict[int, int]) -> tuple[int, list[str]]:
    """Accept each field at the version the reviewer saw; return how many were accepted and what was refused.

    Each field is its own decision (and transaction): one stale field does not undo the others.
    """
    accepted, refused = 0, []
    for field_id, version in versions.items():
        try:
            field_decide(user=user, field_id=field_id, action=Action.ACCEPT, version=version, bulk=True)
        except (StaleDecision, AlreadyDecided, NotFound) as exc:
            refused.append(f"field {field_id}: {exc}")
        else:
            accepted += 1
    return accepted, refused


@functools.cache
def _claim_statement(vendor: str) -> tuple[str, tuple[tuple[str | None, Any], ...]] | None:
    """The claim's conditional UPDATE (_claim_update) compiled once; None where a stand-in does not come through
    (SQLite adapts datetimes to strings)."""
    si = compiled.StandIns()
    sql, slots = si.compile_update(
        _claimable(si.int("pk"), si.int("user"), si.datetime("now")),
        claimed_by=si.int("user"),
        claim_expires_at=si.datetime("expires"),
    )
    return (sql, slots) if si.complete(slots) else None


def _claimable(pk: Any, user_id: Any, now: Any) -> Any:
    """The open field `pk` if nobody else holds a live lease on it."""
    return FieldValue.objects.filter(
        Q(pk=pk) & Q(status=FieldValue.Status.NEEDS_REVIEW) & lease_free(user_id, now)
    )


def _claim_update(pk: int, user_id: Any, now: Any, expires: Any) -> int:
    """Take the lease of the open field `pk` unless another reviewer holds a live one; return the rows changed.
    The ORM's UPDATE, compiled once (_claim_statement): building it cost more Python than running it."""
    from django.db import connection

    statement = _claim_statement(connection.vendor)
    if statement is None:
        return _lease_update(_claimable(pk, user_id, now), claimed_by=user_id, claim_expires_at=expires)
    sql, slots = statement
    params = compiled.bind(slots, {"pk": pk, "user": user_id, "now": now, "expires": expires})

    def run() -> int:
        with connection.cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    return _lease_write(run)


def _lease_update(queryset: Any, **values: Any) -> int:
    """`queryset.update(**values)` of review leases (_lease_write)."""
    return _lease_write(lambda: queryset.update(**values))


def _lease_write(run: Any) -> int:
    """Run `run`, an UPDATE of review leases (claimed_by, claim_expires_at), and return the rows it changed.

    A lease is not worth a WAL flush: one lost in a database crash only lets the field be claimed again, and
    decisions still check the row's version. So on PostgreSQL, outside a transaction, it commits with
    synchronous_commit off: the page and the claim after an accept no longer wait for the disk (a flush
    took 0.3 ms on an idle disk here, 4 ms while other jobs wrote; bench/LOAD.md).
    """
    from django.db import connection

    if connection.in_atomic_block or connection.vendor != "postgresql":
        return run()
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit TO OFF")
        return run()


LEASE_REFRESH_SECONDS = 60  # a held lease is extended only once it has less than lease - 60 s left


def queue_claim_next(
    *,
    user: Any,
    filters: Any,
    skip: tuple[int, ...] = (),
    prefer: int | None = None,
    lease_seconds: int = 300,
    likely_held: bool = True,
) -> FieldValue | None:
    """Claim the next open field for `user` with an expiring lease; return None when the queue is empty.

    A field `user` already holds (a reload, another tab, the field left by going back) comes first, then the
    queue's order. Two reviewers never get the same field: the claim is a conditional UPDATE that only
    succeeds while nobody else holds a live lease, retried on the next candidate when it loses the race.
    `likely_held` only picks the cheaper plan: the held field with its related rows in one query (a page
    reload), or the held field and the candidates in one query (after a decision, which ends the lease).
    """
    from .selectors import claim_candidates, open_fields

    now = timezone.now()
    expires = now + timedelta(seconds=lease_seconds)
    if prefer is not None:
        # Going back (k) to a field skipped earlier takes it again, if nobody else took it meanwhile.
        free = lease_free(user, now)
        open_ = open_fields(user, filters)
        if skip:
            open_ = open_.exclude(pk__in=skip)
        if _lease_update(
            FieldValue.objects.filter(Q(pk=prefer) & Q(pk__in=open_.filter(free).values("pk")) & free),
            claimed_by=user,
            claim_expires_at=expires,
        ):
            return claimed_field(prefer)
    if likely_held:
        # The held item is rendered with its document, type and field spec: fetch them in the same query.
        mine = held_field(user, filters, now=now, skip=skip)
        if mine is not None:
            _lease_extend(mine, expires, lease_seconds)
            return mine
    # The candidates: the field held comes first (unless just looked for), then the queue's free fields.
    candidates = claim_candidates(user, filters, now=now, skip=skip, held=not likely_held)
    for candidate_id, is_held, *_ in candidates:
        if is_held:
            mine = claimed_field(candidate_id)
            _lease_extend(mine, expires, lease_seconds)
            return mine
        if _claim_update(candidate_id, user.pk, now, expires):
            return claimed_field(candidate_id)
    return None


def _lease_extend(fv: FieldValue, expires: Any, lease_seconds: int) -> None:
    """Extend the lease `fv`'s reviewer holds, unless it was taken or extended in the last minute: a page
    reloaded right after the claim (the accept's response) does not write the row again."""
    if fv.claim_expires_at is None or expires - fv.claim_expires_at > timedelta(
        seconds=LEASE_REFRESH_SECONDS
    ):
        _lease_update(FieldValue.objects.filter(pk=fv.pk), claim_expires_at=expires)
        fv.claim_expires_at = expires


def queue_decide_next(
    *,
    user: Any,
    field_id: int,
    action: str,
    version: int | None,
    value: Any,
    filters: Any,
    skip: tuple[int, ...] = (),
) -> tuple[FieldValue, FieldValue | None]:
    """Record the decision (field_decide) and claim the reviewer's next field (queue_claim_next), in one
    transaction: one commit, and the lease of the next field is written with the decision. If the decision
    is refused nothing is claimed."""
    with transaction.atomic():
        decided = _decide(
            user=user,
            field_id=field_id,
            action=action,
            version=version,
            value=value,
            bulk=False,
            filters=filters,
        )
        return decided, queue_claim_next(user=user, filters=filters, skip=skip, likely_held=False)


def queue_release(*, user: Any, field_id: int) -> None:
    _lease_update(
        FieldValue.objects.filter(pk=field_id, claimed_by=user), claimed_by=None, claim_expires_at=None
    )
