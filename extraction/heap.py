"""Garbage-collector settings for long-running worker processes (plain Python: the gateway bench uses them too).

A worker holds a large heap that lives as long as it does (Django, Celery, litellm's model tables, the
app's modules), and litellm's calls leave a lot of short-lived cyclic garbage. With CPython's defaults, the
cyclic collector rescans that whole heap in every full collection, about half a second each on the bench
host, and runs a young collection every 700 allocations: together 6.7 % of a gevent worker's CPU under load
(bench/THROUGHPUT.md, round 6). `gc.freeze()` after start-up moves everything alive then into a permanent
generation the collector skips (what the Python docs advise for pre-fork servers), and a higher first
threshold lets more short-lived objects die by reference counting before a young collection looks at them:
1.9 % left.
"""

from __future__ import annotations

import gc

DEFAULT_THRESHOLD0 = 10_000  # CPython's default is 700


def settle(threshold0: int = DEFAULT_THRESHOLD0) -> int:
    """Freeze what the process holds now, set the young generation's threshold; return the frozen count.

    Call once start-up is done (modules imported), before the process takes work. `threshold0` <= 0 keeps
    CPython's threshold.
    """
    gc.collect()
    gc.freeze()
    if threshold0 > 0:
        _, t1, t2 = gc.get_threshold()
        gc.set_threshold(threshold0, t1, t2)
    return gc.get_freeze_count()
