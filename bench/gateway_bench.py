"""The gateway-only bound: the app's litellm calls, at the same concurrency, with no Django, Celery or database.

Run from the repository root (see bench/THROUGHPUT.md; bench/throughput_bench.py runs this too, in the same
run as the Celery measurement):

    .venv/bin/python bench/gateway_bench.py run [--documents 2000] [--concurrency 64] [--processes 1]
                                               [--delay 0.2] [--base-url URL] [--plan FILE] [--json FILE]

Three subcommands share this file:

  serve   the scripted OpenAI-compatible server of the tests (tests/llmserver.py) answering every request after
          a fixed delay with what the offline model would answer (extraction.providers.answer, memoised per
          prompt so the stand-in "remote" model costs this 2-core machine as little CPU as possible). Its
          listen backlog is raised from socketserver's 5 to 1024 (with 64 clients connecting at once a backlog
          of 5 drops SYNs, and the client waits ~1 s to retransmit), and it keeps counters instead of every
          request. It prints {"port": ...} and then answers commands on stdin: `stats`, `reset`, `delay S`.
  plan    the exact calls the app makes on its Gateway for each sample document (samples/): the pipeline is run
          once per sample in-process against a zero-delay scripted server with the same LLM config the workers
          get (tests.conftest.server_config(classify="primary", verify="primary", fallbacks=[], retries=0)),
          and every top-level Gateway method call the pipeline made (complete, count_tokens, input_budget, …)
          is recorded with its arguments. Needs Django settings (not a database) for the document types; it
          runs in its own process.
  run     replays the plan: document i replays sample i % 18's calls in order, through extraction.gateway.Gateway
          (litellm Router, one call per attempt), `concurrency` threads split over `processes` processes. The
          replay processes never import Django (checked). Each warms up (Router, HTTP client, imports) before a
          common start signal; the wall time runs from that signal to the last process's last call.
          Reports calls/s, documents/s (= calls/s / calls per document) and CPU per call and per document.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

BASE_URL_PLACEHOLDER = "http://BASE_URL/v1"

# A gevent replay must be monkeypatched before anything else is imported, as Celery's `--pool=gevent` does.
GEVENT_BOOT = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)
POOLS = ("threads", "gevent")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# --- serve ---------------------------------------------------------------------------------------------------
def serve(delay: float, port: int) -> None:
    from extraction.providers import answer
    from tests import llmserver

    llmserver._HTTPServer.request_queue_size = 1024  # socketserver's default listen backlog is 5

    lock = threading.Lock()
    stats: dict[str, Any] = {"requests": 0, "inflight": 0, "max_inflight": 0, "service": [], "misses": 0}
    original = llmserver._Handler.do_POST

    def do_post(handler: Any) -> None:
        start = time.perf_counter()
        with lock:
            stats["inflight"] += 1
            stats["max_inflight"] = max(stats["max_inflight"], stats["inflight"])
        try:
            original(handler)
        finally:
            elapsed = time.perf_counter() - start
            with lock:
                stats["inflight"] -= 1
                stats["requests"] += 1
                stats["service"].append(elapsed)

    llmserver._Handler.do_POST = do_post  # type: ignore[method-assign]

    class Server(llmserver.ScriptedLLMServer):
        def _record(self, *args: Any) -> None:  # counters only: 6 000 bodies of ~10 KB are not needed
            pass

    cache: dict[str, str] = {}

    def fn(body: dict[str, Any]) -> str:
        messages = body.get("messages") or []
        key = "\x00".join(str(m.get("content", "")) for m in messages)
        text = cache.get(key)
        if text is None:
            text = answer(messages)
            cache[key] = text
            with lock:
                stats["misses"] += 1
        return text

    server = Server(port=port).start()
    server.default = llmserver.responder(fn, delay=delay)
    print(json.dumps({"port": server.port, "base_url": server.base_url}), flush=True)
    cpu0 = cpu_seconds()
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "stats":
            with lock:
                service = list(stats["service"])
                out = {
                    "requests": stats["requests"],
                    "max_inflight": stats["max_inflight"],
                    "cache_misses": stats["misses"],
                    "cpu_s": cpu_seconds() - cpu0,
                    "service_ms_p50": 1000 * percentile(service, 0.5),
                    "service_ms_p99": 1000 * percentile(service, 0.99),
                    "service_ms_max": 1000 * max(service, default=0.0),
                }
            print(json.dumps(out), flush=True)
        elif cmd[0] == "reset":
            with lock:
                stats.update(requests=0, max_inflight=stats["inflight"], service=[], misses=0)
                cpu0 = cpu_seconds()
            print("{}", flush=True)
        elif cmd[0] == "delay":
            server.default = llmserver.responder(fn, delay=float(cmd[1]))
            print("{}", flush=True)
    server.stop()


class ServerProc:
    """The scripted server in its own process (its own GIL), driven over stdin/stdout."""

    def __init__(self, delay: float, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve", "--delay", str(delay), "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.base_url: str = info["base_url"]
        self.pid = self.proc.pid

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def reset(self) -> None:
        self._ask("reset")

    def set_delay(self, seconds: float) -> None:
        self._ask(f"delay {seconds}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- plan ------------------------------------------------------------------------------------------------------
def llm_config_dict(base_url: str) -> dict[str, Any]:
    """The workers' LLM config: every task on the scripted server's `primary`, no fallback, no retry."""
    from tests.conftest import server_config

    return server_config(base_url, classify="primary", verify="primary", fallbacks=[], retries=0)


def setup_django_settings_only() -> None:
    """Django settings and app registry, no database access (the plan needs the demo types only)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reviewapp.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret")
    os.environ["REVIEWAPP_INPROCESS_WORKER"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


def build_plan(out: Path) -> None:
    """Record every Gateway call the pipeline makes for each sample document; write them to `out`."""
    setup_django_settings_only()
    from django.conf import settings

    from extraction.config import load_config
    from extraction.documents import extract_text
    from extraction.gateway import Gateway, Trace
    from extraction.pipeline import Pipeline, PipelineOptions
    from extraction.providers import answer
    from extraction.schemas import DocumentSchema
    from reviewapp import demo
    from reviewapp.models import DocumentType, FieldSpec
    from tests.llmserver import ScriptedLLMServer, responder

    schemas: dict[str, DocumentSchema] = {}
    for slug, spec in demo.TYPES.items():  # as demo.ensure_type stores them, read back by to_schema()
        fields = tuple(
            FieldSpec(
                name=name, type=type_, description=d, required=r, threshold=t, choices=c, position=i
            ).to_data()
            for i, (name, type_, d, r, t, c) in enumerate(spec["fields"])
        )
        schemas[slug] = DocumentSchema(
            slug=slug, name=spec["name"], description=spec["description"], fields=fields
        )
    # As services.classify_candidates gives them: by slug, names and descriptions only.
    candidates = [
        DocumentSchema(slug=s.slug, name=s.name, description=s.description, fields=())
        for s in sorted(schemas.values(), key=lambda s: s.slug)
    ]
    defaults = DocumentType()

    ops: list[tuple[str, Any]] = []
    depth = threading.local()

    def recorded(name: str) -> Any:
        method = getattr(Gateway, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            top = getattr(depth, "n", 0) == 0
            if top:
                ops.append(
                    (name, {"args": list(args), "kwargs": {k: v for k, v in kwargs.items() if k != "trace"}})
                )
            depth.n = getattr(depth, "n", 0) + 1
            try:
                return method(self, *args, **kwargs)
            finally:
                depth.n -= 1

        return wrapper

    class RecordingGateway(Gateway):
        pass

    for name in ("complete", "count_tokens", "input_budget", "limits", "output_mode", "pinned_model"):
        setattr(RecordingGateway, name, recorded(name))

    samples = []
    with ScriptedLLMServer() as server:
        server.default = responder(lambda body: answer(body["messages"]))
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            import yaml

            yaml.safe_dump(llm_config_dict(server.base_url), f)
        config = load_config(f.name)
        os.unlink(f.name)
        gateway = RecordingGateway(config)
        for path, slug in demo.sample_paths():
            data = path.read_bytes()
            text = extract_text(data, path.name, None, max_bytes=settings.REVIEWAPP_MAX_UPLOAD_BYTES).text
            ops.clear()
            gateway.pinned_model("extract")  # extraction_execute asks it for the run's model_requested
            options = PipelineOptions(
                prompt_label=f"{slug}-extract v1",
                instructions="",
                verify_threshold=defaults.verify_threshold,
                max_attempts=defaults.max_attempts,
            )
            trace = Trace()
            Pipeline(gateway).run(
                text=text, schema=schemas[slug], candidates=candidates, options=options, trace=trace
            )
            samples.append(
                {
                    "name": path.name,
                    "type": slug,
                    "filename": path.name,
                    "data_hex": data.hex(),
                    "text": text,
                    "ops": [list(op) for op in ops],
                    "calls": len(trace.calls),
                }
            )
    plan = {
        "llm_config": llm_config_dict(BASE_URL_PLACEHOLDER),
        "candidates": [c.slug for c in candidates],
        "samples": samples,
    }
    out.write_text(json.dumps(plan))


def make_plan(path: Path | None = None) -> Path:
    """Build the plan in a child process (it needs Django settings; the replay processes must not import it)."""
    path = path or Path(tempfile.mkdtemp(prefix="tput-")) / "plan.json"
    subprocess.run([sys.executable, __file__, "plan", "--out", str(path)], cwd=ROOT, check=True)
    return path


# --- replay ------------------------------------------------------------------------------------------------------
def replay(plan_path: Path, base_url: str, documents: list[int], threads: int, warmup: int) -> None:
    """One replay process: warm up, print READY, wait for GO on stdin, replay, print the result as JSON.

    Under gevent (the process was started through GEVENT_BOOT) the pool's "threads" are greenlets.
    """
    import yaml

    from extraction import heap
    from extraction.config import load_config
    from extraction.gateway import Gateway, Trace

    plan = json.loads(plan_path.read_text())
    config_text = json.dumps(plan["llm_config"]).replace(BASE_URL_PLACEHOLDER, base_url)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(json.loads(config_text), f)
    config = load_config(f.name)
    os.unlink(f.name)
    gateway = Gateway(config)
    samples = plan["samples"]
    # The workers' garbage-collector settings (reviewapp/celery.py), so that the bound is not lowered by
    # the defaults the workers no longer run with.
    threshold = int(os.environ.get("WORKER_GC_THRESHOLD", heap.DEFAULT_THRESHOLD0))
    if threshold >= 0:
        import litellm  # noqa: F401

        heap.settle(threshold)
    latencies: list[int] = []
    errors: list[str] = []

    def run_document(index: int) -> int:
        sample = samples[index % len(samples)]
        trace = Trace()
        for name, call in sample["ops"]:
            kwargs = dict(call["kwargs"])
            if name == "complete":
                kwargs["trace"] = trace
                try:
                    completion = gateway.complete(*call["args"], **kwargs)
                except Exception as exc:  # counted and reported, never hidden
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                trace.add(completion.record)
            else:
                getattr(gateway, name)(*call["args"], **kwargs)
        latencies.extend(c.latency_ms for c in trace.calls if not c.error_class)
        return len(trace.calls)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(run_document, range(warmup)))  # Router, HTTP client, lazy imports, thread start-up
        latencies.clear()
        errors.clear()
        print("READY", flush=True)
        sys.stdin.readline()
        cpu0, t0 = cpu_seconds(), time.time()
        calls = sum(pool.map(run_document, documents))
        t1, cpu1 = time.time(), cpu_seconds()
    assert "django" not in sys.modules, "the gateway-only bench must not import Django"
    print(
        json.dumps(
            {
                "documents": len(documents),
                "calls": calls,
                "start": t0,
                "end": t1,
                "cpu_s": cpu1 - cpu0,
                "latency_ms_mean": statistics.fmean(latencies) if latencies else 0.0,
                "latency_ms_p50": percentile(latencies, 0.5),
                "latency_ms_p99": percentile(latencies, 0.99),
                "errors": errors[:5],
                "error_count": len(errors),
            }
        ),
        flush=True,
    )


def run_bound(
    *,
    plan_path: Path,
    base_url: str,
    documents: int,
    concurrency: int,
    processes: int = 1,
    warmup: int | None = None,
    on_start: Any = None,
    on_end: Any = None,
    pool: str = "threads",
) -> dict[str, Any]:
    """Run the replay in `processes` processes of concurrency/processes threads (or greenlets, with
    pool="gevent"); return the figures."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}")
    threads = max(1, concurrency // processes)
    warmup = threads if warmup is None else warmup
    procs = []
    for p in range(processes):
        ids = list(range(p, documents, processes))
        ids_file = Path(tempfile.mkdtemp(prefix="tput-")) / "ids.json"
        ids_file.write_text(json.dumps(ids))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    *(["-c", GEVENT_BOOT] if pool == "gevent" else []),
                    __file__,
                    "replay",
                    "--plan",
                    str(plan_path),
                    "--base-url",
                    base_url,
                    "--ids",
                    str(ids_file),
                    "--threads",
                    str(threads),
                    "--warmup",
                    str(warmup),
                ],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"replay process failed to start: {line!r}")
    if on_start:
        on_start()  # e.g. start CPU meters: the replays are warm and waiting
    start = time.time()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("GO\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    if on_end:
        on_end()
    wall = max(r["end"] for r in results) - start
    calls = sum(r["calls"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    plan = json.loads(plan_path.read_text())
    calls_per_doc = calls / documents
    return {
        "documents": documents,
        "concurrency": concurrency,
        "processes": processes,
        "pool": pool,
        "calls": calls,
        "calls_per_document": calls_per_doc,
        "plan_calls_per_sample": statistics.fmean(s["calls"] for s in plan["samples"]),
        "wall_s": wall,
        "calls_per_s": calls / wall,
        "documents_per_s": documents / wall,
        "cpu_s": cpu,
        "cpu_ms_per_call": 1000 * cpu / calls,
        "cpu_ms_per_document": 1000 * cpu / documents,
        "cpu_utilisation": cpu / wall,  # in cores
        "latency_ms_mean": statistics.fmean(r["latency_ms_mean"] for r in results),
        "latency_ms_p99": max(r["latency_ms_p99"] for r in results),
        "error_count": sum(r["error_count"] for r in results),
        "errors": [e for r in results for e in r["errors"]][:5],
    }


def print_bound(r: dict[str, Any], delay: float) -> None:
    latency_bound = r["concurrency"] / (r["calls_per_document"] * delay)
    print(
        f"gateway-only: {r['documents']} documents x {r['calls_per_document']:.2f} calls, "
        f"{r['concurrency']} {'greenlets' if r.get('pool') == 'gevent' else 'threads'} "
        f"in {r['processes']} process(es): {r['wall_s']:.2f} s, "
        f"{r['calls_per_s']:.1f} calls/s = {r['documents_per_s']:.2f} documents/s "
        f"(latency bound {latency_bound:.2f}); CPU {r['cpu_ms_per_call']:.2f} ms/call, "
        f"{r['cpu_ms_per_document']:.2f} ms/document, {r['cpu_utilisation']:.2f} cores; "
        f"client latency mean {r['latency_ms_mean']:.0f} ms, p99 {r['latency_ms_p99']:.0f} ms; "
        f"errors {r['error_count']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--delay", type=float, default=0.2)
    s.add_argument("--port", type=int, default=0)
    p = sub.add_parser("plan")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("replay")
    r.add_argument("--plan", type=Path, required=True)
    r.add_argument("--base-url", required=True)
    r.add_argument("--ids", type=Path, required=True)
    r.add_argument("--threads", type=int, required=True)
    r.add_argument("--warmup", type=int, default=0)
    b = sub.add_parser("run")
    b.add_argument("--documents", type=int, default=2000)
    b.add_argument("--concurrency", type=int, default=64)
    b.add_argument("--processes", type=int, default=1)
    b.add_argument("--pool", choices=POOLS, default="threads", help="threads, or greenlets under gevent")
    b.add_argument("--delay", type=float, default=0.2)
    b.add_argument("--base-url", help="an already running scripted server (default: start one)")
    b.add_argument("--plan", type=Path, help="a plan file from `plan` (default: build one)")
    b.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    if args.command == "serve":
        serve(args.delay, args.port)
    elif args.command == "plan":
        build_plan(args.out)
    elif args.command == "replay":
        replay(args.plan, args.base_url, json.loads(args.ids.read_text()), args.threads, args.warmup)
    else:
        plan = args.plan or make_plan()
        server = None if args.base_url else ServerProc(args.delay)
        try:
            base_url = args.base_url or server.base_url  # type: ignore[union-attr]
            result = run_bound(
                plan_path=plan,
                base_url=base_url,
                documents=args.documents,
                concurrency=args.concurrency,
                processes=args.processes,
                on_start=server.reset if server else None,
                pool=args.pool,
            )
            if server:
                result["server"] = server.stats()
        finally:
            if server:
                server.stop()
        print_bound(result, args.delay)
        if "server" in result:
            print(f"scripted server: {json.dumps(result['server'])}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
