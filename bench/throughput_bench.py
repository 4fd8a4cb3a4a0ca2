"""Pipeline throughput: documents through real Celery workers (Redis broker, PostgreSQL) against the scripted
model server answering after a fixed delay, beside the latency bound and the gateway-only bound of the same run.

Run from the repository root (PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379; see bench/THROUGHPUT.md):

    .venv/bin/python bench/throughput_bench.py [--documents 2000] [--concurrency 64] [--processes 1]
        [--delay 0.2] [--conn-max-age 60] [--warmup 64] [--profile-docs 150] [--skip-gateway]
        [--skip-profile] [--json FILE] [--profile-out FILE]

What it does, in order (every phase uses the same scripted server process):

1. Recreates the database `reviewapp_tput` (override with TPUT_DATABASE_URL), migrates it, empties Redis db 12
   (TPUT_BROKER_URL), seeds a workspace and the demo invoice/receipt types.
2. Starts the scripted OpenAI-compatible server (bench/gateway_bench.py serve) in its own process: every answer
   is the offline model's answer to the prompt, sent after exactly --delay seconds.
3. Gateway-only bound: bench/gateway_bench.py replays the app's own litellm calls for the same documents at the
   same concurrency and process layout, with no Django, Celery or database.
4. Celery: starts --processes `celery -A reviewapp worker --pool=threads --concurrency=C/P` processes on a private
   queue, warms them up with --warmup documents, bulk-inserts --documents queued documents (the 18 samples in
   turn), queues them as a bulk import is queued (services.enqueue_extractions: --batch documents to a task
   message, 8 by default; --batch 1 sends one extract_document each, as single uploads are), and times first publish -> last document terminal (the
   largest Document.updated_at). Worker, server, PostgreSQL and machine CPU are read from /proc around it.
   Calls per document are counted from the LLMCall rows.
5. Profile: the same extraction_execute, in this process, one document at a time with the server answering at
   once: pass 1 times named stages in thread CPU time with every litellm entry point's CPU taken out; pass 2
   runs cProfile (thread CPU clock) with profiling switched off inside litellm, so its table lists only the
   app's own CPU outside litellm.

Bounds: latency bound = concurrency / (calls per document x delay); gateway bound = the replay's documents/s.
App CPU per document outside litellm: the profile's figure (pass 1) and, under load, worker CPU per document
minus the replay's CPU per document.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gateway_bench  # noqa: E402

DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/reviewapp_tput"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/12"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc ---------------------------------------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` (0.0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class CpuMeter:
    """CPU used between start() and stop() by our processes, PostgreSQL, Redis and the whole machine.

    A thread re-reads every process twice a second, so a process that exits in between (a PostgreSQL backend
    whose client reconnects, say) still counts up to its last reading instead of vanishing from the sum.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]], interval: float = 0.5) -> None:
        self.groups = groups
        self.interval = interval

    def _read(self) -> dict[str, dict[int, float]]:
        return {g: {pid: proc_cpu(pid) for pid in f()} for g, f in self.groups.items()}

    def _snap(self) -> dict[str, Any]:
        return {"groups": self._read(), "machine": machine_busy(), "wall": time.monotonic()}

    def _remember(self, reading: dict[str, dict[int, float]]) -> None:
        for g, pids in reading.items():
            for pid, cpu in pids.items():
                if cpu > 0.0:  # 0.0: gone between listing and reading
                    self.last[g][pid] = cpu

    def _poll(self) -> None:
        while not self.done.wait(self.interval):
            self._remember(self._read())

    def start(self) -> None:
        self.before = self._snap()
        self.last: dict[str, dict[int, float]] = {g: dict(pids) for g, pids in self.before["groups"].items()}
        self.done = threading.Event()
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.poller.start()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.poller.join()
        after = self._snap()
        self._remember(after["groups"])
        out: dict[str, float] = {}
        for g, pids in self.last.items():
            before = self.before["groups"][g]
            out[g] = sum(cpu - before.get(pid, 0.0) for pid, cpu in pids.items())
        busy0, total0 = self.before["machine"]
        busy1, total1 = after["machine"]
        wall = after["wall"] - self.before["wall"]
        out["machine_busy"] = busy1 - busy0
        out["others"] = out["machine_busy"] - sum(out[g] for g in self.groups)
        out["machine_cores_busy"] = (busy1 - busy0) / wall if wall else 0.0
        out["machine_cores"] = (total1 - total0) / wall if wall else 0.0
        out["wall"] = wall
        return out


# --- set-up ------------------------------------------------------------------------------------------------------
def admin_url(db_url: str) -> str:
    return urlunsplit(urlsplit(db_url)._replace(path="/postgres"))


