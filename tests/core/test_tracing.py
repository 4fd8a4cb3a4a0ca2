"""Langfuse export against a local OTLP/HTTP receiver: the real SDK and exporter, nothing mocked."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from extraction import tracing
from extraction.gateway import CallRecord
from extraction.tracing import LangfuseSettings, export_run, trace_id_for

TRACES_PATH = "/api/public/otel/v1/traces"
T0 = 1_700_000_000.0  # the run's start, epoch seconds: far from "now", so export-time stamps would show


# --- the receiver ----------------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    spans: list[dict[str, Any]] = field(default_factory=list)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _decode_spans(body: bytes, headers: dict[str, str]) -> list[dict[str, Any]]:
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    {
                        "name": s.name,
                        "scope": scope_spans.scope.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "status_code": s.status.code,
                        "attributes": {a.key: _value(a.value) for a in s.attributes},
                    }
                )
    return spans


class OTLPReceiver:
    """Record every request; answer OTLP trace exports, and Langfuse's other endpoints plausibly."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                got = Received(self.command, self.path, headers, body)
                receiver.requests.append(got)
                if self.command == "POST" and self.path == TRACES_PATH:
                    got.spans = _decode_spans(body, headers)
                    self._answer(
                        200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
                    )
                elif self.path.startswith("/api/public/ingestion"):
                    self._answer(
                        207, json.dumps({"successes": [], "errors": []}).encode(), "application/json"
                    )
                elif self.command == "POST" and self.path == "/api/public/media":
                    upload = f"http://127.0.0.1:{receiver.port}/upload/m1"
                    self._answer(
                        200, json.dumps({"uploadUrl": upload, "mediaId": "m1"}).encode(), "application/json"
                    )
                else:
                    self._answer(200, b"{}", "application/json")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def spans(self) -> list[dict[str, Any]]:
        return [s for r in self.requests for s in r.spans]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    server = OTLPReceiver()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean_sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Environment the SDK reads on its own must not switch tracing off or reroute it in these tests.
    for name in (
        "LANGFUSE_TRACING_ENABLED",
        "LANGFUSE_SAMPLE_RATE",
        "LANGFUSE_OTEL_TRACES_EXPORT_PATH",
        "LANGFUSE_OTEL_COMPRESSION",
        "LANGFUSE_BASE_URL",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_SAMPLER",
    ):
        monkeypatch.delenv(name, raising=False)
    yield
    tracing.shutdown()


def settings_for(base_url: str, *, public_key: str | None = None, timeout_s: int = 3) -> LangfuseSettings:
    # The SDK keeps one client per public key for the whole process: a fresh key per test keeps them apart.
    return LangfuseSettings(
        public_key=public_key or f"pk-lf-{uuid.uuid4().hex[:12]}",
        secret_key="sk-lf-secret",
        host=base_url,
        timeout_s=timeout_s,
    )


def calls() -> list[CallRecord]:
    return [
        CallRecord(
            step="classify",
            prompt_version="classify v2",
            model_alias="fast",
            model_requested="openai/small-model",
            model_answered="small-model-2024-08-06",
            messages=[{"role": "user", "content": "What is this? Mail jane@example.com"}],
            raw_response='{"is_document": true}',
            parse_status="ok",
            prompt_tokens=120,
            completion_tokens=8,
            cost_usd=0.0004,
            latency_ms=800,
            started_at=T0 + 0.1,
        ),
        CallRecord(
            step="extract",
            attempt=1,
            prompt_version="invoice v3",
            model_alias="primary",
            model_requested="openai/primary-model",
            messages=[{"role": "user", "content": "Extract the fields."}],
            error_class="RateLimitError",
            error_message="429 slow down",
            latency_ms=150,
            started_at=T0 + 1.0,
        ),
        CallRecord(
            step="extract",
            attempt=1,
            chunk=0,
            prompt_version="invoice v3",
            model_alias="backup",
            model_requested="openai/backup-model",
            model_answered="backup-model-2024-08-06",
            messages=[{"role": "user", "content": "Extract the fields."}],
            raw_response='{"fields": {}}',
            parse_status="repaired",
            prompt_tokens=900,
            completion_tokens=60,
            cached_tokens=512,
            cost_usd=0.0031,
            latency_ms=2500,
            ttft_ms=400,
            started_at=T0 + 1.5,
        ),
    ]


def run_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "run_id": 7,
        "document_id": 42,
        "workspace": "acme",
        "document_type": "invoice",
        "prompt_version": "invoice v3",
        "status": "succeeded",
        "calls": calls(),
        "started_at": T0,
        "finished_at": T0 + 4.5,
    }
    kwargs.update(overrides)
    return kwargs


