"""Export the gold set of a document type as CSV or JSON lines (to stdout or a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ... import evaluation as ev
from ...models import DocumentType


class Command(BaseCommand):
    help = "Export gold items (one per reviewed document field) as CSV or JSONL."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--type", dest="type_slug", required=True, help="document type slug")
        parser.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
        parser.add_argument("--output", "-o", help="file to write (default: stdout)")

    def handle(self, *args: Any, **o: Any) -> None:
        try:
            doc_type = DocumentType.objects.get(slug=o["type_slug"])
        except DocumentType.DoesNotExist:
            raise CommandError(f"unknown document type {o['type_slug']!r}") from None
        text = ev.gold_export(ev.gold_set(doc_type), fmt=o["format"])
        if o["output"]:
            Path(o["output"]).write_text(text, encoding="utf-8")
        else:
            self.stdout.write(text, ending="")
