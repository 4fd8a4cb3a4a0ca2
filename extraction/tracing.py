"""Export finished extraction runs to Langfuse: one trace per run, one generation per model call.

The run is exported after the fact from its CallRecords (the same rows the app stores), so the gateway
stays free of tracing code and a Langfuse outage can never fail an extraction: `export_run` swallows
every error, logs a warning and returns False. Without all three settings nothing is imported, no client
is created and nothing is sent.

FINDINGS ABOUT LANGFUSE 5.0.4 (read from the installed SDK; checked by tests/core/test_tracing.py)
Wire format:
- The SDK is OpenTelemetry-based. Spans go to ``POST {host}/api/public/otel/v1/traces`` as OTLP/HTTP
  protobuf (``Content-Type: application/x-protobuf``), gzip-compressed by default
  (``Content-Encoding: gzip``; ``otel_compression="none"`` or LANGFUSE_OTEL_COMPRESSION turn it off),
  with ``Authorization: Basic base64(public:secret)`` and ``x-langfuse-public-key``,
  ``x-langfuse-sdk-name``, ``x-langfuse-sdk-version``, ``x-langfuse-ingestion-version: 4`` headers.
  Plain traces need no other endpoint: scores go to /api/public/scores and media (base64 data URIs in
  input/output) to /api/public/media, both from background threads, and neither is used here.
- There is no trace object any more: trace fields are attributes on the spans (``langfuse.trace.name``,
  ``langfuse.trace.tags``, ``langfuse.trace.metadata.<key>``, ``session.id``), set for a whole subtree
  with ``propagate_attributes(...)``. Metadata values are JSON-encoded (``"42"`` arrives as ``'"42"'``)
  and propagated ones must stay within 200 characters. Generation fields are ``langfuse.observation.*``
  attributes (model.name, usage_details and cost_details as JSON, level, status_message, input, output).
- Timestamps: ``start_observation()`` has no start time (it is always "now"); ``end(end_time=ns)`` takes
  one. To record the real call times the spans are started on the client's OpenTelemetry tracer
  (``client._otel_tracer.start_span(start_time=...)``) and wrapped in the SDK's public
  ``LangfuseSpan``/``LangfuseGeneration``, which set the Langfuse attributes.
- ``Langfuse.create_trace_id(seed=...)`` is ``sha256(seed)[:16].hex()``; `trace_id_for` reproduces it so
  the app can link a run to its trace without importing the SDK.
Global state and isolation:
- ``Langfuse(...)`` is a per-public-key singleton (``LangfuseResourceManager._instances``): a second
  client with the same public key silently reuses the first one's host, secret and tracer, and
  ``shutdown()`` does not forget it. So a change of host or secret under the same public key is handled
  here by shutting the old client down and dropping it from that registry (private, guarded).
- Without ``tracer_provider=`` the SDK registers its own TracerProvider as the process-global one (once;
  later clients add their processors to it), so every OpenTelemetry span of the process would pass
  through Langfuse's processor. Each client here gets its own TracerProvider instead: the global one
  is never touched, other instrumentation is never exported to Langfuse, and our spans never reach
  another exporter. That provider's id generator also lets the root span take the trace id derived
  from the run id without a fake remote parent.
- The OpenTelemetry *context* is still process-wide: the run is built under a context with no active
  span, so it never nests under (or writes attributes onto) a span that happens to be current.
Time bounds:
- ``timeout`` (int seconds, default 5) bounds each OTLP export: the exporter retries connection errors
  and 429/502/503/504 with backoff but stops at that deadline. ``BatchSpanProcessor.force_flush``
  ignores its own timeout and just runs the export, so a flush takes at most about ``timeout`` (twice
  that if the background worker is exporting at the same moment). ``Langfuse.flush()`` would also wait
  for the score and media queues without a bound, so the provider is flushed directly.
- A failed delivery is logged by the OpenTelemetry exporter, not raised nor returned: `export_run`
  returns True once the trace was built and the flush ran, whatever the server answered.
- Private SDK names used (re-check them on upgrade): ``Langfuse._otel_tracer``,
  ``Langfuse._resources.tracer_provider``, ``LangfuseResourceManager._instances`` and ``._lock``.
- Settings the SDK still reads from the environment: LANGFUSE_TRACING_ENABLED=false (then nothing is
  recorded and `export_run` returns False), LANGFUSE_TRACING_ENVIRONMENT, LANGFUSE_RELEASE,
  LANGFUSE_OTEL_COMPRESSION, LANGFUSE_OTEL_TRACES_EXPORT_PATH, LANGFUSE_MEDIA_UPLOAD_ENABLED and the
  OTEL_* sampler variables. LANGFUSE_BASE_URL would override the host, so it is passed explicitly.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .redaction import redact

if TYPE_CHECKING:
    from langfuse import Langfuse
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from .gateway import CallRecord

log = logging.getLogger(__name__)

TRACE_NAME = "extraction"
DEFAULT_TIMEOUT_S = 3
_FAILED_STATUSES = frozenset({"failed", "abandoned", "error"})
_STATUS_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class LangfuseSettings:
    """Where to send traces; tracing is on only when all three are set."""

    public_key: str
    secret_key: str
    host: str
    timeout_s: int = DEFAULT_TIMEOUT_S  # bounds each export, so a dead host stalls a worker this long at most

    @property
    def enabled(self) -> bool:
        return bool(self.public_key.strip() and self.secret_key.strip() and self.host.strip())

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LangfuseSettings:
        """Read LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY and LANGFUSE_HOST (or LANGFUSE_BASE_URL)."""
        return cls(
            public_key=environ.get("LANGFUSE_PUBLIC_KEY", ""),
            secret_key=environ.get("LANGFUSE_SECRET_KEY", ""),
            host=environ.get("LANGFUSE_HOST", "") or environ.get("LANGFUSE_BASE_URL", ""),
        )


def trace_id_for(run_id: int | str) -> str:
    """Return the Langfuse trace id of a run: 32 hex chars, the same as Langfuse.create_trace_id(seed=...)."""
    return hashlib.sha256(_seed(run_id).encode("utf-8")).digest()[:16].hex()


def _seed(run_id: int | str) -> str:
    return f"reviewapp-run-{run_id}"


# --- clients ---------------------------------------------------------------------------------------------

# The trace id the next root span must take; set only around its creation (a ContextVar, so concurrent
# exports in other threads keep their own).
_forced_trace_id: ContextVar[int | None] = ContextVar("langfuse_forced_trace_id", default=None)


def _id_generator() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunTraceIdGenerator(RandomIdGenerator):
        """Give a root span the run's trace id when one is forced, a random one otherwise."""

        def generate_trace_id(self) -> int:
            forced = _forced_trace_id.get()
            return forced if forced is not None else super().generate_trace_id()

    return RunTraceIdGenerator()


