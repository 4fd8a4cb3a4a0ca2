"""The gateway against the scripted OpenAI-compatible server, through the real litellm."""

from __future__ import annotations

from typing import Any

import pytest

from extraction.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, MemoryStore
from extraction.config import ConfigError, LLMConfig, floating_models, load_config
from extraction.gateway import Gateway, GatewayError, Trace
from tests.conftest import server_config
from tests.llmserver import context_length_exceeded, error, hang, reply, stream

MESSAGES = [{"role": "user", "content": "say something"}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_gateway(
    llm: Any, *, sleeps: list[float] | None = None, breaker: CircuitBreaker | None = None, **kw: Any
) -> Gateway:
    config = LLMConfig.model_validate(server_config(llm.base_url, **kw))
    return Gateway(config, breaker=breaker, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_a_reply_is_returned_with_usage_and_the_pinned_model(llm: Any) -> None:
    llm.script("primary-model", reply('{"ok": true}', prompt_tokens=11, completion_tokens=3))
    trace = Trace()
    done = make_gateway(llm).complete(task="extract", messages=MESSAGES, trace=trace, prompt_version="x v1")
    assert done.text == '{"ok": true}'
    assert done.alias == "primary"
    rec = done.record
    assert rec.model_requested == "openai/primary-model"
    assert rec.model_answered == "primary-model-2024-08-06"
    assert (rec.prompt_tokens, rec.completion_tokens) == (11, 3)
    assert rec.error_class == "" and rec.latency_ms >= 0
    assert trace.calls == []  # the caller adds a success once it knows whether it parsed


@pytest.mark.parametrize("answer", [reply, stream])
def test_nul_and_lone_surrogates_in_a_reply_are_replaced_before_it_is_kept(llm: Any, answer: Any) -> None:
    # The scripted server JSON-encodes the content, so these arrive as escapes and come out of the client's
    # JSON decoder as a NUL and a lone surrogate: text PostgreSQL cannot store.
    llm.script("primary-model", answer('{"vendor": "Ac\ud800me"}\x00'))
    config = server_config(llm.base_url)
    config["tasks"]["extract"]["stream"] = answer is stream
    gateway = Gateway(LLMConfig.model_validate(config), sleep=lambda s: None)
    done = gateway.complete(task="extract", messages=MESSAGES, trace=Trace())
    assert done.text == done.record.raw_response == '{"vendor": "Ac\ufffdme"}\ufffd'


def test_token_counts_a_provider_could_not_mean_are_not_kept(llm: Any) -> None:
    # A negative count breaks the stored call's check constraint, a huge one its integer column.
    llm.script("primary-model", reply("{}", prompt_tokens=-5, completion_tokens=10**12))
    gateway = make_gateway(llm)
    done = gateway.complete(task="extract", messages=MESSAGES, trace=Trace())
    assert done.record.completion_tokens == 0
    assert done.record.prompt_tokens == gateway.count_tokens("primary", MESSAGES) > 0  # our own count instead


def test_a_provider_naming_an_absurdly_long_model_is_cut_to_what_is_stored(llm: Any) -> None:
    llm.script("primary-model", reply("{}", model_name="m" * 5000))
    done = make_gateway(llm).complete(task="extract", messages=MESSAGES, trace=Trace())
    assert done.record.model_answered == "m" * 200


def test_429_is_retried_with_backoff_honouring_retry_after(llm: Any) -> None:
    llm.script("primary-model", error(429, retry_after=0.04), error(503), reply("fine"))
    sleeps: list[float] = []
    trace = Trace()
    done = make_gateway(llm, sleeps=sleeps).complete(task="extract", messages=MESSAGES, trace=trace)
    assert done.text == "fine"
    assert [c.error_class for c in trace.calls] == ["RateLimitError", "ServiceUnavailableError"]
    assert len(sleeps) == 2
    assert sleeps[0] >= 0.04  # at least what Retry-After asked (capped by backoff_max 0.05)
    assert len(llm.requests_for("primary-model")) == 3


def test_fallback_to_the_second_model_after_retries(llm: Any) -> None:
    llm.script("primary-model", error(500), error(500), error(500))
    llm.script("secondary-model", reply("from secondary"))
    trace = Trace()
    done = make_gateway(llm).complete(task="extract", messages=MESSAGES, trace=trace)
    assert done.alias == "secondary" and done.text == "from secondary"
    assert [c.model_alias for c in trace.calls] == ["primary"] * 3
    assert all(c.error_class == "InternalServerError" for c in trace.calls)


def test_non_retryable_error_goes_straight_to_the_fallback(llm: Any) -> None:
    llm.script("primary-model", error(401, "bad key"))
    llm.script("secondary-model", reply("ok"))
    trace = Trace()
    done = make_gateway(llm).complete(task="extract", messages=MESSAGES, trace=trace)
    assert done.alias == "secondary"
    assert len(llm.requests_for("primary-model")) == 1
    assert trace.calls[0].error_class == "AuthenticationError"


def test_timeouts_are_traced_and_every_route_failing_raises(llm: Any) -> None:
    llm.script("primary-model", hang(3))
    llm.script("secondary-model", error(500))
    config = server_config(llm.base_url, retries=0)
    config["tasks"]["extract"]["timeout"] = 0.3
    gw = Gateway(LLMConfig.model_validate(config), sleep=lambda s: None)
    trace = Trace()
    with pytest.raises(GatewayError) as err:
        gw.complete(task="extract", messages=MESSAGES, trace=trace)
    assert err.value.code == "all_routes_failed"
    assert [(c.model_alias, c.error_class) for c in trace.calls] == [
        ("primary", "Timeout"),
        ("secondary", "InternalServerError"),
    ]


def test_breaker_opens_after_consecutive_failures_and_recovers_after_cooldown(llm: Any) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(MemoryStore(), failure_threshold=3, cooldown_seconds=30, clock=clock)
    gw = make_gateway(llm, breaker=breaker, retries=2, fallbacks=[])
    llm.script("primary-model", error(500), error(500), error(500))
    with pytest.raises(GatewayError):
        gw.complete(task="extract", messages=MESSAGES, trace=Trace())
    assert breaker.state("primary").state == OPEN
    trace = Trace()
    with pytest.raises(GatewayError, match="circuit open"):
        gw.complete(task="extract", messages=MESSAGES, trace=trace)
    assert len(llm.requests_for("primary-model")) == 3  # nothing was sent while open
    assert trace.calls[0].error_class == "CircuitOpen"  # but the refusal is traced
    clock.now += 31
    assert breaker.state("primary").state == HALF_OPEN
    llm.script("primary-model", reply("back"))
    assert gw.complete(task="extract", messages=MESSAGES, trace=Trace()).text == "back"
    assert breaker.state("primary").state == CLOSED


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(MemoryStore(), failure_threshold=1, cooldown_seconds=10, clock=clock)
    breaker.record_failure("m")
    assert not breaker.allow("m")
    clock.now += 11
    assert breaker.allow("m") is True
    assert breaker.allow("m") is False  # a second caller waits for the probe's outcome
    breaker.record_failure("m")  # the probe failed: open again, for a new cool-down
    assert breaker.state("m").state == OPEN


def test_prompt_over_the_context_window_is_refused_before_sending(llm: Any) -> None:
    config = server_config(llm.base_url, fallbacks=[])
    config["model_list"][0]["model_info"]["max_input_tokens"] = 1200
    gw = Gateway(LLMConfig.model_validate(config), sleep=lambda s: None)
    trace = Trace()
    with pytest.raises(GatewayError):
        gw.complete(task="extract", messages=[{"role": "user", "content": "word " * 3000}], trace=trace)
    assert llm.requests == []
    assert trace.calls[0].error_class == "ContextWindowExceededError"


def test_provider_context_error_moves_to_the_fallback(llm: Any) -> None:
    llm.script("primary-model", context_length_exceeded())
    llm.script("secondary-model", reply("bigger window"))
    done = make_gateway(llm).complete(task="extract", messages=MESSAGES, trace=Trace())
    assert done.alias == "secondary"


def test_calls_near_the_limit_are_flagged(llm: Any) -> None:
    llm.script("primary-model", reply("x", prompt_tokens=15000, completion_tokens=1))
    done = make_gateway(llm).complete(task="extract", messages=MESSAGES, trace=Trace())
    assert done.record.near_limit is True


def test_streaming_records_time_to_first_token(llm: Any) -> None:
    config = server_config(llm.base_url)
    config["tasks"]["extract"]["stream"] = True
    llm.script("primary-model", stream('{"a": 1}', chunk_size=2, delay_per_chunk=0.01))
    done = Gateway(LLMConfig.model_validate(config)).complete(
        task="extract", messages=MESSAGES, trace=Trace()
    )
    assert done.text == '{"a": 1}'
    assert done.record.ttft_ms is not None and done.record.ttft_ms <= done.record.latency_ms
    assert llm.requests[0].stream


def test_json_schema_mode_sends_the_schema(llm: Any) -> None:
    config = server_config(llm.base_url)
    config["model_list"][0]["model_info"]["output_mode"] = "json_schema"
    llm.script("primary-model", reply("{}"))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    Gateway(LLMConfig.model_validate(config)).complete(
        task="extract", messages=MESSAGES, trace=Trace(), json_schema=schema
    )
    sent = llm.requests[0].body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == schema


def test_config_rejects_unknown_aliases_and_flags_floating_models(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model_list: [{model_name: a, litellm_params: {model: openai/gpt-4o}}]\n"
        "tasks: {classify: {model: a}, extract: {model: b}, verify: {model: a}}\n"
    )
    with pytest.raises(ConfigError, match="not in model_list"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(
        "model_list:\n"
        " - {model_name: a, litellm_params: {model: openai/gpt-4o}}\n"
        " - {model_name: b, litellm_params: {model: openai/gpt-4o-2024-08-06}}\n"
        "tasks: {classify: {model: a}, extract: {model: b}, verify: {model: a}}\n"
    )
    assert [m.model_name for m in floating_models(load_config(good))] == ["a"]
