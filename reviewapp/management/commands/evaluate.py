"""Evaluate a prompt version and model on the gold set of a document type; print the report.

    python manage.py evaluate --type receipt --prompt-version v2 --model offline [--limit 50] [--format json]

With --wait, or when the broker is the in-memory default (no worker could see a queued job from this
process), the evaluation runs here, synchronously, by calling the task function directly; otherwise it
is queued for the Celery workers and the command prints the queued evaluation.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ... import evaluation as ev
from ...models import DocumentType, Evaluation, PromptVersion


def evaluation_json(evaluation: Evaluation) -> dict[str, Any]:
    """Return the command's contract for one evaluation (the stored report without its per-item list)."""
    report = {k: v for k, v in evaluation.report.items() if k != "items"}
    if "fields" in report:
        report["fields"] = ev.ordered_fields(report)
    return {
        "evaluation": evaluation.pk,
        "status": evaluation.status,
        "document_type": evaluation.document_type.slug,
        "prompt_version": evaluation.prompt_version.label,
        "model": evaluation.model_alias,
        **({"error": evaluation.error_message} if evaluation.status == Evaluation.Status.FAILED else {}),
        "report": report,
    }


def find_prompt_version(document_type: DocumentType, label: str) -> PromptVersion:
    """Return the version named by `label`: its full label (`receipt-extract v2`), `v2` or `2`."""
    match = re.fullmatch(r"(?:.*\s)?v?(\d+)", label.strip())
    version = document_type.prompt_versions.filter(version=int(match.group(1))).first() if match else None
    if version is None or label.strip() not in (version.label, f"v{version.version}", str(version.version)):
        known = ", ".join(p.label for p in document_type.prompt_versions.all()) or "none"
        raise CommandError(f"unknown prompt version {label!r} for {document_type.slug}; known: {known}")
    return version


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


class Command(BaseCommand):
    help = "Re-extract the gold documents of a type with a prompt version and model; compare with gold."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--type", dest="type_slug", required=True, help="document type slug")
        parser.add_argument(
            "--prompt-version", required=True, help="label, e.g. 'receipt-extract v2', 'v2' or '2'"
        )
        parser.add_argument(
            "--model", default="", help="model alias from the LLM config (default: the prompt's)"
        )
        parser.add_argument("--limit", type=int, default=None, help="evaluate at most N gold documents")
        parser.add_argument("--format", choices=["text", "json"], default="text")
        parser.add_argument("--wait", action="store_true", help="run here and now instead of queueing")

    def handle(self, *args: Any, **o: Any) -> None:
        try:
            doc_type = DocumentType.objects.get(slug=o["type_slug"])
        except DocumentType.DoesNotExist:
            raise CommandError(f"unknown document type {o['type_slug']!r}") from None
        prompt = find_prompt_version(doc_type, o["prompt_version"])
        if o["limit"] is not None and o["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        synchronous = o["wait"] or settings.CELERY_BROKER_URL.startswith("memory://")
        evaluation = ev.evaluation_create(
            document_type=doc_type,
            prompt_version=prompt,
            model_alias=o["model"],
            limit=o["limit"],
            enqueue=not synchronous,
        )
        if synchronous:
            try:
                ev.run_evaluation(evaluation.pk)
            except Exception as exc:  # already recorded on the row; report it like any failed evaluation
                self.stderr.write(f"evaluation {evaluation.pk} failed: {exc}")
        evaluation.refresh_from_db()
        if o["format"] == "json":
            self.stdout.write(json.dumps(evaluation_json(evaluation), ensure_ascii=False, default=str))
        else:
            self._text(evaluation)
        if evaluation.status == Evaluation.Status.FAILED:
            raise CommandError(evaluation.error_message or "evaluation failed")

    def _text(self, evaluation: Evaluation) -> None:
        self.stdout.write(f"{evaluation}: {evaluation.status}")
        if evaluation.status != Evaluation.Status.DONE:
            return
        self.stdout.write(
            f"{'field':<20} {'n':>5} {'accuracy':>9} {'coverage':>9} {'ECE':>6} {'review':>7} {'AA err':>7}"
        )
        for row in ev.report_table(evaluation.report):
            ece = "—" if row["ece"] is None else f"{row['ece']:.3f}"
            self.stdout.write(
                f"{row['field']:<20} {row['n']:>5} {_pct(row['accuracy']):>9} {_pct(row['coverage']):>9} "
                f"{ece:>6} {_pct(row['review_rate']):>7} {_pct(row['auto_accept_error_rate']):>7}"
            )
        docs = evaluation.report["documents"]
        self.stdout.write(f"documents: {docs['n_documents']}, failures: {docs['failures']}")