@dataclass
class _Exporter:
    client: Langfuse
    tracer: Tracer
    provider: TracerProvider | None  # None when the SDK handed back another client's resources


_lock = threading.Lock()
_exporters: dict[LangfuseSettings, _Exporter] = {}


def _exporter_for(settings: LangfuseSettings) -> _Exporter:
    with _lock:
        exporter = _exporters.get(settings)
        if exporter is not None:
            return exporter
        # The SDK keeps one client per public key: an older one with another host or secret would be
        # handed back to us, so retire it first.
        for old in [s for s in _exporters if s.public_key == settings.public_key]:
            _retire(old)
        exporter = _exporters[settings] = _build(settings)
        return exporter


def _build(settings: LangfuseSettings) -> _Exporter:
    from langfuse import Langfuse
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(id_generator=_id_generator())
    client = Langfuse(
        public_key=settings.public_key.strip(),
        secret_key=settings.secret_key.strip(),
        base_url=settings.host.strip().rstrip("/"),  # the SDK appends "/api/public/..." as is
        timeout=max(1, int(settings.timeout_s)),
        tracer_provider=provider,
        media_upload_thread_count=1,
    )
    used = getattr(getattr(client, "_resources", None), "tracer_provider", None)
    if used is not provider:
        if used is not None:
            # Someone else made a client for this key first (get_client(), an integration): the SDK
            # hands its resources back and ignores ours. Flushing that client is all we can do.
            log.warning(
                "another Langfuse client for public key %s already exists in this process: its host, "
                "timeout and tracer apply to the run traces",
                settings.public_key,
            )
        # (None: tracing is disabled, the tracer is a no-op and nothing will be flushed.)
        provider.shutdown()
        return _Exporter(client=client, tracer=client._otel_tracer, provider=None)
    return _Exporter(client=client, tracer=client._otel_tracer, provider=provider)


