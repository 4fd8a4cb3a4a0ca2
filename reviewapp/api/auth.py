"""Authentication by API key, scope checks and per-principal throttling.

An API-key request runs as the key's creator narrowed to the key's workspace: `request.user` is that
User (so review decisions record a person) carrying `api_workspace_ids`, which `selectors.workspace_ids`
honours before anything else, and `request.auth` is the ApiKey.

Models are imported inside functions: DRF imports these classes from settings, possibly before the app
registry is ready.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.utils import timezone
from redis.exceptions import RedisError
from rest_framework import authentication, exceptions, permissions, throttling
from rest_framework.request import Request
from rest_framework.settings import api_settings

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Refresh last_used_at at most this often: a write on every request would serialise a busy key's traffic.
LAST_USED_GRANULARITY = timedelta(minutes=1)


def api_key_of(request: Request) -> Any:
    """Return the ApiKey that authenticated `request`, or None for a session or token."""
    from ..models import ApiKey

    return request.auth if isinstance(request.auth, ApiKey) else None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer ra_…` or `X-Api-Key: ra_…`."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        raw = self._raw_key(request)
        if raw is None:
            return None  # not ours: let token or session authentication try
        from ..models import ApiKey, Membership
        from .keys import api_key_verify

        key = api_key_verify(raw)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid API key.", code="invalid_api_key")
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key was revoked.", code="revoked_api_key")
        user = key.created_by
        if user is None or not user.is_active:
            raise exceptions.AuthenticationFailed(
                "The owner of this API key no longer exists or is inactive; create a new key.",
                code="orphaned_api_key",
            )
        if (
            not user.is_superuser
            and not Membership.objects.filter(user=user, workspace=key.workspace).exists()
        ):
            raise exceptions.AuthenticationFailed(
                "The owner of this API key left its workspace; create a new key.", code="orphaned_api_key"
            )
        now = timezone.now()
        if key.last_used_at is None or key.last_used_at < now - LAST_USED_GRANULARITY:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        user.api_workspace_ids = [key.workspace_id]
        user.api_key = key
        return user, key

    def authenticate_header(self, request: Request) -> str:
        # A value here makes DRF answer 401 (not 403) to a missing or bad key.
        return f'{self.keyword} realm="api"'

    def _raw_key(self, request: Request) -> str | None:
        header = request.META.get("HTTP_X_API_KEY")
        if header:
            return header
        auth = authentication.get_authorization_header(request).split()
        if len(auth) == 2 and auth[0].lower() == self.keyword.lower().encode():
            try:
                value = auth[1].decode()
            except UnicodeError:
                raise exceptions.AuthenticationFailed("Invalid API key.", code="invalid_api_key") from None
            if value.startswith("ra_"):
                return value
        return None


def required_scope(request: Request, view: Any) -> str:
    """Return the scope a key needs here: the view's `required_scope`, else read for GET, write otherwise."""
    declared = getattr(view, "required_scope", None)
    if declared:
        return declared
    return "read" if request.method in SAFE_METHODS else "write"


class HasScope(permissions.BasePermission):
    """API keys need the scope the view asks for; sessions and user tokens act with the user's rights."""

    code = "insufficient_scope"

    def has_permission(self, request: Request, view: Any) -> bool:
        key = api_key_of(request)
        if key is None:
            return True
        needed = required_scope(request, view)
        if needed in (key.scopes or []):
            return True
        self.message = f"This API key lacks the {needed!r} scope."
        return False


class IsStaffUser(permissions.BasePermission):
    """Staff only, by session or user token: an API key never reaches the admin endpoints."""

    message = "Staff only (session or user token; API keys are not accepted here)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return api_key_of(request) is None and bool(getattr(request.user, "is_staff", False))


class NoApiKey(permissions.BasePermission):
    """Session or user token only (workspace administration is not an API-key scope)."""

    message = "API keys are not accepted here; use a session or a user token."

    def has_permission(self, request: Request, view: Any) -> bool:
        return api_key_of(request) is None


class PrincipalRateThrottle(throttling.SimpleRateThrottle):
    """One bucket per API key, per user, or per client address, at the rate named by its scope.

    Rates come from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] ("api_key", "user", "anon"), read on each
    request so that a settings override applies. Buckets live in Django's cache: per process with the
    default local-memory cache, so production should point CACHES at Redis for a shared limit.
    """

    def __init__(self) -> None:
        # The rate depends on who is calling, known only in allow_request.
        self.ident = ""

    def allow_request(self, request: Request, view: Any) -> bool:
        key = api_key_of(request)
        if key is not None:
            self.scope, self.ident = "api_key", f"key{key.pk}"
        elif getattr(request.user, "is_authenticated", False):
            self.scope, self.ident = "user", f"user{request.user.pk}"
        else:
            self.scope, self.ident = "anon", self.get_ident(request)
        self.rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except RedisError:
            # The counters live in Redis: when it is down, serve unthrottled rather than fail every request.
            logging.getLogger(__name__).warning("rate-limit cache unavailable: not throttling", exc_info=True)
            return True

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.ident}
