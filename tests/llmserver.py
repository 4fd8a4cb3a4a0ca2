"""Serve scripted OpenAI-compatible chat completions so tests drive the real litellm code path.

The tests never mock litellm: they point it at this server (``api_base=server.base_url``,
model ``"openai/<name>"``) and script what each request gets back.

Usage::

    with ScriptedLLMServer() as server:
        server.script("test-model", error(429, retry_after=1), reply("hello"))
        litellm.completion(model="openai/test-model", api_base=server.base_url, api_key="sk-test", ...)

FINDINGS ABOUT LITELLM 1.110.2 (checked by tests/core/test_llmserver.py; openai SDK 3.57)
How to read an answer (``r = litellm.completion(...)``):
- ``r.model`` is the model the provider reported (this server: requested + "-2024-08-06", or
  ``reply(model_name=...)``); ``r._hidden_params["provider_response_model"]`` holds the same and
  ``r._hidden_params["litellm_model_name"]`` the name litellm was called with ("openai/test-model").
- ``r._hidden_params["response_cost"]`` is a float in USD, or None when litellm knows no price:
  it prices the requested model when the cost map knows it ("openai/gpt-4o-mini"), else the
  reported model ("test-model" answered as "gpt-4o" is priced as gpt-4o). Per-call prices work
  for unknown models: ``completion(..., input_cost_per_token=1e-6, output_cost_per_token=2e-6)``.
  ``litellm.register_model`` works too but is process-global: avoid it in tests.
- Streaming: chunks carry ``choices[0].delta.content`` ("" first, None in the closing chunks);
  with ``stream_options={"include_usage": True}`` the last chunk has ``.usage``;
  ``litellm.stream_chunk_builder(chunks, messages=...)`` rebuilds a ModelResponse with usage and
  ``_hidden_params["response_cost"]``. Chunks report the requested model, not the pinned one.

Exception mapping (``num_retries=0``; every class lives in ``litellm``):
- 400 → BadRequestError; 400 whose message says "maximum context length" (OpenAI's
  context_length_exceeded, see ``context_length_exceeded()``) → ContextWindowExceededError, a
  subclass of BadRequestError.
- 401 → AuthenticationError; 404 → NotFoundError; 403 → plain litellm.APIError (status_code 403),
  not PermissionDeniedError.
- 429 → RateLimitError.
- 500 → InternalServerError (subclass of openai.InternalServerError, NOT of litellm.APIError:
  ``except litellm.APIError`` misses it; ``except openai.APIError`` catches every class here).
  A dropped connection (``disconnect()``) and a 200 with a non-JSON body also surface as
  InternalServerError (status_code 500).
- 502 → BadGatewayError; 503 → ServiceUnavailableError (both openai.APIStatusError, not
  InternalServerError).
- 408 and 504 responses (``status_code`` 408/504), and a client-side timeout (``hang()`` with
  ``timeout=0.5``, ``status_code`` 408) → Timeout (openai.APITimeoutError → openai.APIConnectionError).
- Every status error has ``.status_code``, ``.response`` (httpx.Response) and
  ``.litellm_response_headers`` (httpx.Headers, same headers).

Retry-After: ``exc.response.headers["retry-after"]`` or ``exc.litellm_response_headers["retry-after"]``
(the raw string, e.g. "1" or "0.5"). Parse it with float(): litellm's own helper
``litellm.utils._get_retry_after_from_exception_header`` only accepts integers and HTTP dates
(returns -1 for "0.5").

Retries:
- ``num_retries=0`` sends exactly one request for every error above (no SDK retry, no litellm retry).
- Without ``num_retries`` the openai SDK retries twice (3 requests; 408/409/429/5xx, connection
  errors, timeouts), honouring Retry-After (floats too) or backing off ~0.5 s, 1 s: pass
  ``num_retries=0`` and retry in the gateway.
- ``num_retries=N>0`` gives the SDK N retries, and if the call still fails litellm then calls
  ``completion_with_retries``, which needs ``tenacity``: it is not installed here, so the error
  becomes a plain ``Exception("tenacity import failed ...")`` (even for a 400). Beware too that
  litellm reads ``num_retries or litellm.num_retries``: a global ``litellm.num_retries`` overrides 0.
- The request header ``x-stainless-retry-count`` tells which SDK attempt a recorded request was.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, TypeGuard

PINNED_SUFFIX = "-2024-08-06"
"""Append this to the requested model name in answers, as providers report their pinned version."""

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS_PATHS = frozenset({"/v1/models", "/models"})
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}
_ids = itertools.count(1)


def normalize_model(model: str | None) -> str | None:
    """Return the model name as it travels on the wire (drop litellm's ``openai/`` provider prefix)."""
    if model is not None and model.startswith("openai/"):
        return model.removeprefix("openai/")
    return model


def estimate_tokens(text: str) -> int:
    """Count tokens roughly: one per four characters, at least one."""
    return max(1, len(text) // 4)


def prompt_text(body: Mapping[str, Any]) -> str:
    """Concatenate the text of every message in a request body (non-string contents as JSON)."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else message
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


@dataclass(frozen=True)
class Recorded:
    """Keep one request the server received."""

    model: str | None
    body: dict[str, Any]
    headers: dict[str, str]
    """Header names lower-cased."""
    path: str
    time: float
    """``time.monotonic()`` when the request arrived (compare two of them to measure backoff)."""
    method: str = "POST"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Return the chat messages of the request."""
        return list(self.body.get("messages") or [])

    @property
    def prompt(self) -> str:
        """Return the text of all messages joined by newlines."""
        return prompt_text(self.body)

    @property
    def stream(self) -> bool:
        """Tell whether the request asked for a streamed answer."""
        return bool(self.body.get("stream"))


class Exchange:
    """Give a step what it needs to answer one request (subclass Step and use it for custom answers)."""

    def __init__(self, handler: _Handler, body: dict[str, Any], abort: threading.Event) -> None:
        self.handler = handler
        self.body = body
        self.abort = abort

    @property
    def model(self) -> str:
        """Return the model the request asked for."""
        return str(self.body.get("model") or "unknown-model")

    @property
    def streaming(self) -> bool:
        """Tell whether the request asked for server-sent events."""
        return bool(self.body.get("stream"))

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops or resets meanwhile; return True when aborted."""
        return seconds > 0 and self.abort.wait(seconds)

    def send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        """Answer with a JSON body."""
        data = json.dumps(payload).encode()
        self.send_raw(status, data, {"Content-Type": "application/json", **(headers or {})})

    def send_raw(self, status: int, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        """Answer with the given bytes."""
        handler = self.handler
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()


class Step:
    """Answer one scripted request; subclasses implement ``run``."""

    def run(self, exchange: Exchange) -> None:
        """Write the answer to the exchange."""
        raise NotImplementedError


def _is_step(obj: object) -> TypeGuard[Step]:
    """Tell whether ``obj`` is a step, by duck typing so a second import of this module still interoperates."""
    return callable(getattr(obj, "run", None)) and not isinstance(obj, type)


@dataclass(frozen=True)
class Reply(Step):
    """Answer a chat.completion (or a stream of chunks when the request has ``"stream": true``)."""

    content: str
    model_name: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay: float = 0.0
    finish_reason: str = "stop"
    chunk_size: int = 8
    delay_per_chunk: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)

    def answered_model(self, exchange: Exchange) -> str:
        """Return the model name the answer reports."""
        return self.model_name or exchange.model + PINNED_SUFFIX

    def usage(self, exchange: Exchange) -> dict[str, int]:
        """Return the usage block, estimating what was not scripted."""
        prompt = self.prompt_tokens
        if prompt is None:
            prompt = estimate_tokens(prompt_text(exchange.body))
        completion = self.completion_tokens
        if completion is None:
            completion = estimate_tokens(self.content)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def run(self, exchange: Exchange) -> None:
        """Wait ``delay`` then answer in the mode the request asked for."""
        if exchange.sleep(self.delay):
            return
        if exchange.streaming:
            self._stream(exchange)
            return
        exchange.send_json(
            200,
            {
                "id": f"chatcmpl-scripted-{next(_ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.answered_model(exchange),
                "system_fingerprint": "fp_scripted",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": self.finish_reason,
                    }
                ],
                "usage": self.usage(exchange),
            },
            self.headers,
        )

    def _stream(self, exchange: Exchange) -> None:
        """Send the content as server-sent chat.completion.chunk events, then ``[DONE]``."""
        handler = exchange.handler
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        for name, value in self.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        base = {
            "id": f"chatcmpl-scripted-{next(_ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.answered_model(exchange),
            "system_fingerprint": "fp_scripted",
        }
        with_usage = bool((exchange.body.get("stream_options") or {}).get("include_usage"))

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            payload = {**base, "choices": [choice]}
            if with_usage:
                payload["usage"] = None
            handler.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            handler.wfile.flush()

        event({"role": "assistant", "content": "", "refusal": None})
        size = max(1, self.chunk_size)
        for start in range(0, len(self.content), size):
            if exchange.sleep(self.delay_per_chunk):
                return
            event({"content": self.content[start : start + size]})
        event({}, self.finish_reason)
        if with_usage:
            payload = {**base, "choices": [], "usage": self.usage(exchange)}
            handler.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()


@dataclass(frozen=True)
class Error(Step):
    """Answer an OpenAI-style error body with the given HTTP status."""

    status: int
    message: str = "scripted error"
    retry_after: float | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None
    delay: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)

    def run(self, exchange: Exchange) -> None:
        """Wait ``delay`` then send the error."""
        if exchange.sleep(self.delay):
            return
        headers = dict(self.headers)
        if self.retry_after is not None:
            seconds = self.retry_after
            headers["Retry-After"] = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
        body = {
            "error": {
                "message": self.message,
                "type": self.type or _ERROR_TYPES.get(self.status, "api_error"),
                "param": self.param,
                "code": self.code,
            }
        }
        exchange.send_json(self.status, body, headers)


@dataclass(frozen=True)
class Hang(Step):
    """Hold the request without answering, then run ``then`` or drop the connection.

    The wait ends early when the server stops or resets, so a hang never delays shutdown.
    """

    seconds: float
    then: Step | None = None

    def run(self, exchange: Exchange) -> None:
        """Sleep, then answer with ``then`` if any; otherwise close without a response."""
        if exchange.sleep(self.seconds) or self.then is None:
            exchange.handler.close_connection = True
            return
        self.then.run(exchange)


@dataclass(frozen=True)
class Raw(Step):
    """Answer arbitrary bytes (malformed JSON, HTML error pages, ...)."""

    status: int
    body: bytes | str
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    def run(self, exchange: Exchange) -> None:
        """Send the bytes as they are."""
        data = self.body.encode() if isinstance(self.body, str) else self.body
        exchange.send_raw(self.status, data, {"Content-Type": self.content_type, **self.headers})


@dataclass(frozen=True)
class Disconnect(Step):
    """Close the connection without sending anything (the client sees a connection error)."""

    def run(self, exchange: Exchange) -> None:
        """Drop the connection."""
        exchange.handler.close_connection = True


@dataclass(frozen=True)
class Responder(Step):
    """Compute the answer from the request JSON.

    ``fn(body)`` returns the reply content (``str``), an object to send as JSON content
    (``dict`` or ``list``), or any ``Step`` to run instead.
    """

    fn: Callable[[dict[str, Any]], str | dict[str, Any] | list[Any] | Step]
    reply_options: Mapping[str, Any] = field(default_factory=dict)

    def run(self, exchange: Exchange) -> None:
        """Call ``fn`` and run the step it yields."""
        result = self.fn(exchange.body)
        if _is_step(result):
            step: Step = result
        elif isinstance(result, str):
            step = Reply(result, **self.reply_options)
        else:
            step = Reply(json.dumps(result), **self.reply_options)
        step.run(exchange)


def reply(
    content: str,
    *,
    model_name: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    delay: float = 0.0,
    finish_reason: str = "stop",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """Answer ``content``; ``model`` in the answer is ``model_name`` or the requested model + pinned suffix."""
    return Reply(
        content,
        model_name=model_name,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        delay=delay,
        finish_reason=finish_reason,
        headers=dict(headers or {}),
    )


def reply_json(obj: Any, **options: Any) -> Reply:
    """Answer the JSON encoding of ``obj`` as content (options as for ``reply``)."""
    return reply(json.dumps(obj), **options)


def stream(
    content: str,
    *,
    chunk_size: int = 8,
    delay_per_chunk: float = 0.0,
    model_name: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    finish_reason: str = "stop",
) -> Reply:
    """Answer ``content`` in chunks of ``chunk_size`` characters (a plain completion if not streaming)."""
    return Reply(
        content,
        model_name=model_name,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        chunk_size=chunk_size,
        delay_per_chunk=delay_per_chunk,
    )


def error(
    status: int,
    message: str = "scripted error",
    *,
    retry_after: float | None = None,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    delay: float = 0.0,
    headers: Mapping[str, str] | None = None,
) -> Error:
    """Answer an OpenAI error body with ``status``; send ``Retry-After`` when ``retry_after`` is given."""
    return Error(
        status,
        message,
        retry_after=retry_after,
        type=type,
        code=code,
        param=param,
        delay=delay,
        headers=dict(headers or {}),
    )


def context_length_exceeded(limit: int = 128000, tokens: int = 130000) -> Error:
    """Answer OpenAI's 400 for a prompt longer than the context window."""
    return error(
        400,
        f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
        f"{tokens} tokens. Please reduce the length of the messages.",
        type="invalid_request_error",
        code="context_length_exceeded",
        param="messages",
    )


def hang(seconds: float, then: Step | None = None) -> Hang:
    """Hold the request ``seconds`` (aborted by stop/reset), then run ``then`` or drop the connection."""
    return Hang(seconds, then)


def raw(status: int, body: bytes | str, *, content_type: str = "application/json") -> Raw:
    """Answer ``body`` verbatim with ``status``."""
    return Raw(status, body, content_type)


def disconnect() -> Disconnect:
    """Close the connection without answering."""
    return Disconnect()


def responder(
    fn: Callable[[dict[str, Any]], str | dict[str, Any] | list[Any] | Step], **reply_options: Any
) -> Responder:
    """Compute each answer from the request JSON with ``fn`` (options as for ``reply``)."""
    return Responder(fn, dict(reply_options))


Default = Step | Callable[[dict[str, Any]], str | dict[str, Any] | list[Any] | Step] | None


class _HTTPServer(ThreadingHTTPServer):
    """Carry a reference to the scripted server for the handlers."""

    daemon_threads = True
    allow_reuse_address = True
    scripted: ScriptedLLMServer


class _Handler(BaseHTTPRequestHandler):
    """Route requests to the scripted server."""

    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: no stale pooled sockets between tests

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:
        """Answer the model list."""
        scripted = self.server.scripted
        path = self._path()
        scripted._record(None, {}, self, path, "GET")
        exchange = Exchange(self, {}, scripted._abort)
        if path in _MODELS_PATHS:
            exchange.send_json(200, scripted._models_payload())
        else:
            exchange.send_json(
                404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}
            )

    def do_POST(self) -> None:
        """Answer a chat completion with the next scripted step."""
        scripted = self.server.scripted
        path = self._path()
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        try:
            body = json.loads(data or b"{}")
        except ValueError:
            body = {"_raw": data.decode(errors="replace")}
        if not isinstance(body, dict):
            body = {"_raw": body}
        model = body.get("model")
        scripted._record(model if isinstance(model, str) else None, body, self, path, "POST")
        exchange = Exchange(self, body, scripted._abort)
        if path not in _CHAT_PATHS:
            exchange.send_json(
                404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}}
            )
            return
        step = scripted._next_step(body)
        try:
            step.run(exchange)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout): nothing to answer
        except Exception as exc:  # a responder function failed: make it visible to the test
            scripted._failed(exc)
            try:
                exchange.send_json(
                    500, {"error": {"message": f"step failed: {exc!r}", "type": "server_error"}}
                )
            except OSError:
                self.close_connection = True


