"""Fault injection on the real processes: a private PostgreSQL cluster, private Redis servers, gunicorn and
a `celery worker` started as subprocesses against them.

Nothing here touches the shared services on 127.0.0.1:5432 and :6379 (or the pytest-django test database):
these tests stop and restart what they own, so they must own it. The test process only talks HTTP to
gunicorn, SQL to the private cluster (psycopg, read-only checks) and Redis to the private server.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fa017" + "0" * 35  # the seeded reviewer's API token (private database only)
TERMINAL = ("needs_review", "auto_accepted", "reviewed", "failed")
# Environment the app reads: never inherit the caller's (make test points these at the shared services).
_APP_ENV_PREFIXES = ("REVIEWAPP_", "CELERY_", "LANGFUSE_")
_APP_ENV_NAMES = {"DATABASE_URL", "DEBUG", "DB_CONN_MAX_AGE", "MEDIA_ROOT", "ALLOWED_HOSTS", "SECRET_KEY"}

SEED = """
import os, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "reviewapp.settings")
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from reviewapp import demo
from reviewapp.models import Membership, Workspace
ws = Workspace.objects.create(name="Acme", slug="acme")
user = get_user_model().objects.create_user(username="rita", password="pw-rita-123")
Membership.objects.create(user=user, workspace=ws, role="reviewer")
demo.ensure_type("receipt", demo.TYPES["receipt"])
Token.objects.create(user=user, key=os.environ["FAULTS_TOKEN"])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, diag: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{diag()}")


def app_env(**overrides: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_APP_ENV_PREFIXES) and k not in _APP_ENV_NAMES
    }
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", SECRET_KEY="faults-test", ALLOWED_HOSTS="127.0.0.1")
    env.update(overrides)
    return env


# --- PostgreSQL ------------------------------------------------------------------------------------------
def _pg_bindir() -> Path | None:
    if os.environ.get("FAULTS_PG_BIN"):
        return Path(os.environ["FAULTS_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parts[-3])],
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgCluster:
    """A throw-away cluster (initdb into a temp dir) that the tests may stop and start at will."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0  # initdb refuses to run as root: run the server as `postgres`
        self.base = Path(tempfile.mkdtemp(prefix="reviewapp-faults-pg-"))
        if self.as_root:
            shutil.chown(self.base, "postgres")
        self.data = self.base / "data"
        self.port = free_port()

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"),
            "-o", opts, "-w", "-t", "120", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """`fast` is a clean restart (sessions cut, checkpoint); `immediate` is a crash."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "120", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def log(self) -> str:
        path = self.base / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private cluster with a migrated, seeded template database `faults_template`."""
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("fault tests need PostgreSQL's server binaries (initdb, pg_ctl); set FAULTS_PG_BIN")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("running as root: need `runuser` to start PostgreSQL as the postgres user")
    cluster = PgCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        cluster.execute("CREATE DATABASE faults_template")
        env = app_env(DATABASE_URL=cluster.url("faults_template"), FAULTS_TOKEN=TOKEN)
        done = subprocess.run(
            [sys.executable, "-c", SEED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        if done.returncode:
            raise RuntimeError(f"migrate/seed failed:\n{done.stdout}\n{done.stderr}")
        yield cluster
    finally:
        cluster.destroy()


# --- Redis -----------------------------------------------------------------------------------------------
class RedisServer:
    """A private redis-server; `persistent` turns on the append-only file (fsync always) in its own dir."""

    def __init__(self, base: Path, *, persistent: bool) -> None:
        self.dir = base
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5)

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--save", "", "--daemonize", "no"]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def pong() -> bool:
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        wait_until(pong, 30, f"redis-server on port {self.port}", self.log)

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown save. With the AOF (fsync always) nothing acknowledged is lost."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


# --- the app's processes --------------------------------------------------------------------------------
class Service:
    """A subprocess in its own process group, logging to a file (a pipe could fill up and block it)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self.terminated = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if not self.terminated:
            self.terminated = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 3) -> None:
        """SIGTERM (warm shutdown), then SIGKILL to the group: throw-away processes on throw-away data."""
        if self.proc.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):  # the leader or anything it left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


