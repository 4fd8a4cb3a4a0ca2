"""Load test of the review queue and the document API over HTTP, served by gunicorn, on PostgreSQL.

Run from the repository root (PostgreSQL and Redis must be reachable; figures and findings: bench/LOAD.md):

    .venv/bin/python bench/load_bench.py [--scales 10k,100k,1M] [--keep] [--drop] [--load-only]
        [--workers 3] [--threads 1] [--users 20] [--api-users 10] [--sat-clients 8[,16]]
        [--paced 60] [--api-paced 20] [--sat 15] [--phases single,paced,api,sat_page,sat_accept,sat_create,sat_get]
        [--quiet 0.8 --quiet-wait 120] [--evidence] [--json bench/out/load.json]

Data: the database `reviewapp_load` (override with LOAD_DATABASE_URL) is filled with the loader of
bench/queue_bench.py (imported, not copied): invoice-like documents of a 10-field type, 6 workspaces, ~29 %
of the fields waiting for review, other reviewers holding leases at the head of the queue. Each scale tops
the data up (10 k, 100 k, 1 M fields), then releases every lease and runs VACUUM ANALYZE (queue_bench's
prepare_queue). --keep reuses what is there instead of starting afresh (only scales >= what is loaded);
--load-only loads and stops. To re-measure 10 k and 100 k without re-loading 1 M, point LOAD_DATABASE_URL at a
second database for the small scales (bench/LOAD.md: how the published figures were run).

Server: `gunicorn reviewapp.wsgi -w W [--threads T]` on 127.0.0.1, DEBUG=0, the production settings with
PostgreSQL, Redis as the broker (db 11: nothing consumes the extraction jobs that uploads publish; the db is
flushed at the end) and as the cache. The only setting that differs is STATIC_ROOT, pointed at a
collectstatic output in a temporary folder (a settings overlay in that folder), so that the repository's
staticfiles/ is left alone. The per-user API throttle is raised (REVIEWAPP_API_USER_RATE, still evaluated
on every request) so that the saturation phases measure the server, not the 600/min limit; --throttled
keeps the default.

Clients (a self-written generator: one thread per user, http.client, latency = send to last byte, wall
clock per phase):

  single      one reviewer (page, accept) and one API user (create, retrieve), 0.2 s pauses, 10 s: the
              latency of each op with nothing else in flight (the floor).
  paced       --users reviewers (default 20), logged in once through the login form (session + CSRF),
              each looping: GET / (the full queue page: it claims a field, or returns the one held)
              -> pause 1 s -> POST /fields/<id>/decide/ action=accept with the version read from the page
              (htmx request, X-CSRFToken; the response is the next claimed field) -> pause 1 s.
              Ops: page, accept. The issue's target: p95 < 50 ms for both.
  api         --api-users token users (DRF Token), each looping: POST /api/v1/documents/ (JSON text,
              unique per request) -> pause 1 s -> GET /api/v1/documents/<id>/ of a random loaded
              document of its workspace (10 fields) -> pause 1 s. Ops: create, retrieve.
  sat_page    --sat-clients reviewers, no pause: GET / again and again (each returns the field the
              reviewer holds, extending its lease).
  sat_accept  --sat-clients reviewers, no pause: POST accept of the field shown by the previous response
              (the keyboard flow: every accept response carries the next claimed field).
  sat_create  --sat-clients token users, no pause: POST /api/v1/documents/.
  sat_get     --sat-clients token users, no pause: GET /api/v1/documents/<random id>/.

Between phases, the fields the load users accepted are re-opened (their decisions deleted, documents back
to needs_review) and the uploaded documents deleted, so every phase starts from the same queue; an accept
budget stops a phase before the queue could run dry. Per phase it samples the CPU time of the gunicorn
processes, of the PostgreSQL backends of the load database (parallel query workers are not counted), of
this generator and of the whole machine ("other" = the rest: other people's jobs on this shared machine).
"CPU calibration" times a fixed pure-Python loop: ~19-21 ms of CPU on this machine when quiet; more when other
jobs keep the other vCPU busy (the vCPUs share hardware), which inflates every CPU figure alike.
--quiet N waits before each phase (at most --quiet-wait s) until the machine uses fewer than N cores.

--evidence, at the largest scale, runs each op in-process (django.test.Client, no HTTP) with its SQL
captured: statements per request, SQL time, Python CPU, the queue's queries with EXPLAIN ANALYZE, and a
cProfile (process time) of each op written next to the JSON output.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import queue_bench as qb  # noqa: E402  (the data loader; not edited)

DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/reviewapp_load"
BROKER_URL = "redis://127.0.0.1:6379/11"
PASSWORD = "load-bench-pw-123"  # bench users in a throwaway database
REVIEWER_PREFIX = "load-rev-"
API_PREFIX = "load-api-"
API_DOC_TYPE = "invoice"  # uploads use the demo type, so queue_bench's count of bench documents is unchanged
HZ = os.sysconf("SC_CLK_TCK")
ALL_PHASES = ["single", "paced", "api", "sat_page", "sat_accept", "sat_create", "sat_get"]


# --- the database ----------------------------------------------------------------------------------------
@dataclass
class Users:
    reviewers: list[Any]
    api: list[Any]
    tokens: list[str]


def setup_django(db_url: str) -> None:
    qb.configure(db_url)
    os.environ["CELERY_BROKER_URL"] = BROKER_URL  # in-process evidence publishes like the server does
    os.environ["REVIEWAPP_API_USER_RATE"] = "1000000/min"  # as the server's: the counters are shared
    os.environ["SECRET_KEY"] = os.environ.get("SECRET_KEY") or "load-bench-only-not-a-secret-" + "x" * 32
    import warnings

    warnings.filterwarnings("ignore", message="No directory at")
    import django

    django.setup()
    from django.conf import settings
    from django.test.utils import override_settings

    if not (Path(settings.STATIC_ROOT) / "staticfiles.json").exists():  # in-process pages: unhashed URLs
        storages = {**settings.STORAGES}
        storages["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
        override_settings(STORAGES=storages).enable()


def ensure_users(ctx: qb.Ctx, n_reviewers: int, n_api: int) -> Users:
    """Reviewers in the bench reviewer's two workspaces (the same queue), API users in the first one."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from rest_framework.authtoken.models import Token

    from reviewapp.models import Membership

    User = get_user_model()
    encoded = None  # one PBKDF2 hash for all (1 M iterations each would take a while)

    def user(name: str, workspaces: list[Any]) -> Any:
        nonlocal encoded
        u, created = User.objects.get_or_create(username=name)
        if created:
            encoded = encoded or make_password(PASSWORD)
            u.password = encoded
            u.save(update_fields=["password"])
        for ws in workspaces:
            Membership.objects.get_or_create(user=u, workspace=ws)
        return u

    reviewers = [
        user(f"{REVIEWER_PREFIX}{i:02}", ctx.workspaces[: qb.REVIEWER_WORKSPACES]) for i in range(n_reviewers)
    ]
    api = [user(f"{API_PREFIX}{i:02}", ctx.workspaces[:1]) for i in range(n_api)]
    tokens = [Token.objects.get_or_create(user=u)[0].key for u in api]
    return Users(reviewers, api, tokens)