class ScriptedLLMServer:
    """Serve OpenAI-compatible chat completions whose answers the test scripts in advance."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Condition()
        self._queues: dict[str | None, deque[Step]] = {}
        self._requests: list[Recorded] = []
        self._abort = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.default: Default = None
        """Answer when no queue has a step: a Step, or ``fn(body)`` as for ``responder``; None means a 500."""
        self.models: list[str] = []
        """Extra model ids for GET /v1/models (scripted models are listed too)."""
        self.errors: list[Exception] = []
        """Exceptions raised by steps (e.g. a responder function); each also answered a 500."""

    # lifecycle

    def start(self) -> Self:
        """Bind the port (0 picks a free one) and serve in a background thread."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self._host, self._port), _Handler)
        httpd.scripted = self
        self._httpd = httpd
        self._abort = threading.Event()
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="scripted-llm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Abort pending hangs and delays, and stop serving."""
        self._abort.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Return the bound port."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """Return the OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self._host}:{self.port}/v1"

    # scripting

    def script(self, model: str | None, *steps: Step) -> Self:
        """Queue steps for requests whose model is ``model`` (``openai/`` prefix ignored); None is any model."""
        for step in steps:
            if not _is_step(step):
                raise TypeError(f"not a Step: {step!r}")
        with self._lock:
            self._queues.setdefault(normalize_model(model), deque()).extend(steps)
        return self

    def remaining(self) -> dict[str | None, list[Step]]:
        """Return the scripted steps no request has consumed yet, by model."""
        with self._lock:
            return {model: list(queue) for model, queue in self._queues.items() if queue}

    def reset(self) -> None:
        """Forget scripts, the default and records; abort hangs still held from earlier tests."""
        with self._lock:
            self._queues.clear()
            self._requests.clear()
            self.default = None
            self.models = []
            self.errors = []
            self._abort.set()
            self._abort = threading.Event()

    # records

    @property
    def requests(self) -> list[Recorded]:
        """Return a snapshot of every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str | None) -> list[Recorded]:
        """Return the chat requests for ``model`` (``openai/`` prefix ignored)."""
        wanted = normalize_model(model)
        return [r for r in self.requests if r.model == wanted and r.method == "POST"]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Recorded]:
        """Block until at least ``count`` requests arrived; raise TimeoutError otherwise."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} requests arrived, expected {count}")
            return list(self._requests)

    def __iter__(self) -> Iterator[Recorded]:
        return iter(self.requests)

    # internals used by the handler

    def _record(
        self, model: str | None, body: dict[str, Any], handler: _Handler, path: str, method: str
    ) -> None:
        headers = {name.lower(): value for name, value in handler.headers.items()}
        record = Recorded(model, body, headers, path, time.monotonic(), method)
        with self._lock:
            self._requests.append(record)
            self._lock.notify_all()

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.errors.append(exc)

    def _next_step(self, body: dict[str, Any]) -> Step:
        model = body.get("model")
        with self._lock:
            for key in (model, None):
                queue = self._queues.get(key)
                if queue:
                    return queue.popleft()
            default = self.default
        if default is None:
            return error(
                500, f"unscripted request for model {model!r}", type="server_error", code="unscripted"
            )
        if _is_step(default):
            return default
        return Responder(default)

    def _models_payload(self) -> dict[str, Any]:
        with self._lock:
            names = {m for m in self._queues if m is not None} | set(self.models)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "scripted"} for name in sorted(names)
        ]
        return {"object": "list", "data": data}


def start_server(port: int = 0) -> ScriptedLLMServer:
    """Start a scripted server on 127.0.0.1 (``port`` 0 picks a free one); the caller stops it."""
    return ScriptedLLMServer(port=port).start()
