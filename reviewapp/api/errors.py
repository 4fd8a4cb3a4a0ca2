"""One JSON error shape for the whole API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..errors import ReviewAppError


def error_response(code: str, message: str, http_status: int, details: Any = None) -> Response:
    return Response(
        {"error": {"code": code, "message": message, "details": details or {}}}, status=http_status
    )


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map domain errors and DRF's own errors to the one error shape, with a stable code."""
    if isinstance(exc, ReviewAppError):
        return error_response(exc.code, exc.message, exc.status, exc.details)
    if isinstance(exc, Http404):
        return error_response("not_found", "Not found.", status.HTTP_404_NOT_FOUND)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        return error_response("invalid", "The request is invalid.", response.status_code, response.data)
    # The code given when raised (e.g. "revoked_api_key", "insufficient_scope"), else the class default.
    codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
    code = codes if isinstance(codes, str) else getattr(exc, "default_code", "error")
    detail = response.data.get("detail", str(exc)) if isinstance(response.data, dict) else str(exc)
    resp = error_response(str(code), str(detail), response.status_code)
    for header in ("Retry-After", "WWW-Authenticate"):
        if header in response:
            resp[header] = response[header]
    return resp
