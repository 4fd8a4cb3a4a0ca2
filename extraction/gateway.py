"""The one module that calls models: litellm's Router, wrapped in retries, fallbacks and a circuit breaker.

Why not the Router's own retries and fallbacks: every attempt must become a traced call (failed ones
too) and feed the breaker, so the loop lives here and each Router call is a single attempt
(`num_retries=0`). The Router still resolves aliases to deployments and load-balances. A deployment's
`rpm` is enforced here, across all workers (extraction/ratelimit.py): a call waits for a slot, and goes to
the next fallback if the wait would be longer than the route's timeout.

Per attempt: breaker check -> context-window check -> one call. Retryable errors (429, 5xx, timeouts,
connection errors) back off exponentially with full jitter, at least as long as the provider's
Retry-After says, up to `retries` times; then the next fallback alias is tried. Non-retryable errors
(bad request, auth, not found) go straight to the next fallback.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import litellm
import openai
from litellm import Router

from . import providers
from .breaker import CircuitBreaker, MemoryStore
from .config import LLMConfig, ModelEntry
from .parsing import storable
from .ratelimit import MemoryRates, RateLimiter

log = logging.getLogger(__name__)

litellm.suppress_debug_info = True
litellm.drop_params = True  # a fallback model may not accept every parameter (e.g. response_format)
providers.register()

RETRYABLE = (
    litellm.RateLimitError,
    litellm.Timeout,
    litellm.APIConnectionError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
    litellm.BadGatewayError,
)


@dataclass
class CallRecord:
    """Everything stored about one model call (an LLMCall row)."""

    step: str
    attempt: int = 1
    chunk: int | None = None
    prompt_version: str = ""
    model_alias: str = ""
    model_requested: str = ""
    model_answered: str = ""
    output_mode: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    raw_response: str = ""
    parse_status: str = ""
    repairs: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: int = 0
    ttft_ms: int | None = None
    near_limit: bool = False
    error_class: str = ""
    error_message: str = ""
    started_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trace:
    """Collects the call records of one run and hands each to `on_call` as soon as it is final."""

    def __init__(self, on_call: Callable[[CallRecord], None] | None = None) -> None:
        self.calls: list[CallRecord] = []
        self._on_call = on_call

    def add(self, record: CallRecord) -> None:
        self.calls.append(record)
        if self._on_call is not None:
            self._on_call(record)

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.calls)

    @property
    def cached_tokens(self) -> int:
        return sum(c.cached_tokens for c in self.calls)

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)


class GatewayError(Exception):
    """Every route of a task failed. `code` is stable and machine-readable."""

    def __init__(self, message: str, *, code: str = "all_routes_failed", retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass
class Completion:
    text: str
    record: CallRecord
    alias: str


def _retry_after(exc: BaseException) -> float | None:
    """Return the provider's Retry-After in seconds, if the error carries one."""
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name in ("retry-after-ms", "Retry-After-Ms"):
        if headers.get(name):
            try:
                return float(headers.get(name)) / 1000.0
            except (TypeError, ValueError):
                pass
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: ignore, the backoff still applies


_MAX_TOKENS = 2**31 - 1  # no model's window comes near it; beyond it the count is a provider's bug


def _count(value: Any) -> int:
    """A token count as reported by the provider, or 0 if it is not a usable one (negative, not a number)."""
    try:
        n = int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0
    return n if 0 <= n <= _MAX_TOKENS else 0


def _usage(response: Any) -> tuple[int, int, int]:
    usage = getattr(response, "usage", None)
    if usage is None:
        return 0, 0, 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) if details is not None else 0
    return _count(usage.prompt_tokens), _count(usage.completion_tokens), _count(cached)


