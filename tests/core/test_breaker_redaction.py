"""Breaker state shared through Redis; PII redaction of stored prompts."""

from __future__ import annotations

import uuid

import pytest

from extraction.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RedisStore
from extraction.redaction import redact


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_two_workers_share_one_breaker_through_redis(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    clock = Clock()
    worker_a = CircuitBreaker(
        RedisStore(redis_url, prefix=prefix), failure_threshold=3, cooldown_seconds=10, clock=clock
    )
    worker_b = CircuitBreaker(
        RedisStore(redis_url, prefix=prefix), failure_threshold=3, cooldown_seconds=10, clock=clock
    )
    worker_a.record_failure("gpt")
    worker_b.record_failure("gpt")
    assert worker_a.state("gpt").state == CLOSED
    worker_a.record_failure("gpt")
    assert worker_b.state("gpt").state == OPEN and not worker_b.allow("gpt")  # b sees a's failures
    clock.now += 11
    assert worker_a.state("gpt").state == HALF_OPEN
    assert worker_a.allow("gpt") is True
    assert worker_b.allow("gpt") is False  # only one probe across all workers
    worker_a.record_success("gpt")
    assert worker_b.state("gpt").state == CLOSED
    assert [s.key for s in worker_b.states()] == ["gpt"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mail jane.doe@example.com now", "Mail [EMAIL] now"),
        ("Call +44 20 7946 0958 today", "Call [PHONE] today"),
        ("Card 4111 1111 1111 1111 exp 12/27", "Card [CARD] exp 12/27"),
        ("IBAN DE89 3704 0044 0532 0130 00", "IBAN [IBAN]"),
        ("SSN 123-45-6789", "SSN [ID]"),
        ("Account no: 12345678901", "[ACCOUNT]"),
    ],
)
def test_personal_data_is_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_amounts_dates_and_invoice_numbers_survive_redaction() -> None:
    text = "Invoice INV-2024-0042 dated 2024-03-12, total 1,234.50 EUR, order 1234567890123"
    assert redact(text) == text  # 1234567890123 fails the Luhn check: not a card


class CountingStore:
    """Wraps a store and counts the reads, to see when the breaker asks it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gets = 0

    def get(self, key):
        self.gets += 1
        return self.inner.get(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_healthy_breaker_is_trusted_locally_for_a_moment_and_own_failures_count_at_once() -> None:
    from extraction.breaker import MemoryStore

    store = CountingStore(MemoryStore())
    breaker = CircuitBreaker(store, failure_threshold=2, cooldown_seconds=10, closed_cache_seconds=60)
    for _ in range(5):
        assert breaker.allow("gpt")
        breaker.record_success("gpt")
    assert store.gets == 1  # one read, then the cached "closed, 0 failures"
    breaker.record_failure("gpt")
    breaker.record_failure("gpt")
    assert breaker.allow("gpt") is False  # our own failures drop the cached answer at once


def test_without_the_local_cache_every_call_reads_the_shared_state() -> None:
    from extraction.breaker import MemoryStore

    store = CountingStore(MemoryStore())
    breaker = CircuitBreaker(store, failure_threshold=2, cooldown_seconds=10)
    for _ in range(3):
        assert breaker.allow("gpt")
        breaker.record_success("gpt")
    assert store.gets == 6
