"""Create the demo workspace, users and document types (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ... import demo


class Command(BaseCommand):
    help = "Create a demo workspace, an admin and a reviewer, and the invoice and receipt document types."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--password", default=demo.DEMO_PASSWORD, help="password for both demo users")

    def handle(self, *args: Any, **options: Any) -> None:
        result = demo.seed(password=options["password"])
        self.stdout.write(self.style.SUCCESS(f"Workspace {result.workspace.slug!r} ready."))
        self.stdout.write(
            f"  admin:    username 'admin'    password {options['password']!r} (Django admin at /admin/)"
        )
        self.stdout.write(f"  reviewer: username 'reviewer' password {options['password']!r}")
        self.stdout.write("  document types: " + ", ".join(t.slug for t in result.document_types))
