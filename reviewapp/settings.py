"""Settings, read from the environment (12-factor). `.env.example` lists every variable.

The defaults form the embedded mode: SQLite in the project folder, an in-memory Celery broker consumed by
an in-process worker, and the built-in offline model, so the app runs with no keys and no servers.
Production sets DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis) and REVIEWAPP_LLM_CONFIG.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from extraction.greenlets import gevent_patched
from extraction.heap import DEFAULT_THRESHOLD0 as DEFAULT_GC_THRESHOLD0

BASE_DIR = Path(__file__).resolve().parent.parent

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


TESTING = "pytest" in sys.modules or sys.argv[1:2] == ["test"]
DEBUG = env_bool("DEBUG", False)

# The embedded mode (no DATABASE_URL) makes a random key once per checkout and keeps it in a git-ignored
# file, so it runs with no setup; anything pointed at a real database must set SECRET_KEY itself.
EMBEDDED = not env_str("DATABASE_URL")
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if EMBEDDED or DEBUG or TESTING:
        _key_file = BASE_DIR / ".secret_key"
        if not _key_file.exists():
            import secrets

            _key_file.write_text(secrets.token_urlsafe(50))
            _key_file.chmod(0o600)
        SECRET_KEY = _key_file.read_text().strip()
    else:
        raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL points at a real database")

ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if EMBEDDED or DEBUG or TESTING else []
)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "reviewapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "reviewapp.middleware.ServiceUnavailableMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
]

ROOT_URLCONF = "reviewapp.urls"
WSGI_APPLICATION = "reviewapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

# True in a process gevent has monkeypatched (`celery worker --pool=gevent`, the production worker).
GEVENT = gevent_patched()

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded mode has a worker thread writing while the web thread reads: wait for locks, don't fail.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif env_int("DB_POOL_MAX", 64 if GEVENT else 0):
    # A gevent worker runs each task in a new greenlet, and Django keeps one connection per greenlet: without a
    # pool every task would open (and leak) a PostgreSQL session. With psycopg's pool, closing the connection at
    # the end of a task (reviewapp/celery.py) hands it back. DB_POOL_MAX must cover the worker's concurrency.
    # (Django gives the pool conn_health_checks' check: a connection broken by a database restart is replaced
    # on checkout instead of failing the task that draws it.)
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django's pool takes over persistence
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN", 2),
        "max_size": env_int("DB_POOL_MAX", 64),
        # How long a task waits for a connection. Never reached while the pool covers the concurrency; during a
        # database outage it is how long a task waits before it fails and is retried later (docs/faults.md).
        "timeout": env_int("DB_POOL_TIMEOUT", 5),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "queue"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
WHITENOISE_USE_FINDERS = DEBUG or TESTING  # serve from the source folders until collectstatic has run
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not (DEBUG or TESTING)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or BASE_DIR / "media")

SESSION_COOKIE_HTTPONLY = True
# Sessions read from the cache (Redis in production), written through to the database: one query less on
# every request, and a cache flush logs nobody out.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
CSRF_COOKIE_HTTPONLY = False  # htmx reads no cookie: the token is set once on <body> via hx-headers
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG and not TESTING:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)

# Uploads: refuse oversized bodies before they are read into memory.
REVIEWAPP_MAX_UPLOAD_BYTES = env_int("REVIEWAPP_MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REVIEWAPP_MAX_UPLOAD_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- Celery --------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or "memory://localhost/"
CELERY_RESULT_BACKEND = None  # state lives on the Document rows, not in a result backend
# The disabled backend holds no state. Not marked thread-safe, Celery keeps one per thread: per greenlet in a
# gevent worker, so every task built a new one (0.35 ms of CPU per task under load, bench/THROUGHPUT.md).
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # a killed worker's job goes back to the queue
# A gevent worker runs Celery's blocking consumer loop, which rechecks for free slots only every second once
# all are taken: with a second message per slot waiting in the worker, a finished task's slot refills at once.
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 2 if GEVENT else 1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 900)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 840)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 1800),
    # kombu's Redis pool holds 10 connections and fails (never waits) beyond them; every task's ack takes one,
    # and a gevent worker's 64 greenlets ack at once: a failed ack leaves the message unacked (it comes back
    # after the visibility timeout) and holds one of the worker's prefetch slots until then.
    "max_connections": env_int("CELERY_BROKER_MAX_CONNECTIONS", 256),
    # How often a worker looks for messages whose worker died (older than the visibility timeout) and puts
    # them back: every 10 s, each time (kombu's default scans only every 10th time: ~100 s).
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT = "reviewapp.broker:Transport"  # kombu's, keeping its redis client (broker.py)
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE") or "reviewapp"
# Celery's Django fixup closes the database connection before and after every task unless this is set, so
# DB_CONN_MAX_AGE would do nothing in workers: a new PostgreSQL session per document. With it set,
# reviewapp/celery.py applies Django's per-request rule around each task instead (CONN_MAX_AGE and the
# health check). Each worker thread then keeps a connection: keep processes x threads + web workers under
# PostgreSQL's max_connections.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1_000_000)
CELERY_BEAT_SCHEDULE = {
    "requeue-stuck-documents": {"task": "extraction.tasks.requeue_stuck_documents", "schedule": 60.0},
    "requeue-stuck-evaluations": {"task": "reviewapp.evaluation.requeue_stuck_evaluations", "schedule": 60.0},
    "purge-idempotency-records": {"task": "extraction.tasks.purge_idempotency_records", "schedule": 3600.0},
    "purge-llm-calls": {"task": "extraction.tasks.purge_llm_calls", "schedule": 24 * 3600.0},
    "requeue-lost-webhooks": {"task": "reviewapp.webhooks.requeue_lost_deliveries", "schedule": 60.0},
    # Within the 10-minute cache of the drift banner, so that no queue request computes it.
    "refresh-drift-alerts": {"task": "reviewapp.evaluation.refresh_drift_alerts", "schedule": 240.0},
}
# The embedded mode: with the in-memory broker no other process can see the queue, so a worker thread
# runs inside the process that serves (see reviewapp/worker.py).
REVIEWAPP_INPROCESS_WORKER = env_bool("REVIEWAPP_INPROCESS_WORKER", CELERY_BROKER_URL.startswith("memory://"))

# --- Extraction ----------------------------------------------------------------------------------------
REVIEWAPP_LLM_CONFIG = env_str("REVIEWAPP_LLM_CONFIG") or ""  # empty: the built-in offline model
REVIEWAPP_ENVIRONMENT = env_str("REVIEWAPP_ENVIRONMENT") or "default"
REVIEWAPP_REDIS_URL = env_str("REVIEWAPP_REDIS_URL") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else ""
)  # breaker state shared between workers
REVIEWAPP_STUCK_AFTER_SECONDS = env_int("REVIEWAPP_STUCK_AFTER_SECONDS", 1800)
REVIEWAPP_MAX_DELIVERIES = env_int("REVIEWAPP_MAX_DELIVERIES", 3)
# Group commit (reviewapp/runstore.py): a finished run waits this long for others of its worker process to
# store all their results in one transaction. 0 writes each run's results on its own.
REVIEWAPP_RESULT_BATCH_MS = env_int("REVIEWAPP_RESULT_BATCH_MS", 25)
# The same for claims: a task's claim waits this long for others of its process to share its statement.
REVIEWAPP_CLAIM_BATCH_MS = env_int("REVIEWAPP_CLAIM_BATCH_MS", 5)
# Documents queued together (a bulk import, `extract` with many files, the watchdog) travel this many to a
# task message (extraction.tasks.extract_documents): one message, claim and ack for several documents. A
# gevent worker runs a message's documents side by side, never more at once than its --concurrency.
REVIEWAPP_EXTRACT_BATCH = max(1, env_int("REVIEWAPP_EXTRACT_BATCH", 8))
# Workers freeze their start-up heap and collect young garbage every this many allocations (extraction/heap.py);
# 0 freezes but keeps CPython's threshold, -1 leaves the garbage collector alone.
WORKER_GC_THRESHOLD = env_int("WORKER_GC_THRESHOLD", DEFAULT_GC_THRESHOLD0)
# Evaluations: one running this long with no progress (no gold document finished) lost its worker; the
# watchdog re-queues it, or fails it once this many deliveries of its job have claimed it.
REVIEWAPP_EVALUATION_STUCK_AFTER_SECONDS = env_int("REVIEWAPP_EVALUATION_STUCK_AFTER_SECONDS", 1800)
REVIEWAPP_EVALUATION_MAX_ATTEMPTS = env_int("REVIEWAPP_EVALUATION_MAX_ATTEMPTS", 3)
# How long an API Idempotency-Key is remembered (reviewapp/api/idempotency.py); older records are purged.
REVIEWAPP_IDEMPOTENCY_TTL_SECONDS = env_int("REVIEWAPP_IDEMPOTENCY_TTL_SECONDS", 24 * 3600)
# Successful LLM calls of finished documents older than this are deleted daily (services.llm_calls_purge);
# failures, evaluation runs and open documents are kept. 0 keeps everything. The admin's per prompt/model
# call statistics then cover this window.
REVIEWAPP_LLM_CALL_RETENTION_DAYS = env_int("REVIEWAPP_LLM_CALL_RETENTION_DAYS", 0)
REVIEWAPP_AUDIT_SAMPLE_RATE = env_float("REVIEWAPP_AUDIT_SAMPLE_RATE", 0.0)

LANGFUSE_PUBLIC_KEY = env_str("LANGFUSE_PUBLIC_KEY") or ""
LANGFUSE_SECRET_KEY = env_str("LANGFUSE_SECRET_KEY") or ""
LANGFUSE_HOST = env_str("LANGFUSE_HOST") or ""

# --- REST API ------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "reviewapp.api.auth.ApiKeyAuthentication",  # Authorization: Bearer ra_… or X-Api-Key
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",  # the browsable API
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "reviewapp.api.auth.HasScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["reviewapp.api.auth.PrincipalRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "api_key": env_str("REVIEWAPP_API_KEY_RATE") or "600/min",
        "user": env_str("REVIEWAPP_API_USER_RATE") or "600/min",
        "anon": env_str("REVIEWAPP_API_ANON_RATE") or "60/min",
    },
    "DEFAULT_SCHEMA_CLASS": "reviewapp.api.schema.ApiAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "reviewapp.api.pagination.IdCursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "reviewapp.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "reviewapp API",
    "DESCRIPTION": "Upload documents, poll their extraction, read and review the fields.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {
        "DocumentStatusEnum": "reviewapp.models.Document.Status",
        "RunStatusEnum": "reviewapp.models.ExtractionRun.Status",
        "FieldStatusEnum": "reviewapp.models.FieldValue.Status",
        "DeliveryStatusEnum": "reviewapp.models.WebhookDelivery.Status",
    },
}
# Webhook targets on private/loopback addresses are refused in production (SSRF); tests deliver to 127.0.0.1.
REVIEWAPP_WEBHOOK_BLOCK_PRIVATE = env_bool(
    "REVIEWAPP_WEBHOOK_BLOCK_PRIVATE", not (EMBEDDED or DEBUG or TESTING)
)
# Throttle counters must be shared by every web process: Redis when it is there.
REVIEWAPP_CACHE_URL = env_str("REVIEWAPP_CACHE_URL") or REVIEWAPP_REDIS_URL
CACHES = {
    # Django's RedisCache, keeping its redis client instead of building one per call (reviewapp/cache.py)
    "default": {"BACKEND": "reviewapp.cache.RedisCache", "LOCATION": REVIEWAPP_CACHE_URL}
    if REVIEWAPP_CACHE_URL and not TESTING
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL") or "INFO"},
    "loggers": {
        "LiteLLM": {"level": "WARNING"},
        "LiteLLM Router": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        # Celery logs two INFO lines per task ("received", "succeeded"); extraction.tasks logs one per document
        # with its id, outcome, task id and time, which is what an operator searches for. LOG_CELERY_TASKS=1
        # keeps Celery's as well.
        **(
            {}
            if env_bool("LOG_CELERY_TASKS", False)
            else {"celery.app.trace": {"level": "WARNING"}, "celery.worker.strategy": {"level": "WARNING"}}
        ),
    },
}
