"""HTML and htmx views: parse the request, call a service or selector, render. Nothing else."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from extraction.normalize import display

from . import selectors, services
from .errors import NotFound, ReviewAppError
from .forms import UploadForm
from .models import Document, FieldValue

QUEUE_TEMPLATE = "review/queue.html"


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    from django.db import connection

    connection.ensure_connection()
    return JsonResponse({"ok": True})


def _skip_ids(request: HttpRequest) -> tuple[int, ...]:
    raw = request.GET.get("skip") or request.POST.get("skip") or ""
    return tuple(int(x) for x in raw.split(",") if x.isdigit())[:200]


def _item_context(
    request: HttpRequest, item: FieldValue | None, *, choices: bool = False, **extra: Any
) -> dict[str, Any]:
    filters = selectors.QueueFilters.from_query(request.GET if request.method == "GET" else request.POST)
    query, skip = filters.as_query(), [str(i) for i in _skip_ids(request)]
    ctx: dict[str, Any] = {
        "item": item,
        "filters": filters,
        "filter_query": query,
        "filter_qs": urlencode(query),
        **selectors.queue_header(request.user, filters, choices=choices),  # counts (+ the filter options)
        "skip": ",".join(skip),
        "skip_prev": ",".join(skip[:-1]),
        "skip_last": skip[-1] if skip else "",
        **extra,
    }
    if item is not None:
        ctx["siblings"] = selectors.queue_siblings(item.document)
        ctx["display_value"] = display(item.field_spec.to_data(), item.value)
        ctx.update(_text_window(item.document.text, item.evidence_start, item.evidence_end))
    return ctx


def _text_window(text: str, start: int | None, end: int | None, radius: int = 4000) -> dict[str, str]:
    """Return the text around the evidence, split for highlighting; long documents are windowed."""
    if start is None or end is None or end > len(text):
        head = text[: radius * 2]
        return {
            "text_before": head + ("\n…" if len(text) > len(head) else ""),
            "text_evidence": "",
            "text_after": "",
        }
    lo, hi = max(0, start - radius), min(len(text), end + radius)
    return {
        "text_before": ("…\n" if lo else "") + text[lo:start],
        "text_evidence": text[start:end],
        "text_after": text[end:hi] + ("\n…" if hi < len(text) else ""),
    }


@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    filters = selectors.QueueFilters.from_query(request.GET)
    prefer = request.GET.get("prefer", "")
    item = services.queue_claim_next(
        user=request.user,
        filters=filters,
        skip=_skip_ids(request),
        prefer=int(prefer) if prefer.isdigit() else None,
    )
    if request.htmx:
        return render(request, QUEUE_TEMPLATE + "#item", _item_context(request, item))
    return render(request, QUEUE_TEMPLATE, _item_context(request, item, choices=True))


@require_POST
def decide(request: HttpRequest, field_id: int) -> HttpResponse:
    raw_version = request.POST.get("version", "")
    decision = {
        "user": request.user,
        "field_id": field_id,
        "action": request.POST.get("action", ""),
        "version": int(raw_version) if raw_version.isdigit() else None,
        "value": request.POST.get("value"),
    }
    on_document_page = request.POST.get("from") == "document"
    filters = selectors.QueueFilters.from_query(request.POST)
    error: ReviewAppError | None = None
    try:
        if on_document_page:
            services.field_decide(**decision)
        else:  # the decision and the claim of the next field, in one transaction
            _, item = services.queue_decide_next(**decision, filters=filters, skip=_skip_ids(request))
    except NotFound:
        raise Http404("No such field.") from None
    except ReviewAppError as exc:
        error = exc
    errors = {"error": error.message, "error_code": error.code} if error else {}
    if on_document_page:
        ctx = _document_context(request, selectors.field_for(request.user, field_id).document)
        return render(request, "review/document.html#fields", {**ctx, **errors})
    if error is not None:  # show the same item again, with the message (inline for an invalid value)
        item = selectors.field_for(request.user, field_id)
        ctx = _item_context(
            request,
            item,
            correcting=error.code == "invalid_value",
            submitted=request.POST.get("value", ""),
            **errors,
        )
        return render(request, QUEUE_TEMPLATE + "#item", ctx)
    return render(request, QUEUE_TEMPLATE + "#item", _item_context(request, item, done=decision["action"]))


@require_POST
def bulk_accept(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        doc = selectors.document_for(request.user, pk)
    except NotFound:
        raise Http404("No such document.") from None
    ids = [int(i) for i in request.POST.getlist("ids") if i.isdigit()]
    versions = {
        i: int(request.POST.get(f"v{i}", "0")) for i in ids if request.POST.get(f"v{i}", "").isdigit()
    }
    accepted, refused = services.fields_bulk_accept(user=request.user, versions=versions)
    ctx = _document_context(request, doc)
    ctx["bulk_done"] = f"Accepted {accepted} field{'s' if accepted != 1 else ''}."
    if refused:
        ctx.update(error="Not accepted (changed meanwhile): " + "; ".join(refused), error_code="stale")
    return render(request, "review/document.html#fields", ctx)


@require_GET
def queue_counts(request: HttpRequest) -> HttpResponse:
    filters = selectors.QueueFilters.from_query(request.GET)
    ctx = {
        "counts": selectors.queue_counts(request.user, filters),
        "filter_qs": urlencode(filters.as_query()),
    }
    return render(request, QUEUE_TEMPLATE + "#counts", ctx)


@require_POST
def release(request: HttpRequest, field_id: int) -> HttpResponse:
    services.queue_release(user=request.user, field_id=field_id)
    return HttpResponse(status=204)


@require_http_methods(["GET", "POST"])
def documents(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        files = form.upload_files()
        created, refused = services.documents_create(
            workspace=form.cleaned_data["workspace"],
            document_type=form.cleaned_data["document_type"],
            user=request.user,
            files=files,
        )
        for c in created:
            if c.duplicate_of is not None:
                messages.warning(
                    request,
                    f"{c.document.filename}: same file as document #{c.duplicate_of.pk}; extracted again anyway.",
                )
        if created and len(files) == 1:
            return redirect("document", pk=created[0].document.pk)
        reasons = [
            r.error.message if len(files) == 1 else f"{r.filename}: {r.error.message}" for r in refused
        ]
        if created:
            messages.success(request, f"{len(created)} documents queued for extraction.")
            for reason in reasons:
                messages.error(request, reason)
            return redirect("documents")
        form.add_error(None, " ".join(reasons))
    status = request.GET.get("status") or None
    docs = selectors.search_documents(request.user, status=status, q=request.GET.get("q"))[:200]
    counts = selectors.document_status_counts(request.user)
    statuses = [(value, label, counts.get(value, 0)) for value, label in Document.Status.choices]
    ctx = {"form": form, "documents": docs, "status": status, "statuses": statuses}
    return render(request, "review/documents.html", ctx, status=400 if form.errors else 200)


def _document_context(request: HttpRequest, document: Document) -> dict[str, Any]:
    fields = selectors.document_fields(document)
    return {
        "document": document,
        "fields": fields,
        "runs": document.runs.select_related("prompt_version").order_by("-started_at")[:10],
        "history": selectors.document_history(document)[:100],
        "segments": _highlight_segments(
            document.text, fields, document.pages if document.kind == "pdf" else None
        ),
    }


@require_GET
def document(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        doc = selectors.document_for(request.user, pk)
    except NotFound:
        raise Http404("No such document.") from None
    template = "review/document.html#live" if request.htmx else "review/document.html"
    return render(request, template, _document_context(request, doc))


@require_POST
def document_retry(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        doc = selectors.document_for(request.user, pk)
        services.document_retry(document=doc)
    except NotFound:
        raise Http404("No such document.") from None
    except ReviewAppError as exc:
        messages.error(request, exc.message)
    if request.htmx:
        return HttpResponseClientRedirect(f"/documents/{pk}/")
    return redirect("document", pk=pk)


def _highlight_segments(
    text: str, fields: list[FieldValue], pages: list[list[int]] | None = None
) -> list[dict[str, Any]]:
    """Split the text into plain, evidence and page-start segments for the template (autoescaped)."""
    spans = sorted(
        {
            (f.evidence_start, f.evidence_end, f.pk)
            for f in fields
            if f.evidence_start is not None and f.evidence_end
        },
    )
    out: list[dict[str, Any]] = []
    pos = 0
    for start, end, fid in spans:
        if start < pos or end > len(text):
            continue  # overlapping spans: the first one wins
        if start > pos:
            out.append({"text": text[pos:start]})
        out.append({"text": text[start:end], "field": fid})
        pos = end
    out.append({"text": text[pos:]})
    return _with_page_breaks(out, pages or [])


def _with_page_breaks(segments: list[dict[str, Any]], pages: list[list[int]]) -> list[dict[str, Any]]:
    """Insert a marker where each PDF page starts, so reviewers read the text page by page."""
    starts = {start: n for n, (start, _end) in enumerate(pages, 1)}
    if len(starts) < 2:
        return segments
    out: list[dict[str, Any]] = []
    pos = 0
    for seg in segments:
        cuts = sorted(s for s in starts if pos <= s < pos + len(seg["text"]) and "field" not in seg)
        last = 0
        for cut in cuts:
            if cut - pos > last:
                out.append({"text": seg["text"][last : cut - pos]})
            out.append({"page": starts[cut], "text": ""})
            last = cut - pos
        out.append({**seg, "text": seg["text"][last:]})
        pos += len(seg["text"])
    return out