def restore(users: Users) -> dict[str, int]:
    """Undo what the load did: re-open the fields the load users decided, delete their decisions and the
    uploaded documents, release their leases."""
    from django.db import connection, transaction

    rev_ids = [u.pk for u in users.reviewers]
    api_ids = [u.pk for u in users.api]
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(
            "DELETE FROM reviewapp_reviewdecision WHERE reviewer_id = ANY(%s) "
            "RETURNING field_value_id, document_id",
            [rev_ids],
        )
        rows = cur.fetchall()
        fields = sorted({r[0] for r in rows})
        docs = sorted({r[1] for r in rows})
        cur.execute(
            "UPDATE reviewapp_fieldvalue SET status = 'needs_review', final_value = NULL, reviewer_id = NULL, "
            "reviewed_at = NULL, version = 1, claimed_by_id = NULL, claim_expires_at = NULL "
            "WHERE id = ANY(%s)",
            [fields],
        )
        cur.execute(
            "UPDATE reviewapp_document SET status = 'needs_review' WHERE id = ANY(%s) AND status = 'reviewed'",
            [docs],
        )
        cur.execute(
            "UPDATE reviewapp_fieldvalue SET claimed_by_id = NULL, claim_expires_at = NULL "
            "WHERE claimed_by_id = ANY(%s)",
            [rev_ids],
        )
        cur.execute("SELECT count(*) FROM reviewapp_document WHERE created_by_id = ANY(%s)", [api_ids])
        uploads = cur.fetchone()[0]
    if uploads:
        from reviewapp.models import Document

        Document.objects.filter(created_by_id__in=api_ids).delete()
    return {"reopened": len(fields), "uploads_deleted": uploads}


def open_for_load(ctx: qb.Ctx) -> int:
    from django.db import connection

    ws_ids = [w.pk for w in ctx.workspaces[: qb.REVIEWER_WORKSPACES]]
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM reviewapp_fieldvalue WHERE status = 'needs_review' AND workspace_id = ANY(%s)",
            [ws_ids],
        )
        return cur.fetchone()[0]


def sample_doc_ids(ctx: qb.Ctx, n: int = 5000) -> list[int]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT id FROM reviewapp_document WHERE workspace_id = %s AND document_type_id = %s "
            "ORDER BY random() LIMIT %s",
            [ctx.workspaces[0].pk, ctx.doc_type.pk, n],
        )
        return [r[0] for r in cur.fetchall()]


def vacuum(tables: list[str]) -> float:
    from django.db import connection

    t0 = time.perf_counter()
    with connection.cursor() as cur:
        for t in tables:
            cur.execute(f"VACUUM ANALYZE {t}")
    return time.perf_counter() - t0


