"""API keys: create (the secret is shown once), parse, verify and revoke. Only a hash is stored.

A key reads `ra_<prefix>_<secret>`. The prefix is public (it finds the row and names the key in lists and
logs); the secret is 32 random bytes, so a plain SHA-256 is enough: there is nothing to brute-force that a
slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..errors import ReviewAppError
from ..models import ApiKey, Membership, Workspace

PREFIX = "ra"
SCOPES = tuple(ApiKey.Scope.values)


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    raw_key: str  # shown once; never stored


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(raw: str) -> tuple[str, str] | None:
    """Return (prefix, secret) of a well-formed key, None for anything else."""
    parts = raw.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def check_scopes(scopes: Any) -> list[str]:
    """Return the scopes, de-duplicated in canonical order; raise when one is unknown or none is given."""
    scopes = list(scopes or [])
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ReviewAppError(
            f"Scopes must be among {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}.",
            code="invalid_scopes",
        )
    return [s for s in SCOPES if s in scopes]


def assign_secret(key: ApiKey) -> str:
    """Give `key` a fresh prefix and secret (unsaved); return the full key to show once."""
    secret = secrets.token_urlsafe(32)
    key.prefix = secrets.token_hex(6)
    key.hashed_key = hash_secret(secret)
    return f"{PREFIX}_{key.prefix}_{secret}"


def api_key_create(*, workspace: Workspace, name: str, scopes: Any, created_by: Any) -> CreatedKey:
    """Create a key for `workspace`. `created_by` must be an admin of it: review decisions made with the
    key are recorded as theirs (ReviewDecision.reviewer needs a person)."""
    if created_by is None or not getattr(created_by, "pk", None):
        raise ReviewAppError("An API key needs an owner (created_by).", code="owner_required")
    is_admin = (
        created_by.is_superuser
        or Membership.objects.filter(
            user=created_by, workspace=workspace, role=Membership.Role.ADMIN
        ).exists()
    )
    if not is_admin:
        raise ReviewAppError(f"{created_by} is not an admin of {workspace.slug}.", code="not_workspace_admin")
    key = ApiKey(workspace=workspace, name=name[:100], scopes=check_scopes(scopes), created_by=created_by)
    raw = assign_secret(key)
    key.save()
    return CreatedKey(key, raw)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke the key now; idempotent (a second revoke keeps the first time)."""
    with transaction.atomic():
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db()
    return api_key


def api_key_verify(raw: str) -> ApiKey | None:
    """Return the key matching `raw` (revoked ones too: the caller says why it fails), or None."""
    parsed = split_key(raw)
    if parsed is None:
        return None
    prefix, secret = parsed
    key = ApiKey.objects.select_related("workspace", "created_by").filter(prefix=prefix).first()
    # compare_digest: the hash comparison must not leak, through timing, how much of it matched.
    if key is None or not hmac.compare_digest(key.hashed_key, hash_secret(secret)):
        return None
    return key
