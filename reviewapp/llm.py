"""The edge between Django settings and the extraction core's gateway: one Gateway per process."""

from __future__ import annotations

import functools
import logging

from django.conf import settings

from extraction.breaker import CircuitBreaker, MemoryStore, RedisStore
from extraction.config import LLMConfig, floating_models, load_config
from extraction.gateway import Gateway
from extraction.ratelimit import MemoryRates, RateLimiter, RedisRates

log = logging.getLogger(__name__)


@functools.cache
def llm_config() -> LLMConfig:
    config = load_config(settings.REVIEWAPP_LLM_CONFIG)
    for entry in floating_models(config):
        log.warning(
            "model alias %r maps to the floating model name %r: pin a dated version so behaviour cannot "
            "change under you",
            entry.model_name,
            entry.model,
        )
    return config


@functools.cache
def breaker() -> CircuitBreaker:
    config = llm_config()
    store = RedisStore(settings.REVIEWAPP_REDIS_URL) if settings.REVIEWAPP_REDIS_URL else MemoryStore()
    return CircuitBreaker(
        store,
        failure_threshold=config.settings.breaker.failure_threshold,
        cooldown_seconds=config.settings.breaker.cooldown_seconds,
        closed_cache_seconds=config.settings.breaker.local_cache_seconds,
    )


@functools.cache
def limiter() -> RateLimiter:
    url = settings.REVIEWAPP_REDIS_URL
    return RateLimiter(RedisRates(url) if url else MemoryRates())


@functools.cache
def gateway() -> Gateway:
    return Gateway(
        llm_config(), environment=settings.REVIEWAPP_ENVIRONMENT, breaker=breaker(), limiter=limiter()
    )


def reset() -> None:
    """Forget the cached config, breaker and gateway (tests that change settings call this)."""
    llm_config.cache_clear()
    breaker.cache_clear()
    limiter.cache_clear()
    gateway.cache_clear()