def _retire(settings: LangfuseSettings) -> None:
    exporter = _exporters.pop(settings, None)
    if exporter is None:
        return
    try:
        exporter.client.shutdown()
        if exporter.provider is not None:
            exporter.provider.shutdown()
        from langfuse._client.resource_manager import LangfuseResourceManager

        with LangfuseResourceManager._lock:
            LangfuseResourceManager._instances.pop(settings.public_key.strip(), None)
    except Exception as exc:
        log.warning("could not shut down the Langfuse client for %s: %s", settings.host, exc)


def shutdown() -> None:
    """Flush and close every Langfuse client this module created (tests, process shutdown)."""
    with _lock:
        for settings in list(_exporters):
            _retire(settings)


# --- export ----------------------------------------------------------------------------------------------


def export_run(
    settings: LangfuseSettings,
    *,
    run_id: int | str,
    document_id: int | str,
    workspace: str,
    document_type: str,
    prompt_version: str,
    status: str,
    calls: Sequence[CallRecord],
    started_at: float,
    finished_at: float,
    error: str | None = None,
    redact_pii: bool = False,
) -> bool:
    """Send one run to Langfuse as a trace with a generation per call, and flush it.

    Return True once the trace was handed over and flushed, False when tracing is off or anything
    failed. Never raise: exporting must not fail an extraction. `started_at`/`finished_at` and each
    call's `started_at` are epoch seconds. With `redact_pii` the prompts and answers are redacted as the
    workspace's stored prompts are.
    """
    if not settings.enabled:
        return False
    try:
        exporter = _exporter_for(settings)
        sent = _emit(
            exporter,
            run_id=run_id,
            document_id=document_id,
            workspace=workspace,
            document_type=document_type,
            prompt_version=prompt_version,
            status=status,
            calls=calls,
            started_at=started_at,
            finished_at=finished_at,
            error=error,
            redact_pii=redact_pii,
        )
        if not sent:
            log.info("Langfuse tracing is disabled or sampled the run out: run %s not exported", run_id)
            return False
        if exporter.provider is not None:
            return bool(exporter.provider.force_flush())
        exporter.client.flush()
        return True
    except Exception as exc:
        log.warning("could not export run %s to Langfuse at %s: %s", run_id, settings.host, exc)
        return False