def recreate_database(db_url: str) -> None:
    import psycopg
    from psycopg import sql

    name = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(admin_url(db_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def pg_stats(db_url: str) -> dict[str, Any]:
    """Sessions opened so far, backends now and their pids, for the bench database."""
    import psycopg

    name = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(admin_url(db_url), autocommit=True) as conn:
        sessions, backends = conn.execute(
            "SELECT sessions, numbackends FROM pg_stat_database WHERE datname = %s", [name]
        ).fetchone()
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [name])]
        total = conn.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0]
        max_conn = int(conn.execute("SHOW max_connections").fetchone()[0])
    return {"sessions": sessions, "backends": backends, "pids": pids, "all_backends": total, "max": max_conn}


def configure(args: argparse.Namespace, llm_config: Path, queue: str) -> dict[str, str]:
    """Set this process's environment for Django and return the workers' environment."""
    env = {
        "DATABASE_URL": args.db_url,
        "CELERY_BROKER_URL": args.broker_url,
        "CELERY_QUEUE": queue,
        "REVIEWAPP_LLM_CONFIG": str(llm_config),
        "SECRET_KEY": "bench-only-not-a-secret-" + "x" * 32,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DB_CONN_MAX_AGE": str(args.conn_max_age),
        "DEBUG": "0",
        "REVIEWAPP_INPROCESS_WORKER": "0",
        "DJANGO_SETTINGS_MODULE": "reviewapp.settings",
        "LOG_LEVEL": args.log_level,
    }
    os.environ.update(env)
    return env


def flush_broker(broker_url: str) -> None:
    import redis

    redis.Redis.from_url(broker_url).flushdb()  # db 12 is this bench's own


# --- documents ------------------------------------------------------------------------------------------------
class Corpus:
    """The 18 samples as the app stores them (text, kind, hash), with their type; document i is sample i % 18."""

    def __init__(self, plan: dict[str, Any]) -> None:
        from django.conf import settings

        from extraction.documents import extract_text
        from reviewapp.models import Document, DocumentType

        types = {t.slug: t for t in DocumentType.objects.all()}
        self.samples = []
        for s in plan["samples"]:
            data = bytes.fromhex(s["data_hex"])
            extracted = extract_text(data, s["filename"], None, max_bytes=settings.REVIEWAPP_MAX_UPLOAD_BYTES)
            assert extracted.text == s["text"], f"{s['name']}: the plan's text differs from the app's"
            self.samples.append(
                {
                    "filename": s["filename"],
                    "type": types[s["type"]],
                    "kind": extracted.kind,
                    "text": extracted.text,
                    "pages": [list(p) for p in extracted.pages],
                    "sha": Document.hash_bytes(data),
                    "size": len(data),
                    "ops": s["ops"],
                }
            )

    def create(self, workspace: Any, count: int, offset: int = 0) -> list[int]:
        """Bulk-insert `count` queued documents; return their ids in insertion order."""
        from reviewapp.models import Document

        rows = []
        for i in range(offset, offset + count):
            s = self.samples[i % len(self.samples)]
            rows.append(
                Document(
                    workspace=workspace,
                    document_type=s["type"],
                    filename=s["filename"],
                    kind=s["kind"],
                    size_bytes=s["size"],
                    sha256=s["sha"],
                    text=s["text"],
                    pages=s["pages"],
                    status=Document.Status.QUEUED,
                )
            )
        return [d.pk for d in Document.objects.bulk_create(rows, batch_size=500)]


def publish(ids: list[int], batch: int) -> None:
    """Queue the documents as the app queues a bulk import: services.enqueue_extractions, `batch` documents
    to a task message (REVIEWAPP_EXTRACT_BATCH; 1 sends one extract_document per document, as single
    uploads do)."""
    from django.conf import settings

    from reviewapp import services

    settings.REVIEWAPP_EXTRACT_BATCH = batch
    services.enqueue_extractions(ids)  # outside a transaction: sent at once


def wait_terminal(ids: list[int], timeout: float, poll: float = 0.25) -> float:
    """Wait until every document is terminal; return the monotonic time it was seen so."""
    from reviewapp.models import Document

    lo, hi = min(ids), max(ids)
    deadline = time.monotonic() + timeout
    while True:
        left = (
            Document.objects.filter(pk__gte=lo, pk__lte=hi)
            .exclude(status__in=list(Document.TERMINAL))
            .count()
        )
        if not left:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} documents still not terminal after {timeout:.0f} s")
        time.sleep(poll)


# --- workers --------------------------------------------------------------------------------------------------
# `python -c BOOT PATCH celery-args…`: a celery worker that first runs PATCH's apply() (see --patch).
BOOT = (
    "import sys, runpy\n"
    "from celery.signals import worker_init\n"
    "patch = sys.argv.pop(1)\n"
    "def _apply(**kwargs):\n"
    "    import django; django.setup(); runpy.run_path(patch)['apply']()\n"
    "worker_init.connect(_apply, weak=False)\n"
    "from celery.__main__ import main\n"
    "sys.argv[0] = 'celery'\n"
    "main()\n"
)