# --- the server ------------------------------------------------------------------------------------------
class Server:
    """gunicorn reviewapp.wsgi on a free loopback port, with a settings overlay that only moves STATIC_ROOT."""

    def __init__(
        self,
        db_url: str,
        workers: int,
        threads: int,
        throttled: bool,
        tmp: Path,
    ) -> None:
        self.tmp = tmp
        self.workers, self.threads = workers, threads
        self.port = _free_port()
        (tmp / "load_settings.py").write_text(
            "from pathlib import Path\n"
            "from reviewapp.settings import *  # noqa: F403\n"
            f"STATIC_ROOT = Path({str(tmp / 'static')!r})\n"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REVIEWAPP_"))},
            "DJANGO_SETTINGS_MODULE": "load_settings",
            "PYTHONPATH": f"{tmp}:{ROOT}",
            "DATABASE_URL": db_url,
            "SECRET_KEY": "load-bench-only-not-a-secret-" + "y" * 32,
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "CELERY_BROKER_URL": BROKER_URL,
            "SECURE_COOKIES": "0",
            "MEDIA_ROOT": str(tmp / "media"),
            "LOG_LEVEL": "WARNING",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "REVIEWAPP_INPROCESS_WORKER": "0",
        }
        if not throttled:
            self.env["REVIEWAPP_API_USER_RATE"] = "1000000/min"
        self.proc: subprocess.Popen[bytes] | None = None

    def collectstatic(self) -> None:
        if (self.tmp / "static" / "staticfiles.json").exists():
            return
        code = "import django; django.setup(); from django.core.management import call_command; "
        code += "call_command('collectstatic', interactive=False, verbosity=0)"
        subprocess.run([sys.executable, "-c", code], env=self.env, cwd=ROOT, check=True)

    def start(self) -> float:
        self.collectstatic()
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        cmd = [gunicorn, "reviewapp.wsgi", "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}"]
        if self.threads > 1:
            cmd += ["--threads", str(self.threads)]  # gthread worker
        cmd += ["--log-level", "warning", "--error-logfile", str(self.tmp / "gunicorn.log")]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited: see {self.tmp / 'gunicorn.log'}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit("gunicorn did not answer /healthz within 120 s")

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *_children(self.proc.pid)]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)  # our own gunicorn master, by its pid
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


# --- CPU accounting --------------------------------------------------------------------------------------
def _cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _machine_ticks() -> tuple[int, int]:
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts[:8]) - idle, sum(parts[:8])


def busy_cores(seconds: float = 3.0) -> float:
    """Cores in use on the whole machine over `seconds` (the server is idle between phases)."""
    b0, _ = _machine_ticks()
    time.sleep(seconds)
    b1, _ = _machine_ticks()
    return (b1 - b0) / HZ / seconds


def wait_for_quiet(limit: float, max_wait: float) -> tuple[float, float]:
    """With limit > 0, wait (up to max_wait s) until other work uses fewer than `limit` cores; this machine is
    shared, and a phase measured while others' jobs take most of the 2 cores says little about the app."""
    t0 = time.perf_counter()
    busy = busy_cores(1.0)
    while limit > 0 and busy >= limit and time.perf_counter() - t0 < max_wait:
        busy = busy_cores(3.0)
    return time.perf_counter() - t0, busy