def _emit(
    exporter: _Exporter,
    *,
    run_id: int | str,
    document_id: int | str,
    workspace: str,
    document_type: str,
    prompt_version: str,
    status: str,
    calls: Sequence[CallRecord],
    started_at: float,
    finished_at: float,
    error: str | None,
    redact_pii: bool,
) -> bool:
    from langfuse import LangfuseGeneration, LangfuseSpan, propagate_attributes
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace

    client, tracer = exporter.client, exporter.tracer
    ends = [c.started_at + c.latency_ms / 1000 for c in calls if c.started_at]
    run_start = min([started_at, *(c.started_at for c in calls if c.started_at)])
    run_end = max([finished_at, *ends])
    failed = bool(error) or status in _FAILED_STATUSES

    # Start from a context without a current span: the run is a trace of its own, whatever span the
    # worker happens to be in, and propagate_attributes must not write onto that span.
    token = otel_context.attach(otel_trace.set_span_in_context(otel_trace.INVALID_SPAN))
    try:
        with propagate_attributes(
            trace_name=TRACE_NAME,
            session_id=f"document-{document_id}",  # groups the runs (re-extractions) of one document
            tags=[prompt_version] if prompt_version else None,
            version=prompt_version or None,
            metadata=_drop_none(
                {
                    "run_id": str(run_id),
                    "document_id": str(document_id),
                    "workspace": workspace,
                    "document_type": document_type,
                    "status": status,
                }
            ),
        ):
            forced = _forced_trace_id.set(int(trace_id_for(run_id), 16))
            try:
                root_span = tracer.start_span(TRACE_NAME, start_time=_ns(run_start))
            finally:
                _forced_trace_id.reset(forced)
            if not root_span.is_recording():
                return False
            root = LangfuseSpan(
                otel_span=root_span,
                langfuse_client=client,
                input={"document_id": str(document_id), "document_type": document_type},
                output=_drop_none(
                    {
                        "status": status,
                        "error": error,
                        "calls": len(calls),
                        "prompt_tokens": sum(c.prompt_tokens for c in calls),
                        "completion_tokens": sum(c.completion_tokens for c in calls),
                        "cost_usd": round(sum(c.cost_usd for c in calls), 6),
                    }
                ),
                level="ERROR" if failed else None,
                status_message=(error or status)[:_STATUS_MESSAGE_CHARS] if failed else None,
            )
            parent = otel_trace.set_span_in_context(root_span)
            for call in calls:
                start = call.started_at or run_start
                span = tracer.start_span(call.step or "call", context=parent, start_time=_ns(start))
                generation = LangfuseGeneration(
                    otel_span=span, langfuse_client=client, **_generation(call, redact_pii)
                )
                # Integer nanoseconds keep end - start equal to the latency; float seconds would not.
                generation.end(end_time=_ns(start) + call.latency_ms * 1_000_000)
            root.end(end_time=_ns(run_end))
    finally:
        otel_context.detach(token)
    return True


def _generation(call: CallRecord, redact_pii: bool) -> dict[str, Any]:
    """Map a CallRecord onto LangfuseGeneration's arguments."""
    level: str | None = None
    status_message: str | None = None
    if call.error_class:
        level = "ERROR"
        status_message = f"{call.error_class}: {call.error_message}"[:_STATUS_MESSAGE_CHARS]
    elif call.parse_status == "failed":
        level = "WARNING"  # the model answered, but the answer could not be validated
        status_message = "the answer could not be parsed"
    usage: dict[str, int] | None = None
    if call.prompt_tokens or call.completion_tokens:
        # Langfuse's own usage keys: cost inference and the dashboards read input/output/total.
        usage = {
            "input": call.prompt_tokens,
            "output": call.completion_tokens,
            "total": call.prompt_tokens + call.completion_tokens,
        }
        if call.cached_tokens:
            usage["input_cached_tokens"] = call.cached_tokens
    # A zero cost means litellm knew no price: send none and let Langfuse infer it from the model.
    cost = {"total": call.cost_usd} if call.cost_usd > 0 else None
    completion_start = (
        datetime.fromtimestamp(call.started_at + call.ttft_ms / 1000, tz=UTC)
        if call.ttft_ms is not None and call.started_at
        else None
    )
    return {
        "input": _messages(call.messages, redact_pii),
        "output": (redact(call.raw_response) if redact_pii else call.raw_response) or None,
        "model": call.model_answered or call.model_requested or None,
        "version": call.prompt_version or None,
        "level": level,
        "status_message": status_message,
        "usage_details": usage,
        "cost_details": cost,
        "completion_start_time": completion_start,
        "metadata": _drop_none(
            {
                "attempt": call.attempt,
                "chunk": call.chunk,
                "model_alias": call.model_alias or None,
                "model_requested": call.model_requested or None,
                "output_mode": call.output_mode or None,
                "parse_status": call.parse_status or None,
                "repairs": list(call.repairs) or None,
                "ttft_ms": call.ttft_ms,
                "latency_ms": call.latency_ms,
                "near_limit": call.near_limit or None,
                "error_class": call.error_class or None,
            }
        ),
    }


def _messages(messages: list[dict[str, Any]], redact_pii: bool) -> list[dict[str, Any]]:
    if not redact_pii:
        return messages
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            content = redact(content)
        elif isinstance(content, list):  # multimodal parts: redact the text ones
            content = [
                {**p, "text": redact(p["text"])}
                if isinstance(p, dict) and isinstance(p.get("text"), str)
                else p
                for p in content
            ]
        out.append({**message, "content": content})
    return out


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _ns(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1_000_000_000)
