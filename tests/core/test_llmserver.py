"""Check the scripted LLM server through the real litellm, and pin litellm's behaviour we rely on."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import openai
import pydantic
import pytest

try:
    from tests import llmserver as ls
except ImportError:  # tests/ is not a package and the project root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import llmserver as ls

MODEL = "openai/test-model"
MESSAGES = [
    {"role": "system", "content": "You extract fields."},
    {"role": "user", "content": "Invoice 42 from ACME, total 12.50 EUR."},
]


@pytest.fixture(scope="module")
def server() -> Iterator[ls.ScriptedLLMServer]:
    """Start one server for the module and reset it around each test."""
    srv = ls.start_server()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _fresh(server: ls.ScriptedLLMServer) -> Iterator[None]:
    """Forget scripts and records of the previous test."""
    server.reset()
    yield
    server.reset()


def step_status(step: ls.Step) -> int:
    """Return the HTTP status litellm reports for a scripted step (500 when nothing was answered)."""
    status = getattr(step, "status", 500)
    return 500 if isinstance(step, ls.Raw) else int(status)


def complete(server: ls.ScriptedLLMServer, model: str = MODEL, **kwargs: object) -> litellm.ModelResponse:
    """Call litellm.completion against the server without retries."""
    options: dict[str, object] = {"messages": MESSAGES, "num_retries": 0, **kwargs}
    return litellm.completion(model=model, api_base=server.base_url, api_key="sk-test", **options)


def test_reply_gives_content_usage_and_the_pinned_model(server: ls.ScriptedLLMServer) -> None:
    server.script("test-model", ls.reply("hello", prompt_tokens=120, completion_tokens=7))

    response = complete(server)

    assert response.choices[0].message.content == "hello"
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (120, 7)
    assert response.usage.total_tokens == 127
    assert response.model == "test-model-2024-08-06"
    assert response._hidden_params["provider_response_model"] == "test-model-2024-08-06"
    assert response._hidden_params["litellm_model_name"] == MODEL
    assert response._hidden_params["response_cost"] is None  # no price known for test-model


def test_usage_is_estimated_from_characters(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.reply("x" * 40, model_name="custom-name", finish_reason="length"))

    response = complete(server)

    prompt_chars = len("\n".join(m["content"] for m in MESSAGES))
    assert response.usage.prompt_tokens == prompt_chars // 4
    assert response.usage.completion_tokens == 10
    assert response.model == "custom-name"
    assert response.choices[0].finish_reason == "length"


def test_response_cost_uses_the_cost_map_or_per_call_prices(server: ls.ScriptedLLMServer) -> None:
    server.script("gpt-4o-mini", ls.reply("x", prompt_tokens=1_000_000, completion_tokens=0))
    server.script("test-model", ls.reply("x", prompt_tokens=1000, completion_tokens=1000))

    known = complete(server, "openai/gpt-4o-mini")
    priced = complete(server, input_cost_per_token=1e-6, output_cost_per_token=2e-6)

    assert known.model == "gpt-4o-mini-2024-08-06"
    assert known._hidden_params["response_cost"] == pytest.approx(0.15)
    assert priced._hidden_params["response_cost"] == pytest.approx(0.003)


def test_rate_limit_exposes_retry_after_and_is_not_retried(server: ls.ScriptedLLMServer) -> None:
    server.script(MODEL, ls.error(429, "Rate limit reached", retry_after=1), ls.reply("late"))

    with pytest.raises(litellm.RateLimitError) as caught:
        complete(server)

    exc = caught.value
    assert exc.status_code == 429
    assert "Rate limit reached" in str(exc)
    assert exc.response.headers["retry-after"] == "1"
    assert exc.litellm_response_headers["retry-after"] == "1"
    assert len(server.requests) == 1
    assert [type(step).__name__ for step in server.remaining()["test-model"]] == ["Reply"]


def test_fractional_retry_after_is_sent_verbatim(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.error(429, retry_after=0.5))

    with pytest.raises(litellm.RateLimitError) as caught:
        complete(server)

    headers = caught.value.response.headers
    assert float(headers["retry-after"]) == 0.5
    assert litellm.utils._get_retry_after_from_exception_header(headers) == -1  # litellm's helper: ints only


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (ls.error(400, "bad request"), litellm.BadRequestError),
        (ls.context_length_exceeded(), litellm.ContextWindowExceededError),
        (ls.error(401, "Incorrect API key", code="invalid_api_key"), litellm.AuthenticationError),
        (ls.error(403, "forbidden"), litellm.APIError),  # not PermissionDeniedError
        (ls.error(404, "no such model"), litellm.NotFoundError),
        (ls.error(500), litellm.InternalServerError),
        (ls.error(502), litellm.BadGatewayError),
        (ls.error(503, "overloaded"), litellm.ServiceUnavailableError),
        (ls.error(504), litellm.Timeout),
        (ls.disconnect(), litellm.InternalServerError),
        (ls.raw(200, "this is not json"), litellm.InternalServerError),
    ],
    ids=["400", "context", "401", "403", "404", "500", "502", "503", "504", "disconnect", "not-json"],
)
def test_errors_map_to_litellm_exceptions_without_retry(
    server: ls.ScriptedLLMServer, step: ls.Step, expected: type[Exception]
) -> None:
    server.script(None, step)

    with pytest.raises(expected) as caught:
        complete(server)

    assert type(caught.value) is expected
    assert caught.value.status_code == step_status(step)
    assert isinstance(caught.value, openai.APIError)
    assert len(server.requests) == 1


def test_internal_server_error_is_not_a_litellm_api_error(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.error(500, "boom"))

    with pytest.raises(openai.APIError) as caught:
        complete(server)

    assert not isinstance(caught.value, litellm.APIError)
    assert not isinstance(caught.value, litellm.ServiceUnavailableError)
    assert issubclass(litellm.ContextWindowExceededError, litellm.BadRequestError)


def test_unscripted_request_answers_500(server: ls.ScriptedLLMServer) -> None:
    with pytest.raises(litellm.InternalServerError, match="unscripted request"):
        complete(server)


def test_model_queue_is_used_before_the_wildcard_queue(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.reply("any"))
    server.script("openai/model-a", ls.reply("A"))

    assert complete(server, "openai/model-b").choices[0].message.content == "any"
    assert complete(server, "openai/model-a").choices[0].message.content == "A"
    with pytest.raises(litellm.InternalServerError):
        complete(server, "openai/model-a")

    assert [r.model for r in server.requests] == ["model-b", "model-a", "model-a"]
    assert len(server.requests_for("openai/model-a")) == 2
    assert server.remaining() == {}


def test_hang_times_out_quickly_without_blocking_other_requests(server: ls.ScriptedLLMServer) -> None:
    server.script("slow", ls.hang(5))
    server.script("fast", ls.reply("quick"))

    started = time.monotonic()
    with pytest.raises(litellm.Timeout):
        complete(server, "openai/slow", timeout=0.5)
    assert time.monotonic() - started < 4.5  # well before the 5 s hang ends: the client timed out

    # the hang still holds its thread: another request must be served meanwhile
    assert complete(server, "openai/fast", timeout=2).choices[0].message.content == "quick"


def test_stop_aborts_a_hang_promptly() -> None:
    srv = ls.start_server()
    srv.script(None, ls.hang(30))
    outcome: list[object] = []

    def call() -> None:
        request = urllib.request.Request(
            srv.base_url + "/chat/completions",
            data=json.dumps({"model": "m", "messages": []}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                outcome.append(answer.status)
        except Exception as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    srv.wait_for_requests(1)
    started = time.monotonic()
    srv.stop()
    caller.join(timeout=5)

    assert time.monotonic() - started < 4.5  # the held request was cut short, not waited out
    assert not caller.is_alive()
    assert outcome and isinstance(outcome[0], Exception)  # dropped, never answered


def test_slow_reply_then_answers(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.hang(0.2, then=ls.reply("after a while")), ls.reply("delayed", delay=0.2))

    assert complete(server, timeout=5).choices[0].message.content == "after a while"
    assert complete(server, timeout=5).choices[0].message.content == "delayed"


def test_stream_yields_chunks_and_final_usage(server: ls.ScriptedLLMServer) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    server.script(None, ls.stream(text, chunk_size=5, prompt_tokens=30, completion_tokens=11))

    chunks = list(complete(server, stream=True, stream_options={"include_usage": True}))

    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text
    assert len(pieces) == 9
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (30, 11)
    body = server.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_reply_answers_a_streaming_request_as_a_stream(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.reply("streamed reply text", completion_tokens=4))

    chunks = list(complete(server, stream=True))
    rebuilt = litellm.stream_chunk_builder(chunks, messages=MESSAGES)

    assert rebuilt.choices[0].message.content == "streamed reply text"
    assert rebuilt.choices[0].finish_reason == "stop"


def test_stream_step_answers_a_plain_request_in_one_piece(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.stream("whole", chunk_size=1))

    assert complete(server).choices[0].message.content == "whole"


def test_requests_are_recorded_with_messages_and_response_format(server: ls.ScriptedLLMServer) -> None:
    class Invoice(pydantic.BaseModel):
        number: int
        vendor: str

    server.script(None, ls.reply_json({"number": 42, "vendor": "ACME"}))

    response = complete(server, response_format=Invoice, temperature=0)

    assert Invoice.model_validate_json(response.choices[0].message.content) == Invoice(
        number=42, vendor="ACME"
    )
    (recorded,) = server.requests_for(MODEL)
    assert recorded.path == "/v1/chat/completions"
    assert recorded.model == "test-model"
    assert recorded.messages == MESSAGES
    assert "Invoice 42" in recorded.prompt
    assert recorded.body["temperature"] == 0
    schema = recorded.body["response_format"]
    assert schema["type"] == "json_schema"
    assert schema["json_schema"]["name"] == "Invoice"
    assert set(schema["json_schema"]["schema"]["properties"]) == {"number", "vendor"}
    assert recorded.headers["authorization"] == "Bearer sk-test"
    assert recorded.headers["x-stainless-retry-count"] == "0"


def test_responder_computes_the_reply_from_the_request(server: ls.ScriptedLLMServer) -> None:
    def echo_fields(body: dict[str, object]) -> dict[str, object]:
        prompt = ls.prompt_text(body)
        return {field: field in prompt for field in ("Invoice", "total", "missing")}

    server.script(None, ls.responder(echo_fields, prompt_tokens=5))

    response = complete(server)

    assert json.loads(response.choices[0].message.content) == {
        "Invoice": True,
        "total": True,
        "missing": False,
    }
    assert response.usage.prompt_tokens == 5


def test_default_answers_when_queues_are_empty(server: ls.ScriptedLLMServer) -> None:
    server.default = lambda body: ls.reply(f"default for {body['model']}")
    server.script(None, ls.reply("scripted first"))

    assert complete(server).choices[0].message.content == "scripted first"
    assert complete(server).choices[0].message.content == "default for test-model"
    server.default = ls.error(503)
    with pytest.raises(litellm.ServiceUnavailableError):
        complete(server)


def test_failing_responder_answers_500_and_is_kept(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.responder(lambda body: body["no-such-key"]))

    with pytest.raises(litellm.InternalServerError, match="step failed"):
        complete(server)

    assert [type(e) for e in server.errors] == [KeyError]


def test_without_num_retries_the_sdk_retries_twice_honouring_retry_after(
    server: ls.ScriptedLLMServer,
) -> None:
    server.script(
        None, ls.error(429, retry_after=0.2), ls.error(503, retry_after=0.2), ls.reply("third time")
    )

    response = litellm.completion(model=MODEL, messages=MESSAGES, api_base=server.base_url, api_key="sk-test")

    assert response.choices[0].message.content == "third time"
    requests = server.requests
    assert [r.headers["x-stainless-retry-count"] for r in requests] == ["0", "1", "2"]
    assert requests[1].time - requests[0].time >= 0.19


@pytest.mark.skipif(importlib.util.find_spec("tenacity") is not None, reason="tenacity installed")
def test_positive_num_retries_without_tenacity_hides_the_error(server: ls.ScriptedLLMServer) -> None:
    server.script(None, ls.error(400, "bad request"))

    with pytest.raises(Exception, match="tenacity") as caught:
        complete(server, num_retries=1)

    assert not isinstance(caught.value, openai.APIError)
    assert len(server.requests) == 1  # 400 is not retried by the SDK; litellm's wrapper then fails


def test_models_endpoint_and_reset(server: ls.ScriptedLLMServer) -> None:
    server.script("openai/model-a", ls.reply("A"))
    server.models = ["extra-model"]

    with urllib.request.urlopen(server.base_url + "/models", timeout=5) as answer:
        listing = json.load(answer)

    assert [m["id"] for m in listing["data"]] == ["extra-model", "model-a"]
    assert server.requests[0].method == "GET"
    server.reset()
    assert server.requests == [] and server.remaining() == {} and server.models == []


def test_script_rejects_non_steps(server: ls.ScriptedLLMServer) -> None:
    with pytest.raises(TypeError):
        server.script(None, "hello")  # type: ignore[arg-type]
