"""Property-based tests of the whole API from its own OpenAPI schema (schemathesis, in-process WSGI).

Every operation is called with generated inputs, authenticated as a workspace admin with a full-scope API
key or, for the staff and admin endpoints, with a staff user's token. No answer may be a 5xx, and every
answer must match the schema: status code documented, content type, body shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.cache import cache
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reviewapp.api.keys import api_key_create
from reviewapp.wsgi import application

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Runs, calls, webhooks and keys refuse API keys: they are exercised with a staff token instead.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "cookie")
USER_ONLY = ("/api/v1/runs", "/api/v1/webhooks", "/api/v1/webhook-deliveries", "/api/v1/api-keys")


# The schema is generated without a database (it is served to anonymous clients too).
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)
# The coverage phase (every boundary and negative value the schema implies) doubles the run time; it is
# off to keep this under a minute. REVIEWAPP_FUZZ_COVERAGE=1 turns it on for a deeper run.
schema.config.phases.coverage.enabled = os.environ.get("REVIEWAPP_FUZZ_COVERAGE") == "1"


@pytest.fixture
def in_process_wsgi(db: Any) -> Iterator[None]:
    """Let WSGI calls share the test's transaction.

    Django closes the connection at the end of each WSGI request; in a test that is the connection
    holding the test's transaction, so unhook it as django.test.Client does.
    """
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def credentials(
    in_process_wsgi: None,
    make_document: Any,
    workspace: Any,
    admin_user: Any,
    invoice_type: Any,
    settings: Any,
) -> dict[str, dict[str, str]]:
    """Data to find (a document with fields) and headers for both kinds of principal."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "100000/min", "user": "100000/min", "anon": "100000/min"},
    }
    cache.clear()
    make_document()
    key = api_key_create(
        workspace=workspace, name="fuzz", scopes=["read", "write", "review"], created_by=admin_user
    ).raw_key
    token = Token.objects.get_or_create(user=admin_user)[0].key
    return {"key": {"Authorization": f"Bearer {key}"}, "staff": {"Authorization": f"Token {token}"}}


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: Any, credentials: dict[str, dict[str, str]]) -> None:
    who = "staff" if case.operation.path.startswith(USER_ONLY) else "key"
    # Drop the credentials schemathesis generates for the documented schemes: a random X-Api-Key would
    # turn every call into a 401 and the run would test nothing behind authentication.
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in CREDENTIAL_HEADERS}
    case.cookies = {}
    response = case.call_and_validate(headers=credentials[who], checks=CHECKS)
    assert response.status_code != 401, response.text
