"""The test cast and the scripted model server.

Cast (as in healthchecks' hc/test.py): `reviewer` and `admin` belong to `workspace`; `outsider` belongs to
`other_workspace` only. Model calls go to the scripted OpenAI-compatible server on 127.0.0.1 through the
real litellm; the offline model is the default elsewhere.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client

from reviewapp import demo
from reviewapp import llm as app_llm
from reviewapp.celery import app as celery_app
from reviewapp.models import DocumentType, Membership, Workspace
from tests.llmserver import ScriptedLLMServer, start_server


@pytest.fixture(scope="session")
def llm_server() -> Iterator[ScriptedLLMServer]:
    server = start_server()
    yield server
    server.stop()


@pytest.fixture
def llm(llm_server: ScriptedLLMServer) -> Iterator[ScriptedLLMServer]:
    """The scripted server, clean for this test."""
    llm_server.reset()
    yield llm_server
    llm_server.reset()


def server_config(
    base_url: str,
    *,
    retries: int = 2,
    extract: str = "primary",
    fallbacks: list[str] | None = None,
    classify: str = "offline",
    verify: str = "offline",
    **settings: Any,
) -> dict[str, Any]:
    """Return an LLM config dict whose models `primary` and `secondary` live on the scripted server."""

    def model(alias: str, name: str) -> dict[str, Any]:
        return {
            "model_name": alias,
            "litellm_params": {"model": f"openai/{name}", "api_base": base_url, "api_key": "sk-test"},
            "model_info": {"max_input_tokens": 16000, "max_output_tokens": 1000, "pinned": True},
        }

    fallbacks = ["secondary"] if fallbacks is None else fallbacks
    return {
        "model_list": [
            model("primary", "primary-model"),
            model("secondary", "secondary-model"),
            {"model_name": "offline", "litellm_params": {"model": "reviewapp/heuristic-v1"}},
        ],
        "tasks": {
            "classify": {"model": classify, "retries": 0},
            "extract": {"model": extract, "fallbacks": fallbacks, "retries": retries, "timeout": 5},
            "verify": {"model": verify, "retries": 0},
        },
        "settings": {"backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05, **settings},
    }


@pytest.fixture
def llm_config_file(tmp_path: Path, llm: ScriptedLLMServer, settings: Any) -> Iterator[Any]:
    """Point the app at the scripted server; call the returned function to rewrite the config."""
    path = tmp_path / "llm.yaml"

    def write(**kwargs: Any) -> Path:
        path.write_text(yaml.safe_dump(server_config(llm.base_url, **kwargs)))
        settings.REVIEWAPP_LLM_CONFIG = str(path)
        app_llm.reset()
        return path

    write()
    yield write
    app_llm.reset()


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    """Every test starts with an empty cache: the queue's counts and filter options, the drift banner and the
    API's throttle buckets are kept there."""
    cache.clear()


def client_for(user: Any, *, csrf: bool = False) -> Client:
    """A browser session logged in as `user` (`csrf`: enforce the CSRF checks, as a real browser meets them)."""
    c = Client(enforce_csrf_checks=csrf)
    c.force_login(user)
    return c


@pytest.fixture(autouse=True)
def _eager_celery(settings: Any) -> Iterator[None]:
    """Run queued tasks inline when the transaction commits (the real-worker test turns this off)."""
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = False
    settings.REVIEWAPP_LLM_CONFIG = ""
    settings.REVIEWAPP_REDIS_URL = ""
    settings.REVIEWAPP_INPROCESS_WORKER = False
    app_llm.reset()
    yield
    app_llm.reset()


@pytest.fixture
def workspace(db: Any) -> Workspace:
    return Workspace.objects.create(name="Acme", slug="acme")


@pytest.fixture
def other_workspace(db: Any) -> Workspace:
    return Workspace.objects.create(name="Globex", slug="globex")


def _user(username: str, workspace: Workspace | None, role: str = "reviewer", **extra: Any) -> Any:
    user = get_user_model().objects.create_user(
        username=username, password="pw-" + username + "-123", **extra
    )
    if workspace is not None:
        Membership.objects.create(user=user, workspace=workspace, role=role)
    return user


@pytest.fixture
def reviewer(workspace: Workspace) -> Any:
    return _user("rita", workspace)


@pytest.fixture
def second_reviewer(workspace: Workspace) -> Any:
    return _user("sam", workspace)


@pytest.fixture
def admin_user(workspace: Workspace) -> Any:
    return _user("ada", workspace, role="admin", is_staff=True, is_superuser=True)


@pytest.fixture
def outsider(other_workspace: Workspace) -> Any:
    return _user("olga", other_workspace)


@pytest.fixture
def receipt_type(db: Any) -> DocumentType:
    return demo.ensure_type("receipt", demo.TYPES["receipt"])


@pytest.fixture
def invoice_type(db: Any) -> DocumentType:
    return demo.ensure_type("invoice", demo.TYPES["invoice"])


RECEIPT = """SUPER SAVE MART SDN BHD
(Co. Reg. 123456-X)
No. 12, Jalan Bukit Bintang,
55100 Kuala Lumpur
Date: 12/03/2024  Time: 14:22
Cashier: AMY
------------------------------
Milo 1kg            RM 18.90
Bread               RM  4.20
------------------------------
TOTAL               RM 23.10
CASH                RM 50.00
CHANGE              RM 26.90
Thank you, please come again
"""


@pytest.fixture
def make_document(
    workspace: Workspace, receipt_type: DocumentType, django_capture_on_commit_callbacks: Any
) -> Any:
    """Create a document through the service; its extraction runs (eagerly) on commit."""
    from reviewapp import services

    def make(
        text: str = RECEIPT,
        *,
        ws: Workspace | None = None,
        doc_type: DocumentType | None = None,
        filename: str = "receipt.txt",
    ) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            created = services.document_create(
                workspace=ws or workspace,
                document_type=doc_type or receipt_type,
                user=None,
                data=text.encode(),
                filename=filename,
            )
        created.document.refresh_from_db()
        return created.document

    return make


@pytest.fixture
def redis_url() -> str:
    """The test Redis (CELERY_BROKER_URL); tests that need a real Redis skip without one."""
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith("redis://"):
        pytest.skip("needs Redis (make test sets CELERY_BROKER_URL=redis://…)")
    return url
