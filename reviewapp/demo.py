"""The demo: a workspace, two users, the invoice and receipt types, and the sample documents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from extraction.demo_types import TYPES  # the demo's types, shared with the offline model's tests and bench

from .models import DocumentType, FieldSpec, Membership, PromptVersion, Workspace

DEMO_PASSWORD = "demo-review-123"  # noqa: S105 - printed on screen for the local demo only


@dataclass
class Seeded:
    workspace: Workspace
    document_types: list[DocumentType]


@transaction.atomic
def seed(*, password: str) -> Seeded:
    """Create (or update) the demo data. Safe to run again."""
    ws, _ = Workspace.objects.get_or_create(slug="demo", defaults={"name": "Demo workspace"})
    User = get_user_model()
    admin, created = User.objects.get_or_create(
        username="admin", defaults={"is_staff": True, "is_superuser": True}
    )
    if created:
        admin.set_password(password)
        admin.save()
    reviewer, created = User.objects.get_or_create(username="reviewer")
    if created:
        reviewer.set_password(password)
        reviewer.save()
    Membership.objects.get_or_create(user=admin, workspace=ws, defaults={"role": Membership.Role.ADMIN})
    Membership.objects.get_or_create(user=reviewer, workspace=ws, defaults={"role": Membership.Role.REVIEWER})
    return Seeded(ws, [ensure_type(slug, spec) for slug, spec in TYPES.items()])


def ensure_type(slug: str, spec: dict[str, Any]) -> DocumentType:
    dt, _ = DocumentType.objects.get_or_create(
        slug=slug, defaults={"name": spec["name"], "description": spec["description"]}
    )
    for position, (name, type_, description, required, threshold, choices) in enumerate(spec["fields"]):
        FieldSpec.objects.get_or_create(
            document_type=dt,
            name=name,
            defaults={
                "type": type_,
                "description": description,
                "required": required,
                "threshold": threshold,
                "choices": choices,
                "position": position,
            },
        )
    if dt.active_prompt is None:
        prompt, _ = PromptVersion.objects.get_or_create(document_type=dt, version=1)
        dt.active_prompt = prompt
        dt.save(update_fields=["active_prompt"])
    return dt


def sample_paths() -> list[tuple[Path, str]]:
    """Return the bundled sample documents with their type (from samples/truth.json)."""
    import json

    folder = Path(settings.BASE_DIR) / "samples"
    truth_file = folder / "truth.json"
    truth = json.loads(truth_file.read_text()) if truth_file.exists() else {}
    return [(folder / name, info["type"]) for name, info in sorted(truth.items()) if (folder / name).exists()]
