"""OpenAPI generation: the error responses every operation can give, and the API-key security scheme."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from .serializers import ErrorOut

# What any operation may answer besides its success: bad input or domain rule (400), no or bad
# credentials (401), a key without the scope or a non-staff user (403), not found or another workspace's
# object (404), throttled (429).
COMMON_ERRORS = {
    "400": "Invalid input (`invalid`, with per-field `details`) or a domain rule refused it.",
    "401": "Missing, invalid or revoked credentials.",
    "403": "Authenticated, but the key lacks the scope or the user the role.",
    "404": "No such object, or one in a workspace you cannot see (its existence is not disclosed).",
    "429": "Rate limit of this key or user exceeded; see Retry-After.",
}
ERROR_EXAMPLE = {"error": {"code": "not_found", "message": "No such document.", "details": {}}}


class ApiAutoSchema(AutoSchema):
    """AutoSchema that documents the shared error responses and bounds integer path ids."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for code, description in COMMON_ERRORS.items():
            if code not in responses:
                response = self._get_response_for_code(ErrorOut, code, direction=direction)
                response["description"] = description
                responses[code] = response
        return responses

    def _resolve_path_parameters(self, variables: Any) -> list[dict[str, Any]]:
        parameters = super()._resolve_path_parameters(variables)
        for parameter in parameters:
            schema = parameter.get("schema", {})
            # <int:pk> matches digits only: a negative id would never reach the API (Django's HTML 404).
            if schema.get("type") == "integer":
                schema["minimum"] = 1
                schema["maximum"] = 2**63 - 1
        return parameters


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "reviewapp.api.auth.ApiKeyAuthentication"
    name = ["ApiKeyBearer", "ApiKeyHeader"]

    def get_security_requirement(self, auto_schema: Any) -> list[dict[str, list[Any]]]:
        # Either header will do (OR), not both (the default for a list of names).
        return [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}]

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "ra_<prefix>_<secret>",
                "description": "A workspace API key, scoped read / write / review.",
            },
            {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        ]
