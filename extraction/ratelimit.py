"""Requests-per-minute limits per model alias, shared by every worker through Redis when configured.

A provider's rate limit belongs to the API key, not to one worker: 8 workers each keeping to 600 rpm send
4 800. So the count lives in Redis and every worker asks it before a call. (litellm's Router only uses a
deployment's `rpm` as a load-balancing weight, and counts per process.)

The algorithm is GCRA (the "generic cell rate algorithm", a leaky bucket kept as a single timestamp): each
call moves the key's theoretical arrival time (TAT) on by 60/rpm seconds; a call may go when the TAT is
at most `burst` intervals ahead of now, otherwise the answer is how long to wait. Redis evaluates it
atomically in a Lua script with its own clock, so machines with skewed clocks still share one budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class RateStore(Protocol):
    def acquire(self, key: str, interval: float, tolerance: float) -> float:
        """Take a slot if one is free (return 0.0), or return the seconds to wait before asking again."""
        ...


class MemoryRates:
    """Process-local limits (the embedded mode, and tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}

    def acquire(self, key: str, interval: float, tolerance: float) -> float:
        with self._lock:
            now = self._clock()
            tat = max(self._tat.get(key, now), now)
            if tat - now > tolerance:
                return tat - now - tolerance
            self._tat[key] = tat + interval
            return 0.0


class RedisRates:
    """Limits in Redis, so that all workers on all machines share one budget per alias."""

    _ACQUIRE = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    local interval = tonumber(ARGV[1])
    local tolerance = tonumber(ARGV[2])
    local tat = tonumber(redis.call('GET', KEYS[1]) or now)
    if tat < now then tat = now end
    if tat - now > tolerance then return tostring(tat - now - tolerance) end
    redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tat + interval - now) * 1000) + 1000)
    return '0'
    """  # floats go back as strings: Redis would truncate a Lua number to an integer

    def __init__(self, url: str, prefix: str = "reviewapp:rpm:") -> None:
        import redis  # only needed when Redis is configured

        self._r = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self._script = self._r.register_script(self._ACQUIRE)

    def acquire(self, key: str, interval: float, tolerance: float) -> float:
        return float(self._script(keys=[self._prefix + key], args=[repr(interval), repr(tolerance)]))


class RateLimiter:
    def __init__(self, store: RateStore) -> None:
        self.store = store

    def acquire(self, key: str, rpm: float, burst: int | None = None) -> float:
        """Take a slot under `rpm` calls a minute for `key`, or return how long to wait (seconds).

        `burst` calls may go back to back (default: one second's worth, at least 1).
        """
        interval = 60.0 / rpm
        burst = burst or max(1, int(rpm // 60))
        try:
            return self.store.acquire(key, interval, (burst - 1) * interval)
        except Exception:
            # Redis unreachable: let the call go rather than stop all work; the provider's own 429s
            # still go through the gateway's backoff.
            log.warning("rate limit store unavailable; not limiting %s", key, exc_info=True)
            return 0.0
