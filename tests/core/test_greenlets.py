"""litellm's sync calls under gevent (the production worker's pool), through the real litellm and HTTP.

Each case runs in a fresh interpreter, because gevent must patch a process before anything else is imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import server_config
from tests.llmserver import reply

ROOT = Path(__file__).resolve().parents[2]
CALLS = 8
DELAY = 1.0

# A warm-up call, then CALLS greenlets call the gateway at once (the scripted model takes DELAY seconds to
# answer each) while another greenlet asks asyncio every millisecond whether it is inside a running event loop,
# as Django does before every query (SynchronousOnlyOperation).
CLIENT = textwrap.dedent(
    """
    import sys, json
    if sys.argv[2] == "asyncio-first":
        import asyncio  # noqa: F401  (imported before gevent patches: the plugin can no longer help)
    from gevent import monkey; monkey.patch_all()
    import asyncio, time, gevent
    from extraction.config import LLMConfig
    from extraction.gateway import Gateway, Trace
    from extraction.greenlets import asyncio_is_greenlet_safe

    gateway = Gateway(LLMConfig.model_validate(json.loads(sys.argv[1])), sleep=lambda s: None)
    messages = [{"role": "user", "content": "say something"}]

    def call():
        try:
            return gateway.complete(task="extract", messages=messages, trace=Trace(), prompt_version="g v1").text
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    warm = call()
    seen = {"loops": 0, "checks": 0}

    def watch():
        while True:
            seen["checks"] += 1
            try:
                asyncio.get_running_loop()
                seen["loops"] += 1
            except RuntimeError:
                pass
            gevent.sleep(0.001)

    watcher = gevent.spawn(watch)
    start = time.monotonic()
    jobs = [gevent.spawn(call) for i in range(int(sys.argv[3]))]
    gevent.joinall(jobs)
    wall = time.monotonic() - start
    watcher.kill()
    print(json.dumps({"safe": asyncio_is_greenlet_safe(), "wall": wall, "warm": warm,
                      "answers": [j.value for j in jobs], **seen}))
    """
)


def run_client(llm: Any, mode: str, calls: int = CALLS) -> dict[str, Any]:
    config = server_config(llm.base_url, retries=0, fallbacks=[])
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(config), mode, str(calls)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_greenlets_make_their_llm_calls_concurrently_each_in_its_own_event_loop(llm: Any) -> None:
    llm.script("primary-model", reply("warm"), *[reply(f"answer {i}", delay=DELAY) for i in range(CALLS)])
    result = run_client(llm, "patched-first")
    assert result["safe"] is True
    assert result["warm"] == "warm"
    assert sorted(result["answers"]) == sorted(f"answer {i}" for i in range(CALLS))
    # Concurrent, not one after the other: eight 1 s answers take about 1 s (plus litellm's CPU), not 8 s.
    assert result["wall"] < CALLS * DELAY / 2, result
    # litellm runs event loops inside each call (asyncio.run for its service hooks); no other greenlet saw one.
    assert result["checks"] > 50, result
    assert result["loops"] == 0, result


def test_without_the_plugin_other_greenlets_see_a_running_loop(llm: Any) -> None:
    """Why extraction/greenlets.py exists: asyncio imported before gevent patched keeps its running loop per
    OS thread, so while one greenlet's litellm call waits inside an event loop every other greenlet is "in an
    async context": Django refuses its queries. The worker refuses to start in that state (reviewapp/celery.py);
    this shows what that prevents."""
    # More calls than above: each exposes its loops only for moments, and one sighting is enough to fail.
    llm.script("primary-model", reply("warm"), *[reply(f"answer {i}", delay=DELAY) for i in range(4 * CALLS)])
    result = run_client(llm, "asyncio-first", calls=4 * CALLS)
    assert result["safe"] is False
    assert result["loops"] > 0, result