class Workers:
    def __init__(
        self,
        processes: int,
        threads: int,
        queue: str,
        env: dict[str, str],
        logdir: Path,
        patch: Path | None = None,
        pool: str = "threads",
    ) -> None:
        self.names = [f"{queue}-{i}@tput" for i in range(processes)]
        self.procs = []
        self.logs = []
        for i, name in enumerate(self.names):
            log = (logdir / f"worker-{i}.log").open("wb")
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        *(["-c", BOOT, str(patch)] if patch else ["-m", "celery"]),
                        "-A",
                        "reviewapp",
                        "worker",
                        f"--pool={pool}",
                        f"--concurrency={threads}",
                        "--without-mingle",
                        "--without-gossip",
                        "--without-heartbeat",
                        f"--loglevel={env['LOG_LEVEL']}",
                        "-Q",
                        queue,
                        "-n",
                        name,
                    ],
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_ready(self, timeout: float = 90) -> None:
        from reviewapp.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a worker exited with {p.returncode}; see its log")
            replies = app.control.ping(destination=self.names, timeout=1.0)
            if len(replies) == len(self.names):
                return
        raise TimeoutError("the workers did not answer a ping")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


# --- the Celery run -----------------------------------------------------------------------------------------
def celery_run(
    args: argparse.Namespace,
    corpus: Corpus,
    workspace: Any,
    server: gateway_bench.ServerProc,
    env: dict[str, str],
    logdir: Path,
) -> dict[str, Any]:
    from django.db.models import Avg, Count, Max

    from reviewapp.models import Document, ExtractionRun, LLMCall

    threads = max(1, args.concurrency // args.processes)
    workers = Workers(args.processes, threads, env["CELERY_QUEUE"], env, logdir, args.patch, args.pool)
    try:
        workers.wait_ready()
        if args.warmup:
            warm = corpus.create(workspace, args.warmup)
            publish(warm, args.batch)
            wait_terminal(warm, timeout=300)
        ids = corpus.create(workspace, args.documents, offset=args.warmup)
        meter = CpuMeter(
            {
                "workers": lambda: workers.pids,
                "server": lambda: [server.pid],
                "bench": lambda: [os.getpid()],
                "postgres": lambda: pids_named("postgres"),
                "redis": lambda: pids_named("redis-server"),
            }
        )
        pg0 = pg_stats(args.db_url)
        server.reset()
        meter.start()
        t0_wall, t0 = time.time(), time.monotonic()
        publish(ids, args.batch)
        published = time.monotonic() - t0
        seen = wait_terminal(ids, timeout=max(600.0, args.documents * 0.5)) - t0
        cpu = meter.stop()
        pg1 = pg_stats(args.db_url)
        server_stats = server.stats()
    finally:
        workers.stop()

    docs = Document.objects.filter(pk__in=ids)
    last = docs.aggregate(m=Max("updated_at"))["m"].timestamp()
    wall = last - t0_wall
    statuses = dict(docs.values_list("status").annotate(n=Count("id")).order_by())
    calls = LLMCall.objects.filter(document_id__in=ids)
    steps = dict(calls.values_list("step").annotate(n=Count("id")).order_by())
    n_calls = sum(steps.values())
    errors = calls.exclude(error_class="").count()
    runs = list(ExtractionRun.objects.filter(document_id__in=ids).values_list("duration_ms", "attempts"))
    durations = [d for d, _ in runs if d is not None]
    retried = sum(1 for _, a in runs if a and a > 1)
    failed_reasons = list(
        docs.filter(status=Document.Status.FAILED).values_list("status_reason", flat=True)[:5]
    )
    same = compare_messages(corpus, ids, args.warmup)
    calls_per_doc = n_calls / len(ids)
    return {
        "documents": len(ids),
        "processes": args.processes,
        "threads_per_process": threads,
        "pool": args.pool,
        "batch": args.batch,
        "concurrency": threads * args.processes,
        "conn_max_age": args.conn_max_age,
        "wall_s": wall,
        "wall_polled_s": seen,
        "publish_s": published,
        "documents_per_s": len(ids) / wall,
        "statuses": statuses,
        "failed_reasons": failed_reasons,
        "calls": n_calls,
        "calls_by_step": steps,
        "call_errors": errors,
        "calls_per_document": calls_per_doc,
        "runs_with_retries": retried,
        "llm_latency_ms_mean": calls.aggregate(a=Avg("latency_ms"))["a"],
        "run_duration_ms_p50": gateway_bench.percentile(durations, 0.5),
        "run_duration_ms_p95": gateway_bench.percentile(durations, 0.95),
        "cpu_s": cpu,
        "worker_cpu_ms_per_document": 1000 * cpu["workers"] / len(ids),
        "postgres_cpu_ms_per_document": 1000 * cpu["postgres"] / len(ids),
        "server_cpu_ms_per_call": 1000 * cpu["server"] / max(1, n_calls),
        "pg_sessions_opened": pg1["sessions"] - pg0["sessions"],
        "pg_backends_during": pg0["backends"],
        "pg_all_backends_during": pg0["all_backends"],
        "pg_max_connections": pg0["max"],
        "server": server_stats,
        "messages_match_plan": same,
    }


def compare_messages(corpus: Corpus, ids: list[int], offset: int) -> str:
    """Check the workers sent the very prompts the gateway replay sends (first document of each sample)."""
    from reviewapp.models import LLMCall

    n = len(corpus.samples)
    checked = matched = 0
    for i, pk in enumerate(ids[:n]):
        sample = corpus.samples[(offset + i) % n]
        planned = [op[1]["kwargs"]["messages"] for op in sample["ops"] if op[0] == "complete"]
        sent = list(LLMCall.objects.filter(document_id=pk).order_by("id").values_list("messages", flat=True))
        checked += 1
        matched += int(planned == sent)
    return f"{matched}/{checked}"


# --- the profile ---------------------------------------------------------------------------------------------
LITELLM_ENTRY_POINTS = [
    "token_counter",
    "get_model_info",
    "supports_response_schema",
    "get_supported_openai_params",
    "completion_cost",
    "stream_chunk_builder",
]

STAGES = [  # (module[:class], attribute, label); nested stages are reported inside their parent too
    ("reviewapp.services", "_claim", "services._claim (claim UPDATE + SELECT + fields)"),
    ("reviewapp.services", "route_prompt", "services.route_prompt (active prompt)"),
    ("reviewapp.services", "run_pipeline", "services.run_pipeline (all indented below)"),
    ("reviewapp.models:DocumentType", "to_schema", "  DocumentType.to_schema (prefetched fields)"),
    ("reviewapp.services", "classify_candidates", "  services.classify_candidates (cached)"),
    ("reviewapp.services:CallLog", "add", "  CallLog.add (LLMCall rows held), 3/doc"),
    ("extraction.pipeline", "classify_messages", "  prompts.classify_messages"),
    ("extraction.pipeline", "extract_messages", "  prompts.extract_messages (2/doc)"),
    ("extraction.pipeline", "verify_messages", "  prompts.verify_messages"),
    ("extraction.pipeline", "extraction_json_schema", "  schemas.extraction_json_schema"),
    ("extraction.pipeline", "parse_model", "  parsing.parse_model (classify, verify)"),
    ("extraction.pipeline", "parse_extraction", "  parsing.parse_extraction"),
    ("extraction.pipeline", "gate", "  gating.gate (per field)"),
    ("extraction.gateway:Gateway", "complete", "  Gateway.complete outside litellm (breaker below)"),
    ("extraction.breaker:CircuitBreaker", "allow", "    CircuitBreaker.allow (Redis HGETALL)"),
    ("extraction.breaker:CircuitBreaker", "record_success", "    CircuitBreaker.record_success (Redis)"),
    ("reviewapp.services", "_store_result", "services._store_result (results transaction)"),
    ("reviewapp.services:CallLog", "flush", "  CallLog.flush (one LLMCall INSERT)"),
]


class _RouterProxy:
    """The Gateway's litellm Router with its completion() wrapped (the Router itself is a facade over a core)."""

    def __init__(self, router: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        self._router = router
        self.completion = wrap(router.completion)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._router, name)


def wrapped_router(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> property:
    from extraction.gateway import Gateway

    original = Gateway.__dict__["router"]
    return property(lambda gateway: _RouterProxy(original.fget(gateway), wrap))


class StageTimer:
    """Thread CPU time per named function, with the CPU of nested litellm entry points taken out."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.litellm = 0.0
        self._inside_litellm = 0
        self._stack: list[float] = []  # litellm CPU accumulated while each open stage runs
        self.patches: list[tuple[Any, str, Any]] = []

    def _patch(self, owner: Any, name: str, wrapper: Any) -> None:
        self.patches.append(
            (owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name))
        )
        setattr(owner, name, wrapper)

    def install(self) -> None:
        import importlib

        import litellm

        from extraction.gateway import Gateway

        def litellm_wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*a: Any, **k: Any) -> Any:
                if self._inside_litellm:
                    return fn(*a, **k)
                self._inside_litellm += 1
                start = time.thread_time()
                try:
                    return fn(*a, **k)
                finally:
                    spent = time.thread_time() - start
                    self._inside_litellm -= 1
                    self.litellm += spent
                    self._stack = [s + spent for s in self._stack]

            return wrapper

        for name in LITELLM_ENTRY_POINTS:
            self._patch(litellm, name, litellm_wrap(getattr(litellm, name)))
        self._patch(Gateway, "router", wrapped_router(litellm_wrap))

        for where, attr, label in STAGES:
            module, _, cls = where.partition(":")
            owner: Any = importlib.import_module(module)
            if cls:
                owner = getattr(owner, cls)
            original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            self._patch(owner, attr, self._stage(original, label))

    def _stage(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            self._stack.append(0.0)
            start = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                spent = time.thread_time() - start
                inner_litellm = self._stack.pop()
                self.totals[label] += spent - inner_litellm

        return wrapper

    def uninstall(self) -> None:
        for owner, name, original in reversed(self.patches):
            setattr(owner, name, original)
        self.patches.clear()


class LitellmElsewhere:
    """While installed, every litellm entry point runs in a helper thread, so a profiler of this thread
    (cProfile profiles only the thread that enabled it, with the thread CPU clock here) sees the app alone."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="litellm-elsewhere")
        self.helper: set[int] = set()
        self.patches: list[tuple[Any, str, Any]] = []

    def install(self) -> None:
        import threading

        import litellm

        from extraction.gateway import Gateway

        self.pool.submit(lambda: self.helper.add(threading.get_ident())).result()

        def elsewhere(fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*a: Any, **k: Any) -> Any:
                if threading.get_ident() in self.helper:
                    return fn(*a, **k)
                return self.pool.submit(fn, *a, **k).result()

            return wrapper

        for name in LITELLM_ENTRY_POINTS:
            self.patches.append((litellm, name, getattr(litellm, name)))
            setattr(litellm, name, elsewhere(getattr(litellm, name)))
        self.patches.append((Gateway, "router", Gateway.__dict__["router"]))
        Gateway.router = wrapped_router(elsewhere)  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        for owner, name, original in reversed(self.patches):
            setattr(owner, name, original)
        self.pool.shutdown()


def bucket(filename: str) -> str:
    """Group a profiled function's file into a package (what the CPU is spent on)."""
    f = filename.replace("\\", "/")
    if "concurrent/futures" in f or f.endswith("threading.py") or "bench/throughput_bench" in f:
        return "bench (litellm hand-off)"
    if "site-packages/" in f:
        return f.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if f.startswith(str(ROOT)):
        rel = f[len(str(ROOT)) + 1 :]
        return rel.split("/", 1)[0] + "/" + rel.rsplit("/", 1)[-1] if "/" in rel else rel
    if f.startswith("~") or f.startswith("<"):
        return "builtins (C)"
    if "/lib/python3" in f:
        rest = f.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return "stdlib " + rest.split("/", 1)[0].removesuffix(".py")
    return f


def profile_run(
    args: argparse.Namespace, corpus: Corpus, workspace: Any, server: gateway_bench.ServerProc
) -> dict[str, Any]:
    from django.db import connection

    from reviewapp import llm, services

    server.set_delay(0.0)
    if args.patch:
        import runpy

        runpy.run_path(str(args.patch))["apply"]()
    llm.reset()
    n = args.profile_docs

    def run(ids: list[int]) -> None:
        for pk in ids:
            outcome = services.extraction_execute(document_id=pk, token=uuid.uuid4().hex)
            assert outcome in ("needs_review", "auto_accepted"), outcome

    run(corpus.create(workspace, 36, offset=10_000))  # warm: Router, HTTP client, lazy imports, connection

    # pass 1: named stages, and CPU in litellm vs outside it (thread CPU clock, no profiler overhead)
    timer = StageTimer()
    timer.install()
    ids = corpus.create(workspace, n, offset=20_000)
    connection.ensure_connection()
    start = time.thread_time()
    try:
        run(ids)
    finally:
        timer.uninstall()
    total = time.thread_time() - start
    stages = {label: 1000 * v / n for label, v in timer.totals.items()}

    # pass 2: cProfile of the same with litellm run in a helper thread, so the table is the app's own CPU
    profiler = cProfile.Profile(time.thread_time)
    off = LitellmElsewhere()
    ids = corpus.create(workspace, n, offset=30_000)
    off.install()
    try:
        profiler.enable()
        run(ids)
        profiler.disable()
    finally:
        off.uninstall()
    stats = pstats.Stats(profiler)
    profiled_total = sum(v[2] for v in stats.stats.values())  # tottime: self CPU
    by_bucket: dict[str, float] = defaultdict(float)
    for (filename, _, _), v in stats.stats.items():
        by_bucket[bucket(filename)] += v[2]
    top_self = sorted(
        ((v[2], f"{bucket(fn)}:{line}({name})", v[1]) for (fn, line, name), v in stats.stats.items()),
        reverse=True,
    )[:25]
    top_cum = sorted(
        (
            (v[3], f"{bucket(fn)}:{line}({name})", v[1])
            for (fn, line, name), v in stats.stats.items()
            if fn.startswith(str(ROOT)) and "site-packages" not in fn and "/bench/" not in fn
        ),
        reverse=True,
    )[:25]
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(60)
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(60)
    if args.profile_out:
        args.profile_out.write_text(text.getvalue())
        profiler.dump_stats(str(args.profile_out.with_suffix(".prof")))
    server.set_delay(args.delay)
    return {
        "documents": n,
        "cpu_ms_per_document": 1000 * total / n,
        "litellm_cpu_ms_per_document": 1000 * timer.litellm / n,
        "app_cpu_ms_per_document": 1000 * (total - timer.litellm) / n,
        "stages_ms_per_document": stages,
        "cprofile_app_cpu_ms_per_document": 1000 * profiled_total / n,
        "cprofile_by_package_ms_per_document": {
            k: 1000 * v / n for k, v in sorted(by_bucket.items(), key=lambda kv: -kv[1])
        },
        "cprofile_top_self_ms_per_document": [(name, 1000 * t / n, calls / n) for t, name, calls in top_self],
        "cprofile_top_cumulative_ms_per_document": [
            (name, 1000 * t / n, calls / n) for t, name, calls in top_cum
        ],
    }


# --- report ------------------------------------------------------------------------------------------------------
def rounds_summary(rounds: list[dict[str, Any]]) -> str:
    """Each round's ratio to the mean of the bounds measured just before and just after it, and their median:
    the host's speed drifts by up to 30 % within minutes, so one round can read ten points high or low."""
    plain, normalised, beyond = [], [], []
    for r in rounds:
        c, g, after = r["celery"], r.get("gateway"), r.get("gateway_after")
        if not g:
            continue
        bound = [x for x in (g, after) if x]
        docs = sum(x["documents_per_s"] for x in bound) / len(bound)
        replay = sum(x["cpu_ms_per_document"] for x in bound) / len(bound)
        plain.append(100 * c["documents_per_s"] / docs)
        normalised.append(100 * replay / c["worker_cpu_ms_per_document"])
        beyond.append(c["worker_cpu_ms_per_document"] - replay)
    if not plain:
        return "rounds: no gateway bound measured"

    def listed(xs: list[float], unit: str) -> str:
        return f"{', '.join(f'{x:.1f}' for x in xs)}{unit}; median {statistics.median(xs):.1f}{unit}"

    return "\n".join(
        [
            f"rounds: {len(plain)}, each against the mean of the bounds just before and after it",
            f"  ratio to the gateway bound: {listed(plain, ' %')} (target >= 85 %)",
            f"  CPU-normalised: {listed(normalised, ' %')}",
            f"  worker CPU/document beyond the replay: {listed(beyond, ' ms')}",
        ]
    )


def report(result: dict[str, Any], delay: float) -> str:
    lines = []
    c = result.get("celery")
    g = result.get("gateway")
    p = result.get("profile")
    after = result.get("gateway_after")
    if g and after and c:
        lines.append(
            f"gateway-only bound before / after the Celery phase: {g['documents_per_s']:.2f} / "
            f"{after['documents_per_s']:.2f} documents/s, replay CPU {g['cpu_ms_per_document']:.1f} / "
            f"{after['cpu_ms_per_document']:.1f} ms/document: the figures below use their mean"
        )
        g = {
            **g,
            **{k: (g[k] + after[k]) / 2 for k in ("documents_per_s", "calls_per_s", "cpu_ms_per_call",
                                                    "cpu_ms_per_document", "cpu_utilisation")},
            "machine_cores_busy": max(g.get("machine_cores_busy", 0), after.get("machine_cores_busy", 0)),
            "other_processes_cores": max(g.get("other_processes_cores", 0), after.get("other_processes_cores", 0)),
            "server": {
                "cpu_s": g["server"]["cpu_s"] + after["server"]["cpu_s"],
                "requests": g["server"]["requests"] + after["server"]["requests"],
            },
        }  # fmt: skip
    if c:
        latency_bound = c["concurrency"] / (max(c["calls_per_document"], 1e-9) * delay)
        lines.append(
            f"Celery: {c['documents']} documents, {c['processes']} x {c['threads_per_process']} "
            f"{'greenlets' if c.get('pool') == 'gevent' else 'threads'}, "
            f"{c.get('batch', 1)} documents per task message, "
            f"CONN_MAX_AGE={c['conn_max_age']}: {c['wall_s']:.1f} s -> {c['documents_per_s']:.2f} documents/s "
            f"(publish {c['publish_s']:.1f} s; statuses {c['statuses']})"
        )
        lines.append(
            f"  calls/document {c['calls_per_document']:.3f} {c['calls_by_step']}, errors {c['call_errors']}, "
            f"runs retried {c['runs_with_retries']}, LLM latency mean {c['llm_latency_ms_mean'] or 0:.0f} ms, "
            f"run p50/p95 {c['run_duration_ms_p50']:.0f}/{c['run_duration_ms_p95']:.0f} ms"
        )
        cpu = c["cpu_s"]
        lines.append(
            f"  CPU s: workers {cpu['workers']:.1f}, server {cpu['server']:.1f}, postgres {cpu['postgres']:.1f}, "
            f"redis {cpu['redis']:.1f}, bench {cpu['bench']:.1f}, other processes {cpu['others']:.1f}; machine "
            f"busy {cpu['machine_busy']:.1f} = {cpu['machine_cores_busy']:.2f} of {cpu['machine_cores']:.2f} cores"
        )
        lines.append(
            f"  worker CPU {c['worker_cpu_ms_per_document']:.1f} ms/document, postgres "
            f"{c['postgres_cpu_ms_per_document']:.1f} ms/document, server {c['server_cpu_ms_per_call']:.2f} "
            f"ms/call; PostgreSQL sessions opened {c['pg_sessions_opened']} "
            f"({c['pg_sessions_opened'] / c['documents']:.2f}/document), backends {c['pg_backends_during']} "
            f"(all {c['pg_all_backends_during']} of {c['pg_max_connections']}); prompts match replay "
            f"{c['messages_match_plan']}"
        )
        lines.append(f"  server: {json.dumps(c['server'])}")
        lines.append(
            f"latency bound: {c['concurrency']} / ({c['calls_per_document']:.3f} x {delay}) = {latency_bound:.2f} documents/s"
        )
        bounds = [("latency", latency_bound)]
        if g:
            bounds.append(("gateway", g["documents_per_s"]))
            lines.append(
                f"gateway-only bound: {g['documents_per_s']:.2f} documents/s ({g['calls_per_s']:.1f} calls/s, "
                f"{g['cpu_ms_per_call']:.2f} ms CPU/call, {g['cpu_ms_per_document']:.1f} ms CPU/document, "
                f"{g['cpu_utilisation']:.2f} cores, machine {g.get('machine_cores_busy', 0):.2f} cores busy, other "
                f"processes {g.get('other_processes_cores', 0):.2f} cores)"
            )
        name, lower = min(bounds, key=lambda b: b[1])
        lines.append(
            f"ratio: {c['documents_per_s']:.2f} / {lower:.2f} ({name} bound) = "
            f"{100 * c['documents_per_s'] / lower:.1f} % (target >= 85 %)"
        )
        if g:
            lines.append(
                f"CPU-normalised ratio (same cores for both): replay CPU/document / worker CPU/document = "
                f"{g['cpu_ms_per_document']:.1f} / {c['worker_cpu_ms_per_document']:.1f} = "
                f"{100 * g['cpu_ms_per_document'] / c['worker_cpu_ms_per_document']:.1f} %"
            )
            # The host's CPU speed drifts between phases (it is shared); the scripted server does the same work
            # per call in both, so its CPU per call says how fast the host was in each phase.
            gw_server = 1000 * g["server"]["cpu_s"] / max(1, g["server"]["requests"])
            speed = c["server_cpu_ms_per_call"] / gw_server
            lines.append(
                f"host speed check: scripted server CPU/call {gw_server:.2f} ms (gateway phase), "
                f"{c['server_cpu_ms_per_call']:.2f} ms (Celery phase); speed-normalised ratio = "
                f"{100 * g['cpu_ms_per_document'] / c['worker_cpu_ms_per_document']:.1f} % x {speed:.2f} = "
                f"{100 * speed * g['cpu_ms_per_document'] / c['worker_cpu_ms_per_document']:.1f} %"
            )
            outside = c["worker_cpu_ms_per_document"] - g["cpu_ms_per_document"]
            lines.append(
                f"worker CPU/document - replay CPU/document = {c['worker_cpu_ms_per_document']:.1f} - "
                f"{g['cpu_ms_per_document']:.1f} = {outside:.1f} ms (the app outside litellm under load, "
                "Celery included)"
            )
    if p:
        lines.append(
            f"profile ({p['documents']} documents in-process, sequential): {p['cpu_ms_per_document']:.1f} ms "
            f"CPU/document = litellm {p['litellm_cpu_ms_per_document']:.1f} + app outside litellm "
            f"{p['app_cpu_ms_per_document']:.1f} (target < 5)"
        )
        lines.append("  stages (thread CPU ms/document, litellm excluded):")
        for label, ms in p["stages_ms_per_document"].items():
            lines.append(f"    {ms:7.2f}  {label}")
        lines.append(
            f"  cProfile, litellm in another thread: {p['cprofile_app_cpu_ms_per_document']:.1f} ms/document "
            "(profiler overhead included); self CPU by package:"
        )
        for k, v in list(p["cprofile_by_package_ms_per_document"].items())[:12]:
            lines.append(f"    {v:7.2f}  {k}")
        lines.append("  top self CPU (ms/document, calls/document):")
        for name, ms, calls in p["cprofile_top_self_ms_per_document"][:15]:
            lines.append(f"    {ms:7.3f}  {calls:6.1f}  {name}")
        lines.append("  top cumulative, project code (ms/document, calls/document):")
        for name, ms, calls in p["cprofile_top_cumulative_ms_per_document"][:15]:
            lines.append(f"    {ms:7.3f}  {calls:6.1f}  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes (concurrency split evenly)"
    )
    parser.add_argument("--delay", type=float, default=0.2, help="the scripted server's answer time, seconds")
    parser.add_argument("--conn-max-age", type=int, default=60, help="DB_CONN_MAX_AGE for the workers")
    parser.add_argument("--warmup", type=int, default=64, help="documents through the workers before timing")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="documents per task message, as REVIEWAPP_EXTRACT_BATCH (the default) sends a bulk import; 1 = one "
        "extract_document per document, as single uploads are sent",
    )
    parser.add_argument("--profile-docs", type=int, default=150)
    parser.add_argument("--log-level", default="INFO", help="the workers' LOG_LEVEL and --loglevel")
    parser.add_argument(
        "--pool",
        choices=gateway_bench.POOLS,
        default="gevent",
        help="the workers' pool (`celery worker --pool`)",
    )
    parser.add_argument(
        "--gateway-pools",
        default="threads,gevent",
        help="pools the gateway-only bound is measured with (comma-separated); the highest bound is used",
    )
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument("--skip-celery", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument(
        "--patch",
        type=Path,
        help="a Python file whose apply() monkeypatches the app in the workers and the profile: measure a "
        "proposed change before making it",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Celery phases, each followed by the bound again (bound, workers, bound, workers, … bound); "
        "prints each round's ratio and their median",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile-out", type=Path)
    parser.add_argument("--db-url", default=os.environ.get("TPUT_DATABASE_URL", DEFAULT_DB_URL))
    parser.add_argument(
        "--no-sandwich",
        action="store_true",
        help="measure the gateway bound only before the Celery phase (default: before and after, and use the mean)",
    )
    parser.add_argument("--broker-url", default=os.environ.get("TPUT_BROKER_URL", DEFAULT_BROKER_URL))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tput-"))
    started = time.monotonic()
    recreate_database(args.db_url)
    flush_broker(args.broker_url)
    server = gateway_bench.ServerProc(args.delay)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "workdir": str(workdir)}
    try:
        plan_path = gateway_bench.make_plan(workdir / "plan.json")
        plan = json.loads(plan_path.read_text())
        llm_yaml = workdir / "llm.yaml"
        import yaml

        config = json.dumps(plan["llm_config"]).replace(gateway_bench.BASE_URL_PLACEHOLDER, server.base_url)
        llm_yaml.write_text(yaml.safe_dump(json.loads(config)))
        env = configure(args, llm_yaml, queue=f"tput-{uuid.uuid4().hex[:8]}")
        import django

        django.setup()
        from django.core.management import call_command

        from reviewapp import demo
        from reviewapp.models import Workspace

        call_command("migrate", verbosity=0)
        for slug, spec in demo.TYPES.items():  # in the plan's order: the classify prompt lists them so
            demo.ensure_type(slug, spec)
        workspace = Workspace.objects.create(name="Throughput", slug="tput")
        corpus = Corpus(plan)
        print(f"set-up done in {time.monotonic() - started:.0f} s (workdir {workdir})", flush=True)

        def gateway_phase(pools: list[str]) -> dict[str, Any]:
            bounds = {}
            for pool in pools:
                server.reset()
                meter = CpuMeter({"server": lambda: [server.pid], "bench": lambda: [os.getpid()]})
                cpu: dict[str, float] = {}
                g = gateway_bench.run_bound(
                    plan_path=plan_path,
                    base_url=server.base_url,
                    documents=args.documents,
                    concurrency=args.concurrency,
                    processes=args.processes,
                    on_start=meter.start,
                    on_end=lambda cpu=cpu, meter=meter: cpu.update(meter.stop()),
                    pool=pool,
                )
                g["machine_cores_busy"] = cpu["machine_cores_busy"]
                g["other_processes_cores"] = (cpu["others"] - g["cpu_s"]) / cpu["wall"]
                g["server"] = server.stats()
                bounds[pool] = g
                gateway_bench.print_bound(g, args.delay)
            return bounds

        best_pool = ""
        if not args.skip_gateway:
            # The bound is the best the gateway alone does at this concurrency: with each pool asked for, the
            # highest one is the ceiling the workers are compared with, whatever pool they run.
            bounds = gateway_phase(args.gateway_pools.split(","))
            best_pool = max(bounds, key=lambda pool: bounds[pool]["documents_per_s"])
            result["gateway_by_pool"] = bounds
            result["gateway"] = bounds[best_pool]

        if not args.skip_celery:
            rounds = []
            before = result.get("gateway")
            for _ in range(args.rounds):
                c = celery_run(args, corpus, workspace, server, env, workdir)
                print(f"celery: {c['documents_per_s']:.2f} documents/s in {c['wall_s']:.1f} s", flush=True)
                after = None
                if best_pool and not args.no_sandwich:
                    # The bound again, after the workers: the host's speed drifts over minutes, and the mean of a
                    # bound measured before and after is what the workers' phase, between them, is compared
                    # with. With --rounds the bound after one phase is the bound before the next.
                    after = gateway_phase([best_pool])[best_pool]
                rounds.append({"gateway": before, "celery": c, "gateway_after": after})
                before = after
            result["celery"], result["gateway_after"] = rounds[0]["celery"], rounds[0]["gateway_after"]
            result["rounds"] = rounds

        if not args.skip_profile:
            result["profile"] = profile_run(args, corpus, workspace, server)
    finally:
        server.stop()
    result["total_s"] = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    rounds = result.get("rounds") or []
    if len(rounds) > 1:
        for i, r in enumerate(rounds, 1):
            print(f"--- round {i} of {len(rounds)}")
            print(report({k: v for k, v in r.items() if v is not None}, args.delay))
        print("---")
        print(rounds_summary(rounds))
        print(report({"profile": result["profile"]} if result.get("profile") else {}, args.delay))
    else:
        print(report(result, args.delay))
    print(f"total {result['total_s']:.0f} s")


if __name__ == "__main__":
    main()