def by_name(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        out.setdefault(s["name"], []).append(s)
    return out


# --- tests -----------------------------------------------------------------------------------------------


def test_a_run_becomes_one_trace_with_a_generation_per_call(receiver: OTLPReceiver) -> None:
    settings = settings_for(receiver.base_url)

    assert export_run(settings, **run_kwargs()) is True

    # Only the OTLP endpoint is used, as protobuf, with the project's keys as basic auth.
    assert {(r.method, r.path) for r in receiver.requests} == {("POST", TRACES_PATH)}
    request = receiver.requests[0]
    token = base64.b64encode(f"{settings.public_key}:sk-lf-secret".encode()).decode()
    assert request.headers["authorization"] == f"Basic {token}"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-langfuse-public-key"] == settings.public_key
    assert request.headers["content-encoding"] == "gzip"  # the SDK's default compression
    assert request.headers["x-langfuse-ingestion-version"] == "4"

    spans = receiver.spans
    assert len(spans) == 4
    assert {s["trace_id"] for s in spans} == {trace_id_for(7)}
    assert {s["scope"] for s in spans} == {"langfuse-sdk"}

    names = by_name(spans)
    (root,) = names["extraction"]
    assert root["parent_span_id"] == ""  # a real root, not the child of a made-up remote parent
    attrs = root["attributes"]
    assert attrs["langfuse.trace.name"] == "extraction"
    assert attrs["langfuse.trace.tags"] == ["invoice v3"]
    assert attrs["session.id"] == "document-42"
    assert json.loads(attrs["langfuse.trace.metadata.document_id"]) == "42"
    assert json.loads(attrs["langfuse.trace.metadata.workspace"]) == "acme"
    assert json.loads(attrs["langfuse.trace.metadata.document_type"]) == "invoice"
    assert json.loads(attrs["langfuse.trace.metadata.run_id"]) == "7"
    assert json.loads(attrs["langfuse.observation.output"])["status"] == "succeeded"
    assert "langfuse.observation.level" not in attrs
    assert root["start"] == int(T0 * 1e9)
    assert root["end"] == int((T0 + 4.5) * 1e9)

    generations = [s for s in spans if s["attributes"].get("langfuse.observation.type") == "generation"]
    assert len(generations) == 3
    for g in generations:
        assert g["parent_span_id"] == root["span_id"]
        # Trace attributes reach every observation, so filters and aggregations see them.
        assert g["attributes"]["langfuse.trace.tags"] == ["invoice v3"]
        assert json.loads(g["attributes"]["langfuse.trace.metadata.document_id"]) == "42"

    (classify,) = names["classify"]
    a = classify["attributes"]
    assert a["langfuse.observation.model.name"] == "small-model-2024-08-06"
    assert json.loads(a["langfuse.observation.usage_details"]) == {"input": 120, "output": 8, "total": 128}
    assert json.loads(a["langfuse.observation.cost_details"]) == {"total": 0.0004}
    assert a["langfuse.version"] == "classify v2"
    assert json.loads(a["langfuse.observation.input"])[0]["content"].endswith("jane@example.com")
    assert a["langfuse.observation.output"] == '{"is_document": true}'
    assert json.loads(a["langfuse.observation.metadata.model_alias"]) == "fast"
    # Real call times, not export times.
    assert classify["start"] == int((T0 + 0.1) * 1e9)
    assert classify["end"] - classify["start"] == 800 * 1_000_000

    failed, retried = sorted(names["extract"], key=lambda s: s["start"])
    f = failed["attributes"]
    assert f["langfuse.observation.level"] == "ERROR"
    assert f["langfuse.observation.status_message"] == "RateLimitError: 429 slow down"
    assert failed["status_code"] == 2  # STATUS_CODE_ERROR
    assert f["langfuse.observation.model.name"] == "openai/primary-model"  # nothing answered
    assert "langfuse.observation.usage_details" not in f

    r = retried["attributes"]
    assert "langfuse.observation.level" not in r
    assert r["langfuse.observation.model.name"] == "backup-model-2024-08-06"
    assert json.loads(r["langfuse.observation.usage_details"]) == {
        "input": 900,
        "output": 60,
        "total": 960,
        "input_cached_tokens": 512,
    }
    assert json.loads(r["langfuse.observation.metadata.attempt"]) == 1
    assert json.loads(r["langfuse.observation.metadata.chunk"]) == 0
    assert json.loads(r["langfuse.observation.metadata.ttft_ms"]) == 400
    assert json.loads(r["langfuse.observation.completion_start_time"]).startswith("2023-11-14T22:13:21.9")


def test_a_failed_run_is_marked_as_an_error(receiver: OTLPReceiver) -> None:
    settings = settings_for(receiver.base_url)

    assert export_run(settings, **run_kwargs(status="failed", error="extract step: all routes failed"))

    (root,) = by_name(receiver.spans)["extraction"]
    assert root["attributes"]["langfuse.observation.level"] == "ERROR"
    assert root["attributes"]["langfuse.observation.status_message"] == "extract step: all routes failed"
    assert json.loads(root["attributes"]["langfuse.trace.metadata.status"]) == "failed"


def test_redaction_applies_to_what_is_exported(receiver: OTLPReceiver) -> None:
    assert export_run(settings_for(receiver.base_url), **run_kwargs(redact_pii=True))

    (classify,) = by_name(receiver.spans)["classify"]
    content = json.loads(classify["attributes"]["langfuse.observation.input"])[0]["content"]
    assert "jane@example.com" not in content
    assert "[EMAIL]" in content


def test_without_keys_nothing_is_sent(receiver: OTLPReceiver) -> None:
    for settings in (
        LangfuseSettings(public_key="", secret_key="", host=""),
        LangfuseSettings(public_key="pk-lf-x", secret_key="", host=receiver.base_url),
        LangfuseSettings(public_key="pk-lf-x", secret_key="sk-lf-x", host=" "),
    ):
        assert not settings.enabled
        assert export_run(settings, **run_kwargs()) is False
        assert settings not in tracing._exporters  # not even a client was made
    time.sleep(0.2)
    assert receiver.requests == []


@pytest.mark.parametrize("behaviour", ["refuses", "never-answers"])
def test_a_dead_host_neither_raises_nor_stalls(behaviour: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if behaviour == "never-answers":
            sock.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        port = sock.getsockname()[1]
        settings = settings_for(f"http://127.0.0.1:{port}", timeout_s=1)
        export_run(settings, **run_kwargs(run_id=100))  # the first export also pays for importing the SDK

        started = time.monotonic()
        result = export_run(settings, **run_kwargs(run_id=101))
        elapsed = time.monotonic() - started

    assert isinstance(result, bool)  # delivery failures are logged by the exporter, not raised
    assert elapsed < 4  # bounded by timeout_s (the exporter's deadline), not by its retry schedule


def test_tracing_switched_off_in_the_environment_sends_nothing(
    receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGFUSE_TRACING_ENABLED", "false")

    assert export_run(settings_for(receiver.base_url), **run_kwargs()) is False

    time.sleep(0.2)
    assert receiver.requests == []


def test_an_existing_client_for_the_same_key_is_used_not_broken(receiver: OTLPReceiver) -> None:
    from langfuse import Langfuse
    from opentelemetry.sdk.trace import TracerProvider

    settings = settings_for(receiver.base_url)
    # Made elsewhere in the process first (get_client(), an integration): the SDK hands it back to us.
    other = Langfuse(
        public_key=settings.public_key,
        secret_key=settings.secret_key,
        base_url=receiver.base_url,
        tracer_provider=TracerProvider(),
    )
    try:
        assert export_run(settings, **run_kwargs()) is True
    finally:
        other.shutdown()

    names = by_name(receiver.spans)
    assert len(names["extraction"]) == 1
    assert len(names["extract"]) == 2


def test_clients_for_different_hosts_stay_apart_and_leave_global_otel_alone() -> None:
    global_provider = otel_trace.get_tracer_provider()
    first, second = OTLPReceiver(), OTLPReceiver()
    try:
        assert export_run(settings_for(first.base_url), **run_kwargs(run_id=1))
        assert export_run(settings_for(second.base_url), **run_kwargs(run_id=2))
        # The same public key moved to another host (the SDK would keep the old host for it).
        key = f"pk-lf-{uuid.uuid4().hex[:12]}"
        assert export_run(settings_for(first.base_url, public_key=key), **run_kwargs(run_id=3))
        assert export_run(settings_for(second.base_url, public_key=key), **run_kwargs(run_id=4))
    finally:
        first.stop()
        second.stop()

    assert {s["trace_id"] for s in first.spans} == {trace_id_for(1), trace_id_for(3)}
    assert {s["trace_id"] for s in second.spans} == {trace_id_for(2), trace_id_for(4)}
    assert otel_trace.get_tracer_provider() is global_provider


def test_an_active_span_elsewhere_does_not_adopt_the_run(receiver: OTLPReceiver) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    outer_tracer = TracerProvider().get_tracer("someone-else")
    with outer_tracer.start_as_current_span("celery-task") as outer:
        assert export_run(settings_for(receiver.base_url), **run_kwargs())
        assert "langfuse.trace.name" not in (outer.attributes or {})

    (root,) = by_name(receiver.spans)["extraction"]
    assert root["parent_span_id"] == ""
    assert root["trace_id"] == trace_id_for(7)


def test_the_trace_id_matches_the_sdk() -> None:
    from langfuse import Langfuse

    assert trace_id_for(7) == Langfuse.create_trace_id(seed="reviewapp-run-7")
    assert len(trace_id_for("abc")) == 32
