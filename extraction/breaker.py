"""A circuit breaker per model alias, with state shared between worker processes through Redis.

closed --(N consecutive failures)--> open --(cool-down elapsed)--> half-open: exactly one probe call is let
through (an atomic SET NX decides who probes); its success closes the breaker, its failure re-opens it.

With `closed_cache_seconds` > 0, a "closed, no failures" answer from the store is trusted for that long in
this process, so a healthy model costs no store round trip per call (two Redis reads per call were 2 ms of
CPU per document under load). Another worker's failures are then seen up to that much later, which is small
next to the failure threshold and the cool-down; this process's own failures drop the cached answer at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class BreakerState:
    key: str
    state: str
    failures: int
    opened_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "state": self.state, "failures": self.failures, "opened_at": self.opened_at}


class BreakerStore(Protocol):
    def get(self, key: str) -> tuple[int, float | None]: ...
    def record_failure(self, key: str, now: float, threshold: int) -> tuple[int, float | None]: ...
    def reset(self, key: str) -> None: ...
    def try_probe(self, key: str, ttl: float) -> bool: ...
    def all_keys(self) -> list[str]: ...


class MemoryStore:
    """Process-local state (the embedded mode, and tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[int, float | None]] = {}
        self._probes: dict[str, float] = {}

    def get(self, key: str) -> tuple[int, float | None]:
        with self._lock:
            return self._data.get(key, (0, None))

    def record_failure(self, key: str, now: float, threshold: int) -> tuple[int, float | None]:
        with self._lock:
            failures, opened_at = self._data.get(key, (0, None))
            failures += 1
            if failures >= threshold:
                opened_at = now  # (re)open: a failed probe restarts the cool-down
            self._data[key] = (failures, opened_at)
            self._probes.pop(key, None)
            return failures, opened_at

    def reset(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)
            self._probes.pop(key, None)

    def try_probe(self, key: str, ttl: float) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._probes.get(key, 0) > now:
                return False
            self._probes[key] = now + ttl
            return True

    def all_keys(self) -> list[str]:
        with self._lock:
            return sorted(self._data)


class RedisStore:
    """State in Redis so that every worker process sees the same breaker."""

    _FAIL = """
    local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
    if f >= tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'opened_at', ARGV[1]) end
    redis.call('DEL', KEYS[2])
    redis.call('SADD', KEYS[3], KEYS[1])
    return {f, redis.call('HGET', KEYS[1], 'opened_at')}
    """

    def __init__(self, url: str, prefix: str = "reviewapp:breaker:") -> None:
        import redis  # only needed when Redis is configured

        self._r = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self._fail = self._r.register_script(self._FAIL)

    def _k(self, key: str) -> str:
        return self._prefix + key

    def get(self, key: str) -> tuple[int, float | None]:
        data = self._r.hgetall(self._k(key))
        opened = data.get(b"opened_at")
        return int(data.get(b"failures", 0)), float(opened) if opened else None

    def record_failure(self, key: str, now: float, threshold: int) -> tuple[int, float | None]:
        failures, opened = self._fail(
            keys=[self._k(key), self._k(key) + ":probe", self._prefix + "index"], args=[now, threshold]
        )
        return int(failures), float(opened) if opened else None

    def reset(self, key: str) -> None:
        self._r.delete(self._k(key), self._k(key) + ":probe")

    def try_probe(self, key: str, ttl: float) -> bool:
        return bool(self._r.set(self._k(key) + ":probe", "1", nx=True, px=max(1, int(ttl * 1000))))

    def all_keys(self) -> list[str]:
        return sorted(k.decode()[len(self._prefix) :] for k in self._r.smembers(self._prefix + "index"))


class CircuitBreaker:
    def __init__(
        self,
        store: BreakerStore,
        *,
        failure_threshold: int = 5,
        cooldown_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        closed_cache_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.failure_threshold = failure_threshold
        self.cooldown_seconds = cooldown_seconds
        self.closed_cache_seconds = closed_cache_seconds
        self._clock = clock  # wall clock: the state is shared between machines
        self._healthy_until: dict[str, float] = {}  # key -> monotonic deadline of a cached "closed, 0"

    def state(self, key: str) -> BreakerState:
        failures, opened_at = self.store.get(key)
        if opened_at is None or failures < self.failure_threshold:
            return BreakerState(key, CLOSED, failures, None)
        if self._clock() - opened_at >= self.cooldown_seconds:
            return BreakerState(key, HALF_OPEN, failures, opened_at)
        return BreakerState(key, OPEN, failures, opened_at)

    def _cached_healthy(self, key: str) -> bool:
        return self._healthy_until.get(key, 0.0) > time.monotonic()

    def allow(self, key: str) -> bool:
        """Return whether a call to `key` may go out now (in half-open, only for the one probe).

        If the shared store cannot be reached (a Redis blip), the breaker fails open: the call goes out and
        its own errors still go through the gateway's retries and fallbacks.
        """
        if self._cached_healthy(key):
            return True
        try:
            st = self.state(key)
            if st.state == CLOSED:
                if st.failures == 0 and self.closed_cache_seconds > 0:
                    self._healthy_until[key] = time.monotonic() + self.closed_cache_seconds
                return True
            if st.state == OPEN:
                return False
            # The probe slot expires after a cool-down so a probe lost with its worker doesn't block forever.
            return self.store.try_probe(key, self.cooldown_seconds)
        except Exception:
            log.warning(
                "circuit breaker store unavailable; letting the call to %s through", key, exc_info=True
            )
            return True

    def record_success(self, key: str) -> None:
        if self._cached_healthy(key):
            return  # no failures were recorded here since the store said so
        try:
            failures, _ = self.store.get(key)
            if failures:
                self.store.reset(key)
        except Exception:
            log.warning("circuit breaker store unavailable; success of %s not recorded", key, exc_info=True)

    def record_failure(self, key: str) -> BreakerState:
        self._healthy_until.pop(key, None)
        try:
            self.store.record_failure(key, self._clock(), self.failure_threshold)
            return self.state(key)
        except Exception:
            log.warning("circuit breaker store unavailable; failure of %s not recorded", key, exc_info=True)
            return BreakerState(key, CLOSED, 0, None)

    def states(self) -> list[BreakerState]:
        return [self.state(k) for k in self.store.all_keys()]