class CpuSampler:
    """Samples, every 0.5 s, the CPU time of the gunicorn processes and of the PostgreSQL backends of the
    load database (found by their process title), so that processes that exit mid-phase still count."""

    def __init__(self, server: Server, db_name: str) -> None:
        self.server, self.db_name = server, db_name
        self.first: dict[tuple[str, int], int] = {}
        self.last: dict[tuple[str, int], int] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _backends(self) -> list[int]:
        pids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"postgres:") and f" {self.db_name} ".encode() in cmd:
                pids.append(int(p.name))
        return pids

    def _sample(self, initial: bool) -> None:
        for kind, pids in (("app", self.server.pids()), ("db", self._backends())):
            for pid in pids:
                ticks = _cpu_ticks(pid)
                if ticks is None:
                    continue
                key = (kind, pid)
                if key not in self.first:
                    self.first[key] = ticks if initial else 0  # born during the phase: all of it counts
                self.last[key] = ticks

    def _run(self) -> None:
        while not self.stop_event.wait(0.5):
            self._sample(False)

    def __enter__(self) -> CpuSampler:
        self.machine0 = _machine_ticks()
        self.self0 = resource.getrusage(resource.RUSAGE_SELF)
        self._sample(True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()
        self._sample(False)
        busy1, total1 = _machine_ticks()
        self.machine_busy = (busy1 - self.machine0[0]) / HZ
        self.machine_total = (total1 - self.machine0[1]) / HZ
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.loadgen = r.ru_utime + r.ru_stime - self.self0.ru_utime - self.self0.ru_stime

    def seconds(self, kind: str) -> float:
        return sum(self.last[k] - self.first[k] for k in self.last if k[0] == kind) / HZ


# --- the HTTP clients ------------------------------------------------------------------------------------
class Failed(Exception):
    pass


@dataclass
class Sample:
    op: str
    start: float
    ms: float
    ok: bool
    error: str = ""


class Client:
    """One user: one connection (re-opened when the server closes it), its cookies, its CSRF token."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}
        self.token = token
        self.samples: list[Sample] = []

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        hdrs = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.token:
            hdrs["Authorization"] = f"Token {self.token}"
        try:
            self.conn.request(method, path, body=body, headers=hdrs)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            raise
        for cookie in resp.msg.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return resp.status, data

    def timed(self, op: str, method: str, path: str, body: bytes | None = None, headers=None, expect=200):
        """Send one request, record its latency; return the body, or raise Failed (recorded as an error)."""
        t0 = time.perf_counter()
        try:
            status, data = self.raw(method, path, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.samples.append(Sample(op, t0, (time.perf_counter() - t0) * 1000, False, type(exc).__name__))
            raise Failed(type(exc).__name__) from None
        ms = (time.perf_counter() - t0) * 1000
        if status != expect:
            self.samples.append(Sample(op, t0, ms, False, f"HTTP {status}"))
            raise Failed(f"HTTP {status}")
        self.samples.append(Sample(op, t0, ms, True))
        return data

    def fail_last(self, error: str) -> None:
        """Mark the last sample as an error (a 200 whose content is wrong)."""
        self.samples[-1].ok, self.samples[-1].error = False, error
        raise Failed(error)

    # reviewers
    def login(self, username: str) -> None:
        status, page = self.raw("GET", "/accounts/login/")
        m = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if status != 200 or not m:
            raise SystemExit(f"login page: HTTP {status}")
        body = urlencode(
            {
                "username": username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": m.group(1).decode(),
                "next": "/",
            }
        ).encode()
        status, _ = self.raw(
            "POST", "/accounts/login/", body, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        if status != 302 or "sessionid" not in self.cookies:
            raise SystemExit(f"login of {username}: HTTP {status}")

    HTMX = {"HX-Request": "true"}

    def page(self) -> tuple[int, int]:
        """The full queue page: claims a field (or returns the one this reviewer holds)."""
        return self.item(self.timed("page", "GET", "/"))

    def item(self, body: bytes) -> tuple[int, int]:
        m = re.search(rb'data-field="(\d*)"', body)
        if not m or not m.group(1):
            self.fail_last("empty queue")
        v = re.search(rb'name="version" value="(\d+)"', body)
        if not v:
            self.fail_last("no version in the fragment")
        return int(m.group(1)), int(v.group(1))

    def accept(self, field_id: int, version: int) -> tuple[int, int]:
        body = urlencode({"action": "accept", "version": version}).encode()
        headers = {
            **self.HTMX,
            "Content-Type": "application/x-www-form-urlencoded",
            "X-CSRFToken": self.cookies.get("csrftoken", ""),
        }
        data = self.timed("accept", "POST", f"/fields/{field_id}/decide/", body, headers)
        if b"Saved (accept)" not in data or b'class="flash error"' in data:
            m = re.search(rb'data-code="([^"]*)"', data)
            self.fail_last(f"not saved ({m.group(1).decode() if m else '?'})")
        return self.item(data)  # the next field, claimed by this accept

    # API users
    def create(self, n: int) -> int:
        text = (
            f"INVOICE\nLoad Bench Supplies Ltd\nInvoice no.: LB-{n}-{random.getrandbits(40):x}\n"
            f"Invoice date: 12/03/2025\nTOTAL DUE: {random.randint(100, 99999) / 100:.2f} EUR\n"
        )
        body = json.dumps({"document_type": API_DOC_TYPE, "text": text}).encode()
        data = self.timed(
            "create", "POST", "/api/v1/documents/", body, {"Content-Type": "application/json"}, expect=201
        )
        return json.loads(data)["id"]

    def retrieve(self, doc_id: int) -> None:
        data = self.timed("retrieve", "GET", f"/api/v1/documents/{doc_id}/")
        if b'"fields":[{' not in data:
            self.fail_last("no fields")


# --- the phases ------------------------------------------------------------------------------------------
@dataclass
class PhaseResult:
    scale: int
    phase: str
    clients: int
    wall: float
    samples: list[Sample]
    cpu: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def ops(self) -> list[str]:
        return list(dict.fromkeys(s.op for s in self.samples))

    def stats(self, op: str) -> dict[str, Any]:
        mine = [s for s in self.samples if s.op == op]
        ok = sorted(s.ms for s in mine if s.ok)
        errors: dict[str, int] = defaultdict(int)
        for s in mine:
            if not s.ok:
                errors[s.error] += 1
        return {
            "n": len(mine),
            "ok": len(ok),
            "errors": dict(errors),
            "p50": pct(ok, 50),
            "p95": pct(ok, 95),
            "p99": pct(ok, 99),
            "max": ok[-1] if ok else float("nan"),
            "rps": len(mine) / self.wall if self.wall else float("nan"),
        }


def timeline(r: PhaseResult) -> list[tuple[str, float, float, bool]]:
    """(op, seconds since the phase's first request, ms, ok) of every request: when the slow ones happened."""
    t0 = min((s.start for s in r.samples), default=0.0)
    return [
        (s.op, round(s.start - t0, 3), round(s.ms, 1), s.ok) for s in sorted(r.samples, key=lambda s: s.start)
    ]


def pct(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_ms:
        return float("nan")
    k = max(0, min(len(sorted_ms) - 1, int(-(-p * len(sorted_ms) // 100)) - 1))
    return sorted_ms[k]


class Budget:
    """Accepts left before the queue could run dry (other reviewers' leases and held items aside)."""

    def __init__(self, n: int) -> None:
        self.left, self.lock, self.hit = n, threading.Lock(), False

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0:
                self.hit = True
                return False
            self.left -= 1
            return True


def run_clients(clients: list[Client], loop, duration: float) -> float:
    """Run loop(client, index, deadline) in one thread per client; return the wall clock (s) from the
    common start to the end of the last request."""
    barrier = threading.Barrier(len(clients) + 1)
    errors: list[BaseException] = []

    def body(i: int, c: Client) -> None:
        barrier.wait()
        try:
            loop(c, i, start + duration)
        except BaseException as exc:  # reported below
            errors.append(exc)

    for c in clients:
        c.samples = []
    threads = [threading.Thread(target=body, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall


def paced_review(clients: list[Client], budget: Budget, pause: float, duration: float) -> float:
    """Each reviewer: the page, a pause, an accept of the field it shows, a pause; again until the end."""

    def loop(c: Client, i: int, deadline: float) -> None:
        time.sleep(random.uniform(0, 2 * pause))  # users do not start in lockstep
        while time.perf_counter() < deadline:
            try:
                fid, version = c.page()
            except Failed:
                time.sleep(pause)
                continue
            time.sleep(pause)
            if time.perf_counter() >= deadline or not budget.take():
                break
            with contextlib.suppress(Failed):
                c.accept(fid, version)
            time.sleep(pause)

    return run_clients(clients, loop, duration)


def paced_api(clients: list[Client], doc_ids: list[int], pause: float, duration: float) -> float:
    def loop(c: Client, i: int, deadline: float) -> None:
        time.sleep(random.uniform(0, pause))
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            with contextlib.suppress(Failed):
                c.create(i * 1_000_000 + n)
            time.sleep(pause)
            with contextlib.suppress(Failed):
                c.retrieve(random.choice(doc_ids))
            time.sleep(pause)

    return run_clients(clients, loop, duration)


def saturate(clients: list[Client], op: str, duration: float, budget: Budget, doc_ids: list[int]) -> float:
    """Closed loop with no pause: each client sends its next request as soon as the previous one is done."""
    first: dict[int, tuple[int, int] | None] = {}
    if op == "accept":  # each client first gets its item, untimed
        for i, c in enumerate(clients):
            first[i] = _parse_item(c.raw("GET", "/")[1])

    def loop(c: Client, i: int, deadline: float) -> None:
        item, n = first.get(i), 0
        while time.perf_counter() < deadline:
            n += 1
            try:
                if op == "page":
                    c.page()
                elif op == "accept":
                    if item is None:  # after an error: fetch the held item again, untimed
                        item = _parse_item(c.raw("GET", "/")[1])
                        if item is None:
                            return
                    if not budget.take():
                        return
                    item = c.accept(*item)
                elif op == "create":
                    c.create(i * 1_000_000 + n)
                else:
                    c.retrieve(random.choice(doc_ids))
            except Failed:
                item = None

    return run_clients(clients, loop, duration)


def _parse_item(body: bytes) -> tuple[int, int] | None:
    m = re.search(rb'data-field="(\d+)"', body)
    v = re.search(rb'name="version" value="(\d+)"', body)
    return (int(m.group(1)), int(v.group(1))) if m and v else None


# --- one scale -------------------------------------------------------------------------------------------
@dataclass
class Args:
    users: int
    api_users: int
    sat_clients: list[int]
    paced: float
    api_paced: float
    sat: float
    pause: float
    phases: list[str]
    quiet: float = 0.0
    quiet_wait: float = 0.0


def run_scale(
    scale: int, a: Args, server: Server, ctx: qb.Ctx, users: Users, reviewers: list[Client],
    api: list[Client], db_name: str,
) -> list[PhaseResult]:  # fmt: skip
    results: list[PhaseResult] = []
    doc_ids = sample_doc_ids(ctx)
    held = qb.HELD_LEASES + len(reviewers) * 2 + 10

    def phase(name: str, clients: list[Client], fn) -> None:
        """fn(clients, budget) -> wall clock seconds."""
        info = restore(users)
        budget = Budget(open_for_load(ctx) - held)
        waited, busy = wait_for_quiet(a.quiet, a.quiet_wait)
        la = os.getloadavg()[0]
        with CpuSampler(server, db_name) as cpu:
            wall = fn(clients, budget)
        samples = [s for c in clients for s in c.samples]
        res = PhaseResult(scale, name, len(clients), wall, samples)
        n = len(samples)
        res.cpu = {
            "app_s": cpu.seconds("app"),
            "db_s": cpu.seconds("db"),
            "loadgen_s": cpu.loadgen,
            "machine_busy_s": cpu.machine_busy,
            "machine_cores": cpu.machine_total / wall if wall else 0,
            "app_ms_per_req": cpu.seconds("app") * 1000 / n if n else 0,
            "db_ms_per_req": cpu.seconds("db") * 1000 / n if n else 0,
            "loadgen_ms_per_req": cpu.loadgen * 1000 / n if n else 0,
            "other_cores": max(0.0, cpu.machine_busy - cpu.seconds("app") - cpu.seconds("db") - cpu.loadgen)
            / wall,
            "loadavg_start": la,
        }
        res.cpu["busy_before"] = busy
        res.note = f"reopened {info['reopened']}" + (" · accept budget hit" if budget.hit else "")
        if a.quiet:
            res.note += f" · waited {waited:.0f} s for < {a.quiet} busy cores (was {busy:.2f})"
        results.append(res)
        show(res)

    def single(cl: list[Client], b: Budget) -> float:
        """One reviewer and one API user, one request at a time: the latency floor, with no queueing."""
        walls = [0.0, 0.0]

        def rev() -> None:
            walls[0] = paced_review(cl[:1], b, 0.2, 10)

        def api_user() -> None:
            walls[1] = paced_api(cl[1:], doc_ids, 0.2, 10)

        t = threading.Thread(target=api_user)
        t.start()
        rev()
        t.join()
        return max(walls)

    for name in a.phases:
        if name == "single":
            phase("single", [reviewers[0], api[0]], single)
        elif name == "paced":
            phase("paced", reviewers[: a.users], lambda cl, b: paced_review(cl, b, a.pause, a.paced))
        elif name == "api":
            phase("api", api[: a.api_users], lambda cl, b: paced_api(cl, doc_ids, a.pause, a.api_paced))
        else:
            op = {
                "sat_page": "page",
                "sat_accept": "accept",
                "sat_create": "create",
                "sat_get": "retrieve",
            }[name]
            pool = reviewers if op in ("page", "accept") else api
            for n in a.sat_clients:
                phase(f"{name}/{n}", pool[:n], lambda cl, b, op=op: saturate(cl, op, a.sat, b, doc_ids))
    restore(users)
    return results


def show(r: PhaseResult) -> None:
    c = r.cpu
    print(
        f"  {r.phase:<14} {r.clients:>2} clients {r.wall:5.1f} s  CPU/request: app {c['app_ms_per_req']:.1f} ms, "
        f"db {c['db_ms_per_req']:.1f} ms, loadgen {c['loadgen_ms_per_req']:.1f} ms; other load "
        f"{c['other_cores']:.2f} cores  {r.note}"
    )
    for op in r.ops():
        s = r.stats(op)
        err = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
        print(
            f"      {op:<9} n {s['n']:>5}  {s['rps']:7.1f} req/s  p50 {s['p50']:6.1f}  p95 {s['p95']:6.1f}  "
            f"p99 {s['p99']:6.1f}  max {s['max']:7.1f} ms  errors {err}"
        )


# --- evidence: SQL and profile of each op, in-process ---------------------------------------------------
def evidence(ctx: qb.Ctx, users: Users, n_profile: int = 40) -> dict[str, Any]:
    return _evidence(ctx, users, n_profile)


def _evidence(ctx: qb.Ctx, users: Users, n_profile: int) -> dict[str, Any]:
    import cProfile
    import io
    import pstats

    from django.db import connection
    from django.test import Client as DjClient
    from django.test.utils import CaptureQueriesContext

    restore(users)
    reviewer = DjClient()
    reviewer.force_login(users.reviewers[0])
    token = {"HTTP_AUTHORIZATION": f"Token {users.tokens[0]}"}
    api = DjClient()
    doc_ids = sample_doc_ids(ctx, 500)
    state: dict[str, Any] = {}

    def item(body: bytes) -> tuple[int, int]:
        got = _parse_item(body)
        if got is None:
            raise SystemExit("evidence: empty queue")
        return got

    def q_fresh() -> Any:  # GET / with nothing held: the claim path
        from reviewapp.models import FieldValue

        FieldValue.objects.filter(claimed_by=users.reviewers[0]).update(
            claimed_by=None, claim_expires_at=None
        )
        return lambda: reviewer.get("/")

    def q_held() -> Any:  # GET / while holding a field: what the paced loop and sat_page do
        return lambda: reviewer.get("/")

    def accept() -> Any:
        fid, v = state.get("item") or item(reviewer.get("/").content)

        def run() -> Any:
            r = reviewer.post(
                f"/fields/{fid}/decide/", {"action": "accept", "version": v}, HTTP_HX_REQUEST="true"
            )
            state["item"] = _parse_item(r.content)
            return r

        return run

    n = [0]

    def create() -> Any:
        n[0] += 1
        body = json.dumps(
            {"document_type": API_DOC_TYPE, "text": f"INVOICE evidence {n[0]} {random.random()}"}
        )
        return lambda: api.post("/api/v1/documents/", body, content_type="application/json", **token)

    def retrieve() -> Any:
        return lambda: api.get(f"/api/v1/documents/{random.choice(doc_ids)}/", **token)

    ops = {"page (claim)": q_fresh, "page (held)": q_held, "accept": accept, "create": create,
           "retrieve": retrieve}  # fmt: skip
    out: dict[str, Any] = {}
    print(
        "\nIn-process, per request (django.test.Client, no HTTP), medians: SQL statements, SQL ms, wall ms, "
        f"Python CPU ms; CPU calibration {calibrate():.1f} ms (a fixed pure-Python loop: ~1x on a quiet machine)"
    )
    for name, make in ops.items():
        for _ in range(5):  # warm-up
            make()()
        walls, sqls, counts, slow = [], [], [], []
        for _ in range(15):
            req = make()
            timer = qb.QueryTimer()
            t0 = time.perf_counter()
            with CaptureQueriesContext(connection) as cap, connection.execute_wrapper(timer):
                resp = req()
            walls.append((time.perf_counter() - t0) * 1000)
            assert resp.status_code in (200, 201), (name, resp.status_code)
            counts.append(len(timer.timed))
            sqls.append(sum(ms for ms, _ in timer.timed))
            slow = sorted(timer.timed, reverse=True)[:3]
            statements = [q["sql"] for q in cap.captured_queries]
        cpus = []  # Python CPU per request, without the capture or the profiler
        for _ in range(30):
            req = make()
            c0 = time.process_time()
            req()
            cpus.append((time.process_time() - c0) * 1000)
        prof = cProfile.Profile(time.process_time)  # CPU of this process: Python, not the database
        for _ in range(n_profile):
            req = make()
            prof.enable()
            req()
            prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        out[name] = {
            "queries": sorted(set(counts)),
            "sql_ms": statistics.median(sqls),
            "wall_ms": statistics.median(walls),
            "python_cpu_ms": statistics.median(cpus),
            "slowest": [(round(ms, 2), s) for ms, s in slow],
            "statements": statements,
            "profile": buf.getvalue(),
        }
        print(
            f"  {name:<14} queries {sorted(set(counts))}  SQL {statistics.median(sqls):6.2f} ms  "
            f"wall {statistics.median(walls):6.1f} ms  Python CPU {statistics.median(cpus):5.1f} ms"
        )
        for ms, s in slow:
            print(f"        {ms:6.2f} ms  {s[:150]}")
    # The page's drift banner (evaluation.drift_alerts_all) reads a cache that Celery beat refreshes; with the
    # cache cold (no beat, as here, or the embedded mode) a page request computes it: its cost.
    from django.core.cache import cache

    from reviewapp import evaluation

    drift = []
    for _ in range(3):
        cache.delete(getattr(evaluation, "DRIFT_CACHE_KEY", "reviewapp:drift-alerts"))
        t0 = time.perf_counter()
        evaluation.drift_alerts_all()
        drift.append((time.perf_counter() - t0) * 1000)
    out["drift_banner_cold"] = {"wall_ms": statistics.median(drift), "profile": "", "statements": []}
    print(f"  drift banner with a cold cache: {statistics.median(drift):.0f} ms")
    restore(users)
    return out


def calibrate() -> float:
    """Median CPU ms of a fixed pure-Python workload: compare runs to see how much contention inflates CPU."""
    runs = []
    for _ in range(5):
        c0 = time.process_time()
        d: dict[int, str] = {}
        for i in range(200_000):
            d[i % 1000] = str(i)
        runs.append((time.process_time() - c0) * 1000)
    return statistics.median(runs)


def explain_slowest(ev: dict[str, Any]) -> None:
    """EXPLAIN ANALYZE the statements of the queue and accept requests that are not primary-key lookups."""
    from django.db import connection

    print("\nEXPLAIN ANALYZE of the queue's candidate and count queries (as the claim request ran them):")
    seen = set()
    with connection.cursor() as cur:
        for name in ("page (claim)", "page (held)"):
            for sql in ev[name]["statements"]:
                if not sql.startswith("SELECT") or "reviewapp_fieldvalue" not in sql:
                    continue
                key = re.sub(r"'[^']*'", "?", sql)
                if key in seen or ('"id" = ' in sql and "LIMIT 21" in sql):
                    continue
                seen.add(key)
                cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                print(f"\n-- [{name}] {sql[:400]}")
                for (line,) in cur.fetchall():
                    print("   " + line)


def _git_state() -> str:
    """The commit and the number of uncommitted files (others edit the tree while benches run)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--short"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    n = len([line for line in dirty.stdout.splitlines() if line.strip()])
    return f"{head.stdout.strip()} + {n} uncommitted files"


# --- main ------------------------------------------------------------------------------------------------
def print_summary(results: list[PhaseResult], summaries: dict[int, dict[str, int]], config: str) -> None:
    print(
        f"\nSummary ({config}); latency in ms, nearest-rank percentiles, throughput over the phase's wall clock"
    )
    print(
        "   fields  phase           clients  op        req/s     p50     p95     p99  errors  app+db CPU ms/req"
    )
    for r in results:
        for op in r.ops():
            s = r.stats(op)
            errs = sum(s["errors"].values())
            print(
                f"{summaries[r.scale]['fields']:>9}  {r.phase:<15} {r.clients:>7}  {op:<8} {s['rps']:7.1f} "
                f"{s['p50']:7.1f} {s['p95']:7.1f} {s['p99']:7.1f} {errs:>7}  "
                f"{r.cpu['app_ms_per_req']:.1f}+{r.cpu['db_ms_per_req']:.1f}"
            )
    paced = [r for r in results if r.phase == "paced"]
    for r in paced:
        verdict = []
        for op in ("page", "accept"):
            s = r.stats(op)
            verdict.append(f"{op} p95 {s['p95']:.1f} ms {'<' if s['p95'] < 50 else '>='} 50")
        ok = all(r.stats(op)["p95"] < 50 and not r.stats(op)["errors"] for op in ("page", "accept"))
        print(
            f"target at {summaries[r.scale]['fields']:,} fields ({r.clients} users, 1 s pauses): "
            f"{'; '.join(verdict)} -> {'MET' if ok else 'NOT MET'}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scales", default="10000,100000,1000000")
    p.add_argument("--keep", action="store_true", help="reuse the data in the load database")
    p.add_argument("--drop", action="store_true", help="drop the load database at the end")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help=">1: gthread workers")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--api-users", type=int, default=10)
    p.add_argument("--sat-clients", default="8", help="comma separated, e.g. 8,16")
    p.add_argument("--paced", type=float, default=60, help="seconds of the paced reviewer phase")
    p.add_argument("--api-paced", type=float, default=20, help="seconds of the paced API phase")
    p.add_argument("--sat", type=float, default=15, help="seconds of each saturation phase")
    p.add_argument("--pause", type=float, default=1.0)
    p.add_argument("--phases", default=",".join(ALL_PHASES))
    p.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        help="before each phase wait until the machine uses fewer than this many cores (0: don't wait)",
    )
    p.add_argument("--quiet-wait", type=float, default=180, help="longest wait for --quiet, seconds")
    p.add_argument("--throttled", action="store_true", help="keep the API's default 600/min per user")
    p.add_argument("--load-only", action="store_true", help="load and prepare the data, measure nothing")
    p.add_argument("--evidence", action="store_true", help="SQL and profile of each op at the largest scale")
    p.add_argument("--json", default=str(ROOT / "bench" / "out" / "load.json"))
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    scales = qb.parse_scales(args.scales)
    sat_clients = [int(x) for x in args.sat_clients.split(",") if x]
    a = Args(args.users, args.api_users, sat_clients, args.paced, args.api_paced, args.sat, args.pause,
             [x for x in args.phases.split(",") if x], args.quiet, args.quiet_wait)  # fmt: skip
    unknown = [x for x in a.phases if x not in ALL_PHASES]
    if unknown:
        raise SystemExit(f"unknown phases {unknown}; choose from {ALL_PHASES}")
    db_url = os.environ.get("LOAD_DATABASE_URL", DEFAULT_DB_URL)
    db_name = urlsplit(db_url).path.lstrip("/")
    started = time.perf_counter()

    qb.ensure_database(db_url, fresh=not args.keep)
    setup_django(db_url)
    import django
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0, interactive=False)
    qb.check_columns()
    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
    n_rev = max(a.users, *a.sat_clients)
    n_api = max(a.api_users, *a.sat_clients)
    ctx = qb.setup_fixtures()
    users = ensure_users(ctx, n_rev, n_api)
    config = f"gunicorn -w {args.workers}" + (f" --threads {args.threads}" if args.threads > 1 else " (sync)")
    print(
        f"PostgreSQL {pg}, Django {django.get_version()}, database {db_name}, {os.cpu_count()} CPUs, {config}, "
        f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"code: {_git_state()}")
    tmp = Path(tempfile.mkdtemp(prefix="load_bench_"))
    server = Server(db_url, args.workers, args.threads, args.throttled, tmp)
    results: list[PhaseResult] = []
    summaries: dict[int, dict[str, int]] = {}
    reviewers: list[Client] = []
    api: list[Client] = []
    ev = None
    try:
        for scale in scales:
            print(f"\n== scale {scale:,} fields")
            restore(users)
            added, secs = qb.load_to(ctx, scale // qb.FIELDS_PER_DOC, args.seed)
            t0 = time.perf_counter()
            qb.prepare_queue(ctx)  # releases every lease, others hold the head of the queue, VACUUM ANALYZE
            if added:
                print(
                    f"  added {added:,} documents in {secs:.1f} s; vacuum analyze {time.perf_counter() - t0:.1f} s"
                )
            summaries[scale] = {**qb.data_summary(ctx), "open_for_load": open_for_load(ctx)}
            print("  " + ", ".join(f"{k} {v:,}" for k, v in summaries[scale].items()))
            print(
                f"  CPU calibration {calibrate():.1f} ms (fixed pure-Python loop; higher = a busier machine)"
            )
            if args.load_only:
                continue
            connection.close()  # idle during the phases
            boot = server.start()
            print(f"  gunicorn up on port {server.port} in {boot:.1f} s")
            try:
                if not reviewers:
                    t0 = time.perf_counter()
                    reviewers = [Client(server.port) for _ in users.reviewers]
                    gate = threading.Semaphore(args.workers)  # a login hashes the password: ~1 s of CPU

                    def login(c: Client, name: str, gate: threading.Semaphore = gate) -> None:
                        with gate:
                            c.conn.timeout = 300
                            c.login(name)

                    logins = [
                        threading.Thread(target=login, args=(c, u.username))
                        for c, u in zip(reviewers, users.reviewers, strict=True)
                    ]
                    for t in logins:
                        t.start()
                    for t in logins:
                        t.join()
                    if any("sessionid" not in c.cookies for c in reviewers):
                        raise SystemExit("some logins failed")
                    api = [Client(server.port, token) for token in users.tokens]
                    print(f"  {len(reviewers)} reviewers logged in ({time.perf_counter() - t0:.1f} s)")
                for c in [*reviewers, *api]:
                    c.port = server.port
                    c.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                # warm-up: every worker opens its DB connection, caches fill
                paced_review(reviewers[: a.users], Budget(10**6), 0.05, 2.0)
                paced_api(api[: min(4, n_api)], sample_doc_ids(ctx, 50), 0.05, 2.0)
                results += run_scale(scale, a, server, ctx, users, reviewers, api, db_name)
            finally:
                server.stop()
        if args.evidence:
            ev = evidence(ctx, users)
            explain_slowest(ev)
            prof = Path(args.json).with_suffix(".profile.txt")
            prof.parent.mkdir(parents=True, exist_ok=True)
            prof.write_text("".join(f"===== {k}\n{v['profile']}\n" for k, v in ev.items()))
            print(f"\nCPU profiles (cProfile, process time) written to {prof}")
    finally:
        server.stop()
        restore(users)
        import redis

        redis.Redis.from_url(BROKER_URL).flushdb()
        shutil.rmtree(tmp, ignore_errors=True)
    print_summary(results, summaries, config)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "config": config,
                "scales": summaries,
                "results": [
                    {
                        "fields": summaries[r.scale]["fields"],
                        "phase": r.phase,
                        "clients": r.clients,
                        "wall_s": r.wall,
                        "cpu": r.cpu,
                        "note": r.note,
                        "ops": {op: r.stats(op) for op in r.ops()},
                        "samples": timeline(r) if r.phase in ("single", "paced") else None,
                    }
                    for r in results
                ],
                "evidence": {k: {kk: vv for kk, vv in v.items() if kk != "statements"} for k, v in ev.items()}
                if ev
                else None,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out}; total {time.perf_counter() - started:.0f} s; load average now "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    if args.drop:
        qb.drop_database(db_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
