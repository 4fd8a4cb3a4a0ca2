"""The embedded demo: migrate, seed, queue the sample documents, run a worker thread and the web server."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from ... import demo, services
from ...models import Document, DocumentType
from ...worker import start_inprocess_worker


class Command(BaseCommand):
    help = "Set up and run the demo on http://127.0.0.1:8000 (SQLite, in-process worker, offline model)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--addrport", default="127.0.0.1:8000")
        parser.add_argument("--no-serve", action="store_true", help="set up and extract, then exit")

    def handle(self, *args: Any, **o: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        start_inprocess_worker()
        seeded = demo.seed(password=demo.DEMO_PASSWORD)
        if not Document.objects.exists():
            for path, type_slug in demo.sample_paths():
                services.document_create(
                    workspace=seeded.workspace,
                    document_type=DocumentType.objects.get(slug=type_slug),
                    user=None,
                    data=path.read_bytes(),
                    filename=path.name,
                )
            self.stdout.write(
                f"Queued {Document.objects.count()} sample documents; the worker extracts them now."
            )
        if o["no_serve"]:
            while Document.objects.filter(
                status__in=[Document.Status.QUEUED, Document.Status.EXTRACTING]
            ).exists():
                time.sleep(0.2)
            for status, n in Counter(Document.objects.values_list("status", flat=True)).most_common():
                self.stdout.write(f"  {n} {status}")
            return
        self.stdout.write(
            self.style.SUCCESS(f"Open http://{o['addrport']}/ and log in as reviewer / {demo.DEMO_PASSWORD}")
        )
        call_command("runserver", o["addrport"], use_reloader=False, insecure_serving=not settings.DEBUG)
