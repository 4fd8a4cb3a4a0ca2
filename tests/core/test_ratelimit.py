"""Requests-per-minute limits: the algorithm, sharing through Redis, and the gateway keeping to them."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest

from extraction.config import LLMConfig
from extraction.gateway import Gateway, Trace
from extraction.ratelimit import MemoryRates, RateLimiter, RedisRates
from tests.conftest import server_config
from tests.llmserver import reply

MESSAGES = [{"role": "user", "content": "say something"}]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_calls_are_spaced_to_the_rate_and_a_burst_is_allowed() -> None:
    clock = Clock()
    limiter = RateLimiter(MemoryRates(clock))
    assert limiter.acquire("gpt", rpm=60) == 0.0
    assert limiter.acquire("gpt", rpm=60) == pytest.approx(1.0)  # one a second
    assert limiter.acquire("other", rpm=60) == 0.0  # each alias has its own budget
    clock.now += 0.25
    assert limiter.acquire("gpt", rpm=60) == pytest.approx(0.75)
    clock.now += 0.75
    assert limiter.acquire("gpt", rpm=60) == 0.0
    # 600 rpm: ten a second may go back to back, the eleventh waits a tenth of a second.
    waits = [limiter.acquire("fast", rpm=600) for _ in range(11)]
    assert waits[:10] == [0.0] * 10 and waits[10] == pytest.approx(0.1)


def test_workers_share_one_budget_through_redis() -> None:
    url = os.environ.get("CELERY_BROKER_URL", "")
    if not url.startswith("redis://"):
        pytest.skip("needs Redis (make test sets CELERY_BROKER_URL=redis://…)")
    prefix = f"test:{uuid.uuid4().hex}:"
    worker_a = RateLimiter(RedisRates(url, prefix=prefix))
    worker_b = RateLimiter(RedisRates(url, prefix=prefix))
    assert worker_a.acquire("gpt", rpm=60, burst=2) == 0.0
    assert worker_b.acquire("gpt", rpm=60, burst=2) == 0.0
    wait = worker_a.acquire("gpt", rpm=60, burst=2)  # a sees b's call: the burst of 2 is used up
    assert 0.9 < wait <= 1.0
    time.sleep(wait)
    assert worker_b.acquire("gpt", rpm=60, burst=2) == 0.0


def _gateway(llm: Any, rpm: float) -> Gateway:
    config = server_config(llm.base_url, retries=0)
    config["model_list"][0]["litellm_params"]["rpm"] = rpm
    return Gateway(LLMConfig.model_validate(config))


def test_the_gateway_waits_for_a_slot(llm: Any) -> None:
    llm.script("primary-model", *[reply("ok")] * 4)
    gateway = _gateway(llm, rpm=600)  # a burst of 10, then one every 0.1 s
    for _ in range(10):
        gateway.limiter.acquire("primary", 600)  # another worker used this second's burst
    started = time.monotonic()
    for _ in range(4):
        assert gateway.complete(task="extract", messages=MESSAGES, trace=Trace()).text == "ok"
    assert time.monotonic() - started >= 0.35  # about 0.1 s before each call
    assert len(llm.requests_for("primary-model")) == 4


def test_a_slot_too_far_away_goes_to_the_fallback_and_is_traced(llm: Any) -> None:
    llm.script("secondary-model", reply("from the fallback"))
    gateway = _gateway(llm, rpm=1)  # one a minute: the next slot is past the route's 5 s timeout
    gateway.limiter.acquire("primary", 1)
    trace = Trace()
    done = gateway.complete(task="extract", messages=MESSAGES, trace=trace)
    assert (done.alias, done.text) == ("secondary", "from the fallback")
    assert [(c.model_alias, c.error_class, c.parse_status) for c in trace.calls] == [
        ("primary", "RateLimited", "not_sent")
    ]
    assert llm.requests_for("primary-model") == []


def test_an_unreachable_redis_lets_calls_through_instead_of_failing_them() -> None:
    from extraction.breaker import CLOSED, CircuitBreaker, RedisStore

    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    limiter = RateLimiter(RedisRates(dead))
    assert limiter.acquire("gpt", rpm=1) == 0.0
    breaker = CircuitBreaker(RedisStore(dead), failure_threshold=1)
    assert breaker.allow("gpt") is True
    assert breaker.record_failure("gpt").state == CLOSED  # not recorded, so it cannot open
    breaker.record_success("gpt")  # no exception
