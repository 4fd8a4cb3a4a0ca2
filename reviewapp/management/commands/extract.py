"""Load documents from files, queue their extraction, optionally wait and print the results as JSON lines."""

from __future__ import annotations

import json
import mimetypes
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ... import services
from ...models import Document, DocumentType, Workspace
from ...selectors import document_fields
from ...worker import start_inprocess_worker


def document_json(doc: Document) -> dict[str, Any]:
    """Return the command's contract for one document."""
    return {
        "document": doc.pk,
        "status": doc.status,
        **({"reason": doc.status_reason} if doc.status == Document.Status.FAILED else {}),
        "fields": {
            f.field_spec.name: {
                "value": f.final_value if f.status in ("accepted", "corrected", "rejected") else f.value,
                "confidence": f.confidence,
                "status": f.status,
            }
            for f in document_fields(doc)
        },
    }


class Command(BaseCommand):
    help = "Create documents from files and queue their extraction."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("paths", nargs="*", help="files to load")
        parser.add_argument("--type", dest="type_slug", help="document type slug (e.g. receipt)")
        parser.add_argument("--workspace", help="workspace slug (default: the only one, or 'demo')")
        parser.add_argument(
            "--wait", action="store_true", help="block until every document is in a terminal state"
        )
        parser.add_argument(
            "--timeout", type=float, default=600.0, help="seconds to wait at most (with --wait)"
        )
        parser.add_argument("--format", choices=["text", "json"], default="text")
        parser.add_argument(
            "--retry", type=int, nargs="*", metavar="ID", help="re-queue these document ids instead"
        )

    def handle(self, *args: Any, **o: Any) -> None:
        start_inprocess_worker()
        if o["retry"]:
            with services.extraction_batch():
                docs = [services.document_retry(document=Document.objects.get(pk=pk)) for pk in o["retry"]]
        else:
            docs = self._create(o)
        if o["wait"]:
            docs = self._wait([d.pk for d in docs], o["timeout"])
        for doc in docs:
            if o["format"] == "json":
                self.stdout.write(json.dumps(document_json(doc), ensure_ascii=False, default=str))
            else:
                self.stdout.write(
                    f"document {doc.pk} {doc.filename}: {doc.status} {doc.status_reason}".rstrip()
                )

    def _create(self, o: dict[str, Any]) -> list[Document]:
        if not o["paths"]:
            raise CommandError("give at least one PATH (or --retry ID ...)")
        if not o["type_slug"]:
            raise CommandError("--type is required")
        try:
            doc_type = DocumentType.objects.get(slug=o["type_slug"])
        except DocumentType.DoesNotExist:
            known = ", ".join(DocumentType.objects.values_list("slug", flat=True)) or "none (run seed_demo)"
            raise CommandError(f"unknown document type {o['type_slug']!r}; known: {known}") from None
        workspace = self._workspace(o["workspace"])
        paths = [Path(raw) for raw in o["paths"]]
        for path in paths:  # all of them, before anything is stored
            if not path.is_file():
                raise CommandError(f"{path}: no such file")
        created, refused = services.documents_create(
            workspace=workspace,
            document_type=doc_type,
            user=None,
            files=((p.read_bytes(), p.name, mimetypes.guess_type(p.name)[0]) for p in paths),
        )
        for r in refused:
            self.stderr.write(f"{paths[r.index]}: rejected ({r.error.code}): {r.error.message}")
        docs = [c.document for c in created]
        if not docs:
            raise CommandError("no document was accepted")
        return docs

    @staticmethod
    def _workspace(slug: str | None) -> Workspace:
        if slug:
            try:
                return Workspace.objects.get(slug=slug)
            except Workspace.DoesNotExist:
                raise CommandError(f"unknown workspace {slug!r}") from None
        qs = Workspace.objects.all()
        if qs.count() == 1:
            return qs.get()
        ws = qs.filter(slug="demo").first()
        if ws is None:
            raise CommandError("several workspaces: choose one with --workspace")
        return ws

    @staticmethod
    def _wait(ids: list[int], timeout: float) -> list[Document]:
        deadline = time.monotonic() + timeout
        while True:
            docs = list(Document.objects.filter(pk__in=ids).select_related("document_type").order_by("pk"))
            if all(d.is_terminal for d in docs) or time.monotonic() > deadline:
                return docs
            time.sleep(0.2)
