"""Gold: the fields humans decided, their export and their exclusion.

Gold: a field a human decided (accepted, corrected or rejected) in a document's production run, unless
an admin excluded it (FieldValue.gold_excluded). Its gold value is the reviewer's final value (None for
a rejection). Auto-accepted fields are not gold; audit samples (services._store_result) are reviewed
anyway, so they become gold and measure the auto-acceptance error.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from django.db.models import QuerySet

from extraction import evaluation as maths
from extraction.schemas import FieldSpec as FieldSpecData

from ..models import DocumentType, FieldValue

DECIDED = [FieldValue.Status.ACCEPTED, FieldValue.Status.CORRECTED, FieldValue.Status.REJECTED]


def _specs(document_type: DocumentType) -> dict[str, FieldSpecData]:
    return {f.name: f.to_data() for f in document_type.fields.order_by("position", "id")}


def gold_items(document_type: DocumentType, *, include_excluded: bool = False) -> QuerySet[FieldValue]:
    """Return the decided fields of production runs of `document_type`, newest decision first.

    A document re-extracted and reviewed again has two decisions on a field; gold_latest keeps one.
    """
    qs = FieldValue.objects.filter(
        field_spec__document_type=document_type,
        run__evaluation__isnull=True,
        status__in=DECIDED,
    )
    if not include_excluded:
        qs = qs.filter(gold_excluded=False)
    return qs.select_related("field_spec", "document", "reviewer", "run__prompt_version").order_by(
        "-reviewed_at", "-id"
    )


def gold_latest(items: Iterable[FieldValue]) -> list[FieldValue]:
    """Keep the latest decision per (document, field) of items ordered newest first; return them by id."""
    seen: dict[tuple[int, int], FieldValue] = {}
    for fv in items:
        seen.setdefault((fv.document_id, fv.field_spec_id), fv)
    return sorted(seen.values(), key=lambda fv: (fv.document_id, fv.field_spec.position, fv.pk))


def gold_set(document_type: DocumentType) -> list[FieldValue]:
    """Return the gold items of `document_type`: one per (document, field), exclusions left out."""
    return gold_latest(gold_items(document_type))


def gold_observation(fv: FieldValue) -> maths.Observation:
    """Return the original run's prediction of a gold item next to its gold value."""
    return maths.Observation(
        document_id=fv.document_id,
        field=fv.field_spec.name,
        predicted=fv.value,
        confidence=min(max(float(fv.confidence), 0.0), 1.0),
        gold=fv.final_value,
    )


GOLD_COLUMNS = [
    "field_value",
    "document",
    "filename",
    "field",
    "type",
    "gold",
    "decision",
    "model_value",
    "confidence",
    "audit_sample",
    "prompt_version",
    "reviewer",
    "reviewed_at",
]


def gold_rows(items: Iterable[FieldValue]) -> Iterator[dict[str, Any]]:
    """Yield one export row per gold item (the GOLD_COLUMNS)."""
    for fv in items:
        yield {
            "field_value": fv.pk,
            "document": fv.document_id,
            "filename": fv.document.filename,
            "field": fv.field_spec.name,
            "type": fv.field_spec.type,
            "gold": fv.final_value,
            "decision": fv.status,
            "model_value": fv.value,
            "confidence": fv.confidence,
            "audit_sample": fv.audit_sample,
            "prompt_version": fv.run.prompt_version.label,
            "reviewer": fv.reviewer.get_username() if fv.reviewer else "",
            "reviewed_at": fv.reviewed_at.isoformat() if fv.reviewed_at else "",
        }


def gold_export(items: Iterable[FieldValue], *, fmt: str) -> str:
    """Return the gold items as CSV (values JSON-encoded, so None and "" differ) or JSON lines."""
    out = io.StringIO()
    if fmt == "jsonl":
        for row in gold_rows(items):
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        return out.getvalue()
    if fmt != "csv":
        raise ValueError(f"unknown export format {fmt!r}")
    writer = csv.DictWriter(out, fieldnames=GOLD_COLUMNS)
    writer.writeheader()
    for row in gold_rows(items):
        row["gold"] = json.dumps(row["gold"], ensure_ascii=False)
        row["model_value"] = json.dumps(row["model_value"], ensure_ascii=False)
        writer.writerow(row)
    return out.getvalue()


def gold_exclude(*, field_values: QuerySet[FieldValue], excluded: bool) -> int:
    """Exclude fields from (or put them back into) the gold set; return how many rows changed."""
    return field_values.exclude(gold_excluded=excluded).update(gold_excluded=excluded)
