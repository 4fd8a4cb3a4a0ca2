"""Make asyncio greenlet-safe in a gevent worker, for litellm's sync calls.

litellm's sync Router runs each call inside an asyncio event loop of its own (`run_async_function`). asyncio's
C accelerator (`_asyncio`) keeps "the running loop" per OS thread, and under gevent every greenlet shares one
thread: while one greenlet waits for its HTTP answer inside its loop, every other greenlet sees that loop as
running. The next litellm call then fails ("Cannot run the event loop while another loop is running") and
Django refuses every query ("SynchronousOnlyOperation: You cannot call this from an async context").

Without the accelerator, asyncio keeps the running loop in a `threading.local`, which gevent's patching turns
into a greenlet-local: each greenlet gets its own loop, as each thread does in the threads pool. The
accelerator only speeds up asyncio's own bookkeeping, which the workers barely use (a loop per LLM call).

`did_patch_all` is a gevent plugin (entry point `gevent.plugins.monkey.did_patch_all`, pyproject.toml):
gevent calls it whenever a process monkeypatches itself (`celery worker --pool=gevent`, gunicorn's gevent
workers), before the process has imported asyncio.
"""

from __future__ import annotations

import sys
from typing import Any


def did_patch_all(event: Any = None) -> None:
    if "asyncio" in sys.modules:
        # Too late to switch implementations; asyncio_is_greenlet_safe() reports it where it matters.
        return
    sys.modules.setdefault("_asyncio", None)  # `import _asyncio` now raises ImportError: pure-Python asyncio


def gevent_patched() -> bool:
    """True in a process gevent has monkeypatched (`celery worker --pool=gevent`)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def asyncio_is_greenlet_safe() -> bool:
    """True unless gevent has patched this process and asyncio keeps its running loop per OS thread."""
    if not gevent_patched():
        return True
    import asyncio.events

    return asyncio.events._get_running_loop is asyncio.events._py__get_running_loop
