"""The worker's result backend (settings: CELERY_RESULT_BACKEND_THREAD_SAFE)."""

from __future__ import annotations

import threading
from typing import Any

from reviewapp.celery import app


def test_the_result_backend_is_shared_by_every_thread_of_a_worker() -> None:
    """Celery keeps a backend per thread unless it is thread-safe: per greenlet, so per task, under gevent."""
    first = app.backend
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(app.backend)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 3 and all(b is first for b in seen)