class Stack:
    """One app deployment for one test: its own database (cloned from the template), Redis, queue, media."""

    def __init__(self, pg: PgCluster, workdir: Path, *, persistent_redis: bool) -> None:
        self.pg = pg
        self.dbname = f"faults_{uuid.uuid4().hex[:10]}"
        pg.execute(f"CREATE DATABASE {self.dbname} TEMPLATE faults_template")
        self.workdir = workdir
        (workdir / "redis").mkdir(parents=True)
        self.media = workdir / "media"
        self.media.mkdir()
        self.redis = RedisServer(workdir / "redis", persistent=persistent_redis)
        self.redis.start()
        self.queue = f"faults-{uuid.uuid4().hex[:8]}"
        self.web: Service | None = None
        self.workers: list[Service] = []
        self.web_port = free_port()
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.web_port}",
            headers={"Authorization": f"Token {TOKEN}"},
            timeout=60,
        )
        self.t0 = time.monotonic()
        self.timeline: list[str] = []

    # processes
    def env(self, **extra: str) -> dict[str, str]:
        return app_env(
            DATABASE_URL=self.pg.url(self.dbname),
            CELERY_BROKER_URL=self.redis.url,
            CELERY_QUEUE=self.queue,
            MEDIA_ROOT=str(self.media),
            **extra,
        )

    def start_web(self) -> Service:
        """gunicorn as in production (sync workers; DB connections kept 60 s with health checks)."""
        args = [sys.executable, "-m", "gunicorn", "reviewapp.wsgi", "--preload", "-w", "2"]
        args += ["-b", f"127.0.0.1:{self.web_port}", "--timeout", "120", "--graceful-timeout", "5"]
        self.web = Service("gunicorn", args, self.env(), self.workdir)
        return self.web

    def wait_web(self) -> None:
        def up() -> bool:
            assert self.web is not None and self.web.alive, self.web.log() if self.web else ""
            try:
                return self.http.get("/api/v1/documents/", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 180, "gunicorn to serve", self.diagnostics)
        self.mark("web up")

    def start_worker(self, **extra: str) -> Service:
        n = len(self.workers)
        args = [sys.executable, "-m", "celery", "-A", "reviewapp", "worker", "--pool=gevent"]
        args += ["--concurrency=2", "--without-mingle", "--without-gossip", "--loglevel=INFO"]
        args += ["-Q", self.queue, "-n", f"{self.queue}-{n}@%h"]
        worker = Service(f"worker{n}", args, self.env(**extra), self.workdir)
        self.workers.append(worker)
        return worker

    def wait_worker(self, worker: Service) -> None:
        def ready() -> bool:
            assert worker.alive, worker.log()[-4000:]
            return " ready." in worker.log()

        wait_until(ready, 180, f"{worker.name} to be ready", self.diagnostics)
        self.mark(f"{worker.name} ready")

    def stop(self) -> None:
        self.http.close()
        services = [s for s in [*self.workers, self.web] if s is not None and s.alive]
        for service in services:  # warm shutdowns in parallel, then whatever is left is killed
            service.terminate()
        for service in services:
            service.stop()
        if self.redis.proc is not None:
            self.redis.kill()

    # observation
    def mark(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.t0:6.1f}s  {what}")

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.url(self.dbname), autocommit=True, connect_timeout=10) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def statuses(self, ids: list[int] | None = None) -> dict[int, str]:
        rows = self.sql("SELECT id, status FROM reviewapp_document ORDER BY id")
        return {pk: status for pk, status in rows if ids is None or pk in ids}

    def document_count(self) -> int:
        return self.sql("SELECT count(*) FROM reviewapp_document")[0][0]

    def media_count(self) -> int:
        return sum(1 for p in self.media.rglob("*") if p.is_file())

    def runs(self, doc_id: int) -> list[str]:
        rows = self.sql(
            "SELECT status FROM reviewapp_extractionrun WHERE document_id = %s ORDER BY id", doc_id
        )
        return [r[0] for r in rows]

    def field_count(self, doc_id: int) -> int:
        return self.sql("SELECT count(*) FROM reviewapp_fieldvalue WHERE document_id = %s", doc_id)[0][0]

    def messages_pending(self) -> int:
        """Jobs on the queue plus jobs delivered to a worker and not acked yet (kombu's `unacked` hash)."""
        client = self.redis.client()
        return client.llen(self.queue) + client.hlen("unacked")

    def upload(self, text: str) -> httpx.Response:
        return self.http.post("/api/v1/documents/", json={"document_type": "receipt", "text": text})

    def upload_ok(self, text: str) -> int:
        response = self.upload(text)
        assert response.status_code == 201, (response.status_code, response.text[:500])
        return response.json()["id"]

    def bulk_import(self, texts: list[str]) -> list[int]:
        """Queue documents as a bulk import does: `manage.py extract` with several files sends one
        extract_documents message for them (REVIEWAPP_EXTRACT_BATCH, 8). Return their ids."""
        paths = []
        for i, text in enumerate(texts):
            path = self.workdir / f"bulk-{len(self.timeline)}-{i}.txt"
            path.write_text(text)
            paths.append(str(path))
        done = subprocess.run(
            [sys.executable, "manage.py", "extract", "--type", "receipt", "--workspace", "acme", *paths],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        ids = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("document ")]
        assert len(ids) == len(texts), done.stdout
        self.mark(f"bulk import queued {ids}")
        return ids

    def send_task(self, name: str, *args: Any) -> None:
        """Publish a task the way celery beat does (the watchdog runs in the worker, with its settings)."""
        from celery import Celery

        app = Celery("faults-client", set_as_current=False)
        # An explicit connection: Celery prefers a CELERY_BROKER_URL in the environment (make test sets one,
        # for the shared Redis) to the broker given to the app.
        with app.connection_for_write(self.redis.url) as conn:
            app.send_task(name, args=list(args), queue=self.queue, connection=conn)
        app.close()

    def wait_terminal(self, ids: list[int], timeout: float = 120) -> None:
        wait_until(
            lambda: all(s in TERMINAL for s in self.statuses(ids).values()),
            timeout,
            f"documents {ids} to finish",
            self.diagnostics,
        )

    def diagnostics(self) -> str:
        parts = ["timeline:\n" + "\n".join(self.timeline)]
        with contextlib.suppress(Exception):
            parts.append(f"documents: {self.statuses()}")
        with contextlib.suppress(Exception):
            parts.append(f"messages pending: {self.messages_pending()}")
        for service in [self.web, *self.workers]:
            if service is not None:
                parts.append(f"--- {service.name} (alive={service.alive}) ---\n{service.log()[-4000:]}")
        parts.append(f"--- redis ---\n{self.redis.log()}")
        parts.append(f"--- postgres ---\n{self.pg.log()}")
        return "\n".join(parts)


@pytest.fixture
def make_stack(pg_cluster: PgCluster, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    if not shutil.which("redis-server"):
        pytest.skip("fault tests need redis-server")
    stacks: list[Stack] = []

    def make(*, persistent_redis: bool = False) -> Stack:
        stack = Stack(pg_cluster, tmp_path / f"stack{len(stacks)}", persistent_redis=persistent_redis)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
        print("\n".join(stack.timeline))
    if not pg_cluster.running:  # a failed test may leave the cluster down: later tests need it
        pg_cluster.start()