class Gateway:
    def __init__(
        self,
        config: LLMConfig,
        *,
        environment: str = "default",
        breaker: CircuitBreaker | None = None,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.environment = environment
        s = config.settings
        self.breaker = breaker or CircuitBreaker(
            MemoryStore(),
            failure_threshold=s.breaker.failure_threshold,
            cooldown_seconds=s.breaker.cooldown_seconds,
        )
        self.limiter = limiter or RateLimiter(MemoryRates())
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._router: Router | None = None

    @property
    def router(self) -> Router:
        if self._router is None:
            self._router = Router(
                model_list=[m.model_dump(exclude_none=True) for m in self.config.model_list],
                num_retries=0,
                disable_cooldowns=True,  # the breaker below decides when a model is rested
            )
        return self._router

    # --- model facts -----------------------------------------------------------------------------------
    def _entry(self, alias: str) -> ModelEntry:
        return self.config.entry(alias)

    def _info(self, alias: str) -> dict[str, Any]:
        entry = self._entry(alias)
        info: dict[str, Any] = {}
        try:
            info = dict(litellm.get_model_info(entry.model) or {})
        except Exception:
            info = {}
        info.update(entry.model_info)
        return info

    def limits(self, alias: str) -> tuple[int, int]:
        """Return (max input tokens, max output tokens) of `alias`."""
        info = self._info(alias)
        s = self.config.settings
        max_in = int(info.get("max_input_tokens") or info.get("max_tokens") or s.default_max_input_tokens)
        max_out = int(info.get("max_output_tokens") or s.default_max_output_tokens)
        return max_in, max_out

    def output_mode(self, alias: str) -> str:
        """Return how to ask `alias` for JSON: json_schema, json_object, or prompt only."""
        info = self._entry(alias).model_info
        if info.get("output_mode"):
            return str(info["output_mode"])
        model = self._entry(alias).model
        try:
            if info.get("supports_response_schema") or litellm.supports_response_schema(model=model):
                return "json_schema"
            if "response_format" in (litellm.get_supported_openai_params(model=model) or []):
                return "json_object"
        except Exception:
            log.debug("no capability data for %s", model)
        return "prompt"

    def count_tokens(self, alias: str, messages: list[dict[str, Any]]) -> int:
        """Count the prompt's tokens with litellm's counter for the model (a rough count if it can't)."""
        try:
            return int(litellm.token_counter(model=self._entry(alias).model, messages=messages))
        except Exception:
            return sum(len(str(m.get("content", ""))) for m in messages) // 4 + 4 * len(messages)

    def input_budget(self, task: str) -> int:
        """Return the prompt tokens every model of the task's route can take, output reserved."""
        route = self.config.route(task, self.environment)
        budgets = []
        for alias in route.aliases:
            max_in, max_out = self.limits(alias)
            reserve = min(route.max_output_tokens or max_out, max_out)
            budgets.append(max(256, max_in - reserve))
        return min(budgets)

    def pinned_model(self, task: str) -> str:
        return self._entry(self.config.route(task, self.environment).model).model

    # --- the call ----------------------------------------------------------------------------------------
    def _backoff(self, retry: int, retry_after: float | None) -> float:
        s = self.config.settings
        delay = self._rng.uniform(0, min(s.backoff_max_seconds, s.backoff_base_seconds * (2**retry)))
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max_seconds))
        return delay

    def complete(
        self,
        *,
        task: str,
        messages: list[dict[str, Any]],
        trace: Trace,
        prompt_version: str = "",
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "answer",
        attempt: int = 1,
        chunk: int | None = None,
        aliases: list[str] | None = None,
    ) -> Completion:
        """Call the task's model (then its fallbacks) until one answers; trace every attempt.

        Raise GatewayError when every route failed. The successful call's record is returned, not yet
        added to the trace: the caller adds it once it knows whether the answer parsed.
        """
        route = self.config.route(task, self.environment)
        errors: list[str] = []
        for alias in aliases or route.aliases:
            if not self.breaker.allow(alias):
                errors.append(f"{alias}: circuit open")
                trace.add(
                    self._record(
                        task,
                        alias,
                        messages,
                        prompt_version,
                        attempt,
                        chunk,
                        error=("CircuitOpen", "circuit breaker open; call not sent"),
                    )
                )
                continue
            for retry in range(route.retries + 1):
                if not self._take_slot(alias, route.timeout):
                    errors.append(f"{alias}: over its requests-per-minute limit")
                    trace.add(
                        self._record(task, alias, messages, prompt_version, attempt, chunk,
                                     error=("RateLimited", "over the deployment's rpm limit; call not sent"))
                    )  # fmt: skip
                    break
                record = self._record(task, alias, messages, prompt_version, attempt, chunk)
                try:
                    text = self._call_once(alias, route, messages, record, json_schema, schema_name)
                except litellm.ContextWindowExceededError as exc:
                    self._fail(record, exc, trace)
                    errors.append(f"{alias}: context window exceeded")
                    break  # the provider disagrees with our count: a fallback may have a bigger window
                except RETRYABLE as exc:
                    self._fail(record, exc, trace)
                    state = self.breaker.record_failure(alias)
                    errors.append(f"{alias}: {type(exc).__name__}")
                    if state.state != "closed" or retry == route.retries:
                        break
                    self._sleep(self._backoff(retry, _retry_after(exc)))
                except (openai.APIError, ValueError) as exc:
                    # Not retryable with the same model (bad request, auth, not found, 403): try the next one.
                    # openai.APIError is the root of every litellm error class (litellm's 500 is not a
                    # litellm.APIError).
                    self._fail(record, exc, trace)
                    errors.append(f"{alias}: {type(exc).__name__}: {str(exc)[:200]}")
                    break
                else:
                    self.breaker.record_success(alias)
                    return Completion(text=text, record=record, alias=alias)
        raise GatewayError(f"every model for {task} failed: " + "; ".join(errors), retryable=True)

    def _take_slot(self, alias: str, max_wait: float) -> bool:
        """Wait for a slot under the alias's `rpm` (if it has one); False if that would take over max_wait."""
        rpm = self._entry(alias).litellm_params.get("rpm")
        if not rpm:
            return True
        deadline = time.monotonic() + max_wait
        while (wait := self.limiter.acquire(alias, float(rpm))) > 0:
            if time.monotonic() + wait > deadline:
                return False
            self._sleep(wait)
        return True

    def _record(
        self,
        task: str,
        alias: str,
        messages: list[dict[str, Any]],
        prompt_version: str,
        attempt: int,
        chunk: int | None,
        error: tuple[str, str] | None = None,
    ) -> CallRecord:
        rec = CallRecord(
            step=task,
            attempt=attempt,
            chunk=chunk,
            prompt_version=prompt_version,
            model_alias=alias,
            model_requested=self._entry(alias).model,
            messages=messages,
            started_at=time.time(),
        )
        if error:
            rec.error_class, rec.error_message = error
            rec.parse_status = "not_sent"
        return rec

    def _fail(self, record: CallRecord, exc: BaseException, trace: Trace) -> None:
        record.latency_ms = int((time.time() - record.started_at) * 1000)
        record.error_class = type(exc).__name__
        record.error_message = storable(str(exc)[:4000])
        raw = getattr(getattr(exc, "response", None), "text", None)
        if isinstance(raw, str):
            record.raw_response = storable(raw[:20000])
        trace.add(record)

    def _call_once(
        self,
        alias: str,
        route: Any,
        messages: list[dict[str, Any]],
        record: CallRecord,
        json_schema: dict[str, Any] | None,
        schema_name: str,
    ) -> str:
        max_in, max_out = self.limits(alias)
        prompt_tokens = self.count_tokens(alias, messages)
        out_tokens = min(route.max_output_tokens or max_out, max_out)
        if prompt_tokens + out_tokens > max_in:
            raise litellm.ContextWindowExceededError(
                message=f"prompt has {prompt_tokens} tokens; {alias} takes {max_in} including {out_tokens} for output",
                model=record.model_requested,
                llm_provider="reviewapp",
            )
        mode = self.output_mode(alias)
        record.output_mode = mode
        kwargs: dict[str, Any] = {"timeout": route.timeout, "num_retries": 0, "max_tokens": out_tokens}
        if route.temperature is not None:
            kwargs["temperature"] = route.temperature
        if json_schema is not None and mode == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": json_schema, "strict": False},
            }
        elif json_schema is not None and mode == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        start = time.perf_counter()
        if route.stream:
            text, response = self._stream(alias, messages, kwargs, record, start)
        else:
            response = self.router.completion(model=alias, messages=messages, **kwargs)
            text = response.choices[0].message.content or ""
        # A reply with NUL or a lone surrogate is still stored (and parsed), not lost. (Anything but text is
        # reported by the parser as not text.)
        if isinstance(text, str):
            text = storable(text)
        record.latency_ms = int((time.perf_counter() - start) * 1000)
        record.raw_response = text
        # What the provider says it ran, cut like any other provider text we keep (the run stores it too).
        record.model_answered = storable(str(getattr(response, "model", "") or record.model_requested))[:200]
        record.prompt_tokens, record.completion_tokens, record.cached_tokens = _usage(response)
        if not record.prompt_tokens:
            record.prompt_tokens = prompt_tokens
        record.cost_usd = self._cost(response)
        ratio = self.config.settings.near_limit_ratio
        record.near_limit = (
            record.prompt_tokens >= ratio * max_in or record.completion_tokens >= ratio * out_tokens
        )
        return text

    def _stream(
        self,
        alias: str,
        messages: list[dict[str, Any]],
        kwargs: dict[str, Any],
        record: CallRecord,
        start: float,
    ) -> tuple[str, Any]:
        chunks = []
        parts: list[str] = []
        stream = self.router.completion(
            model=alias, messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
        )
        for chunk in stream:
            chunks.append(chunk)
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                if record.ttft_ms is None:
                    record.ttft_ms = int((time.perf_counter() - start) * 1000)
                parts.append(delta)
        response = litellm.stream_chunk_builder(chunks, messages=messages)
        return "".join(parts), response

    @staticmethod
    def _cost(response: Any) -> float:
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=response)
            except Exception:
                cost = 0.0
        return float(cost or 0.0)
