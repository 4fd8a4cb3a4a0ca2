"""Server time of the review queue and of an accept as the data grows, on PostgreSQL.

Run from the repository root (PostgreSQL must be reachable; the bench uses its own database):

    .venv/bin/python bench/queue_bench.py [--scales 10000,100000,1000000] [--requests 50] [--keep] [--drop]
                                          [--no-proposed]

It creates (or recreates) the database `reviewapp_bench` (override with BENCH_DATABASE_URL), migrates it, and
loads invoice-like documents of a 10-field type with COPY, scale after scale: each scale adds rows to the
previous one (10 k, 100 k, 1 M fields = 1 k, 10 k, 100 k documents by default), then runs VACUUM ANALYZE.
The mix: six workspaces of uneven size (the reviewer belongs to two, ~40 % of the data), ~37 % of documents
auto-accepted, ~15 % reviewed, ~48 % waiting for review, so ~29 % of the fields need review, with random
confidences; every document has one succeeded run and 1-2 KB of text; decided fields have their
ReviewDecision rows; other reviewers hold live leases on the head of the queue.

At every scale it measures in-process, with django.test.Client logged in as the reviewer and DEBUG off, the
time from the request to the response (URL resolution, middleware, session, view, SQL, template) of:

  queue       GET /                   the full queue page, claiming a field (the reviewer's lease is released
                                      before each request, untimed, so every request runs the claim)
  queue_htmx  GET / (HX-Request)      the item fragment htmx swaps in, claiming a field the same way
  queue_age   GET /?sort=age (htmx)   the fragment with the queue sorted oldest first
  accept      POST /fields/<id>/decide/ action=accept with the version: decides the field the reviewer
                                      holds, claims the next one and renders the fragment
  queue_cold  GET /                   the full page after emptying Django's caches (fewer requests)

The four first are timed interleaved, after a warm-up, over --requests requests each (median and p95); the
SQL statements of three more requests of each are counted with CaptureQueriesContext (they must not depend
on the data size) and timed. Then, unless --no-proposed, the same four run again as "queue+", ... with the
changes this bench recommends patched in (proposed_queue_claim_next, proposed_queue_counts, PROPOSED_INDEX,
created in the bench database for that phase only): the app's code is not changed. At every scale the
queue's queries are also timed in the database alone (EXPLAIN ANALYZE), and at the largest scale their
plans are printed.

--keep reuses the data already in the bench database (topped up to each scale) instead of starting afresh;
--drop drops the bench database at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DB_URL = "postgres://postgres@127.0.0.1:5432/reviewapp_bench"
FIELDS_PER_DOC = 10
BATCH_DOCS = 5000
WORKSPACES = [  # (slug, share of the documents); the reviewer belongs to the first two
    ("bench-acme", 0.30),
    ("bench-globex", 0.10),
    ("bench-initech", 0.20),
    ("bench-umbrella", 0.15),
    ("bench-hooli", 0.15),
    ("bench-stark", 0.10),
]
REVIEWER_WORKSPACES = 2
OTHER_REVIEWERS = 4
HELD_LEASES = 25  # open fields at the head of the reviewer's queue leased to other reviewers


def configure(db_url: str) -> None:
    """Point Django at the bench database, production-like (DEBUG off, no in-process worker)."""
    os.environ["DATABASE_URL"] = db_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "reviewapp.settings"
    os.environ["DEBUG"] = "0"
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("SECRET_KEY", "bench-only-not-a-secret-" + "x" * 32)
    os.environ["ALLOWED_HOSTS"] = "testserver,localhost,127.0.0.1"
    os.environ["SECURE_COOKIES"] = "0"  # the test client speaks plain http
    os.environ["REVIEWAPP_INPROCESS_WORKER"] = "0"  # the bench never queues tasks
    os.environ.setdefault("LOG_LEVEL", "WARNING")


def ensure_database(db_url: str, *, fresh: bool) -> None:
    import psycopg
    from psycopg import sql

    parts = urlsplit(db_url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if fresh:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}")


def drop_database(db_url: str) -> None:
    import psycopg
    from django.db import connections
    from psycopg import sql

    connections.close_all()
    parts = urlsplit(db_url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(parts.path.lstrip("/")))
        )
    print(f"dropped database {parts.path.lstrip('/')}")


# --- the data --------------------------------------------------------------------------------------------
BENCH_TYPE = "bench-invoice"
VENDORS = [
    "Acme Supplies Ltd",
    "Northwind Traders",
    "Contoso Office GmbH",
    "Fabrikam Parts SA",
    "Tailspin Logistics",
    "Wide World Importers",
    "Kuala Paper Sdn Bhd",
    "Blue Yonder Airlines",
    "Litware Inc",
    "Proseware Consulting",
]
ITEMS = [
    "A4 paper, 80 g, box of 5 reams",
    "Toner cartridge, black, high yield",
    "Consulting services, hourly",
    "Freight and handling",
    "Office chair, ergonomic",
    "Software licence, annual",
    "Network cable, Cat6, 10 m",
    "Cleaning services, monthly",
    "Printer maintenance visit",
    "Laptop docking station",
]
CURRENCIES = ["USD", "EUR", "GBP", "MYR"]


@dataclass
class Ctx:
    doc_type: Any
    specs: list[Any]  # FieldSpec rows in position order
    prompt: Any
    workspaces: list[Any]
    reviewer: Any
    others: list[Any]
    now: datetime
    ids: dict[str, int] = field(default_factory=dict)


def bench_type_spec() -> dict[str, Any]:
    from reviewapp import demo

    spec = dict(demo.TYPES["invoice"])
    spec["name"] = "Bench invoice"
    spec["fields"] = [
        *spec["fields"],
        ("po_number", "text", "Purchase order number the invoice refers to", False, 0.85, []),
    ]
    assert len(spec["fields"]) == FIELDS_PER_DOC
    return spec


def setup_fixtures() -> Ctx:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from reviewapp import demo
    from reviewapp.models import Membership, Workspace

    doc_type = demo.ensure_type(BENCH_TYPE, bench_type_spec())
    for slug, spec in demo.TYPES.items():  # the other types exist too: the filter lists them
        demo.ensure_type(slug, spec)
    workspaces = [
        Workspace.objects.get_or_create(slug=slug, defaults={"name": slug.split("-", 1)[1].title()})[0]
        for slug, _ in WORKSPACES
    ]
    User = get_user_model()
    reviewer, created = User.objects.get_or_create(username="bench-reviewer")
    if created:
        reviewer.set_unusable_password()
        reviewer.save()
    for ws in workspaces[:REVIEWER_WORKSPACES]:
        Membership.objects.get_or_create(user=reviewer, workspace=ws)
    others = []
    for i in range(OTHER_REVIEWERS):
        other, _ = User.objects.get_or_create(username=f"bench-other-{i}")
        for ws in workspaces[i % 2 :: 2]:
            Membership.objects.get_or_create(user=other, workspace=ws)
        others.append(other)
    return Ctx(
        doc_type=doc_type,
        specs=list(doc_type.fields.order_by("position", "id")),
        prompt=doc_type.active_prompt,
        workspaces=workspaces,
        reviewer=reviewer,
        others=others,
        now=timezone.now(),
    )


def _invoice(rng: random.Random, n: int) -> tuple[str, dict[str, tuple[Any, int, int]]]:
    """Return an invoice text of ~1-2 KB and {field: (value, evidence start, evidence end)}."""
    parts: list[str] = []
    pos = 0
    found: dict[str, tuple[Any, int, int]] = {}

    def put(text: str, name: str | None = None, value: Any = None) -> None:
        nonlocal pos
        if name:
            found[name] = (value if value is not None else text, pos, pos + len(text))
        parts.append(text)
        pos += len(text)

    vendor = rng.choice(VENDORS)
    currency = rng.choice(CURRENCIES)
    issued = date(2024, 1, 1) + timedelta(days=rng.randrange(600))
    due = issued + timedelta(days=rng.choice((14, 30, 45, 60)))
    put("INVOICE\n")
    put(vendor, "vendor")
    put(
        f"\n{rng.randint(1, 999)} Commerce Street, Suite {rng.randint(1, 99)}\nVAT no. GB{rng.randint(10**8, 10**9 - 1)}\n"
    )
    put("\nInvoice no.: ")
    put(f"INV-{rng.randint(10000, 99999)}-{n}", "invoice_number")
    put("\nInvoice date: ")
    put(issued.strftime("%d/%m/%Y"), "invoice_date", issued.isoformat())
    put("\nDue date: ")
    put(due.strftime("%d/%m/%Y"), "due_date", due.isoformat())
    put("\nPO number: ")
    put(f"PO-{rng.randint(100000, 999999)}", "po_number")
    put(f"\nCurrency: {'':>2}")
    put(currency, "currency")
    put("\n\nBill to: Example Holdings, 1 Main Road, Springfield\n\n")
    put(f"{'Description':<44}{'Qty':>5}{'Unit':>12}{'Amount':>13}\n" + "-" * 74 + "\n")
    subtotal = 0
    for _ in range(rng.randint(8, 22)):
        qty, unit = rng.randint(1, 20), rng.randint(100, 50000)
        subtotal += qty * unit
        put(f"{rng.choice(ITEMS):<44}{qty:>5}{unit / 100:>12.2f}{qty * unit / 100:>13.2f}\n")
    tax = subtotal * 20 // 100
    put("-" * 74 + "\nSubtotal: ")
    put(f"{subtotal / 100:.2f}", "subtotal", f"{subtotal / 100:.2f} {currency}")
    put("\nTax (20%): ")
    put(f"{tax / 100:.2f}", "tax", f"{tax / 100:.2f} {currency}")
    put("\nTOTAL DUE: ")
    put(f"{(subtotal + tax) / 100:.2f} {currency}", "total", f"{(subtotal + tax) / 100:.2f} {currency}")
    paid = rng.random() < 0.3
    put("\nStatus: ")
    put("PAID" if paid else "Unpaid", "paid", paid)
    put("\n\nPayment by bank transfer within the due date. Thank you for your business.\n")
    return "".join(parts), found


DOC_COLS = [
    "id", "workspace_id", "document_type_id", "filename", "content_type", "kind", "file", "size_bytes",
    "sha256", "text", "pages", "status", "status_reason", "deliveries", "claim_token", "claimed_at",
    "created_by_id", "created_at", "updated_at",
]  # fmt: skip
RUN_COLS = [
    "id", "document_id", "prompt_version_id", "evaluation_id", "arm", "model_requested", "model_answered",
    "status", "task_id", "started_at", "finished_at", "duration_ms", "attempts", "prompt_tokens",
    "completion_tokens", "cached_tokens", "cost_usd", "verify_score", "classification", "chunks",
    "dropped_fields", "error_code", "error_message",
]  # fmt: skip
FV_COLS = [
    "id", "run_id", "document_id", "workspace_id", "field_spec_id", "value", "raw_value", "confidence",
    "model_confidence", "reasoning", "evidence_start", "evidence_end", "evidence_text", "evidence_chunk",
    "supported", "problem", "verdict", "status", "audit_sample", "final_value", "reviewer_id", "reviewed_at",
    "version", "claimed_by_id", "claim_expires_at", "gold_excluded", "created_at",
]  # fmt: skip
RD_COLS = [
    "id", "field_value_id", "document_id", "reviewer_id", "action", "before_status", "after_status",
    "before_value", "after_value", "bulk", "created_at",
]  # fmt: skip
TABLES = {
    "reviewapp_document": DOC_COLS,
    "reviewapp_extractionrun": RUN_COLS,
    "reviewapp_fieldvalue": FV_COLS,
    "reviewapp_reviewdecision": RD_COLS,
}


def check_columns() -> None:
    """Fail clearly if a migration added a NOT NULL column without a database default that COPY omits."""
    from django.db import connection

    with connection.cursor() as cur:
        for table, cols in TABLES.items():
            cur.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO'",
                [table],
            )
            missing = [r[0] for r in cur.fetchall() if r[0] not in cols]
            if missing:
                raise SystemExit(f"{table} has NOT NULL columns the loader does not fill: {missing}")


def _generate(ctx: Ctx, rng: random.Random, first_doc: int, count: int) -> dict[str, list[tuple[Any, ...]]]:
    """Rows for `count` documents (their run, fields and decisions), with explicit ids."""
    rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
    ws_ids = [w.pk for w in ctx.workspaces]
    ws_weights = [share for _, share in WORKSPACES]
    deciders = [ctx.reviewer.pk] + [o.pk for o in ctx.others]
    midnight = ctx.now.replace(hour=0, minute=0, second=0, microsecond=0)
    j = json.dumps
    for k in range(count):
        doc_id = first_doc + k
        run_id = ctx.ids["run"] = ctx.ids["run"] + 1
        ws = rng.choices(ws_ids, ws_weights)[0]
        created = ctx.now - timedelta(seconds=rng.randrange(180 * 86400))
        text, found = _invoice(rng, doc_id)
        kind = rng.random()
        doc_status = "auto_accepted" if kind < 0.37 else "reviewed" if kind < 0.52 else "needs_review"
        statuses = []
        for _ in ctx.specs:
            r = rng.random()
            if doc_status == "auto_accepted":
                statuses.append("auto_accepted")
            elif doc_status == "reviewed":
                statuses.append("auto_accepted" if r < 0.6 else "accepted" if r < 0.85 else "corrected")
            else:
                statuses.append("needs_review" if r < 0.6 else "auto_accepted" if r < 0.9 else "accepted")
        if doc_status == "needs_review" and "needs_review" not in statuses:
            statuses[rng.randrange(len(statuses))] = "needs_review"
        rows["reviewapp_document"].append(
            (
                doc_id, ws, ctx.doc_type.pk, f"invoice-{doc_id}.txt", "text/plain", "text", "",
                len(text.encode()), hashlib.sha256(text.encode()).hexdigest(), text, "[]", doc_status, "", 1,
                "", None, None, created, created + timedelta(minutes=5),
            )
        )  # fmt: skip
        finished = created + timedelta(seconds=rng.uniform(3, 40))
        rows["reviewapp_extractionrun"].append(
            (
                run_id, doc_id, ctx.prompt.pk, None, "active", "primary-model", "primary-model", "succeeded",
                f"task-{doc_id}", created, finished, int((finished - created).total_seconds() * 1000), 1,
                rng.randint(800, 2500), rng.randint(100, 400), 0, f"{rng.uniform(0.0005, 0.004):.6f}",
                rng.uniform(0.6, 1.0), "{}", 1, "[]", "", "",
            )
        )  # fmt: skip
        for spec, status in zip(ctx.specs, statuses, strict=True):
            fv_id = ctx.ids["fv"] = ctx.ids["fv"] + 1
            value, start, end = found[spec.name]
            if status == "needs_review":
                confidence = rng.betavariate(4, 2) * spec.threshold
            else:
                confidence = spec.threshold + rng.random() * (1 - spec.threshold)
            reviewer = reviewed_at = final = None
            version = 1
            if status == "auto_accepted":
                final = value
            elif status in ("accepted", "corrected"):
                final = (
                    value
                    if status == "accepted"
                    else (f"{value} (corrected)" if isinstance(value, str) else value)
                )
                reviewer = rng.choice(deciders)
                reviewed_at = min(
                    finished + timedelta(hours=rng.uniform(1, 72)), midnight - timedelta(minutes=1)
                )
                version = 2
                rd_id = ctx.ids["rd"] = ctx.ids["rd"] + 1
                rows["reviewapp_reviewdecision"].append(
                    (
                        rd_id, fv_id, doc_id, reviewer, "accept" if status == "accepted" else "correct",
                        "needs_review", status, j(value), j(final), False, reviewed_at,
                    )
                )  # fmt: skip
            rows["reviewapp_fieldvalue"].append(
                (
                    fv_id, run_id, doc_id, ws, spec.pk, j(value), j(value), confidence,
                    min(1.0, confidence + 0.05), f"Found next to the label for {spec.name}.", start, end,
                    text[start:end], 0, True, "" if status != "needs_review" else "below threshold", "ok",
                    status, False, None if final is None else j(final), reviewer, reviewed_at, version, None,
                    None, False, created,
                )
            )  # fmt: skip
    return rows


def _copy(cur: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    cols = ", ".join(TABLES[table])
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def load_to(ctx: Ctx, target_docs: int, seed: int) -> tuple[int, float]:
    """Add documents of the bench type until there are `target_docs`; return (added, seconds)."""
    from django.db import connection, transaction

    from reviewapp.models import Document

    have = Document.objects.filter(document_type=ctx.doc_type).count()
    missing = target_docs - have
    if missing < 0:
        raise SystemExit(
            f"the bench database already holds {have:,} documents, more than this scale's {target_docs:,}: "
            "run without --keep, or with larger scales only"
        )
    if missing == 0:
        return 0, 0.0
    started = time.perf_counter()
    rng = random.Random(seed + have)
    with connection.cursor() as cur:
        for table, key in [
            ("reviewapp_document", "doc"),
            ("reviewapp_extractionrun", "run"),
            ("reviewapp_fieldvalue", "fv"),
            ("reviewapp_reviewdecision", "rd"),
        ]:
            cur.execute(f"SELECT coalesce(max(id), 0) FROM {table}")
            ctx.ids[key] = cur.fetchone()[0]
        raw = cur.cursor  # the psycopg cursor, for COPY
        done = 0
        while done < missing:
            n = min(BATCH_DOCS, missing - done)
            rows = _generate(ctx, rng, ctx.ids["doc"] + 1, n)
            ctx.ids["doc"] += n
            with transaction.atomic():  # one transaction per batch
                for table in TABLES:
                    _copy(raw, table, rows[table])
            done += n
            if sys.stdout.isatty():
                print(f"\r  loaded {have + done:>8} / {target_docs} documents", end="", flush=True)
        for table in TABLES:
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
    if sys.stdout.isatty():
        print()
    return missing, time.perf_counter() - started


def prepare_queue(ctx: Ctx) -> None:
    """Other reviewers hold live leases at the head of the reviewer's queue, a few expired ones too; the
    reviewer holds none. Then VACUUM ANALYZE, as autovacuum would have by now."""
    from django.db import connection

    ws_ids = [w.pk for w in ctx.workspaces[:REVIEWER_WORKSPACES]]
    with connection.cursor() as cur:
        cur.execute("DROP INDEX IF EXISTS bench_fv_queue_age")  # left over by an interrupted run
        cur.execute(
            "UPDATE reviewapp_fieldvalue SET claimed_by_id = NULL, claim_expires_at = NULL "
            "WHERE claimed_by_id IS NOT NULL"
        )
        cur.execute(
            "SELECT id FROM reviewapp_fieldvalue WHERE status = 'needs_review' AND workspace_id = ANY(%s) "
            "ORDER BY confidence, id LIMIT %s",
            [ws_ids, HELD_LEASES * 2],
        )
        head = [r[0] for r in cur.fetchall()]
        for i, fv_id in enumerate(head):
            live = i % 2 == 0  # every other one: the expired ones are free again
            cur.execute(
                "UPDATE reviewapp_fieldvalue SET claimed_by_id = %s, claim_expires_at = %s WHERE id = %s",
                [
                    ctx.others[i % len(ctx.others)].pk,
                    ctx.now + timedelta(days=1) if live else ctx.now - timedelta(hours=1),
                    fv_id,
                ],
            )
        for table in [*TABLES, "reviewapp_membership", "auth_user", "django_session"]:
            cur.execute(f"VACUUM ANALYZE {table}")


def data_summary(ctx: Ctx) -> dict[str, int]:
    from django.db import connection

    ws_ids = [w.pk for w in ctx.workspaces[:REVIEWER_WORKSPACES]]
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE status = 'needs_review'), "
            "count(*) FILTER (WHERE status = 'needs_review' AND workspace_id = ANY(%s)) FROM reviewapp_fieldvalue",
            [ws_ids],
        )
        fields, open_, mine = cur.fetchone()
        cur.execute("SELECT count(*), coalesce(avg(length(text)), 0) FROM reviewapp_document")
        docs, avg_text = cur.fetchone()
        cur.execute("SELECT count(*) FROM reviewapp_reviewdecision")
        decisions = cur.fetchone()[0]
    return {
        "documents": docs,
        "fields": fields,
        "open": open_,
        "open_for_reviewer": mine,
        "decisions": decisions,
        "avg_text": int(avg_text),
    }


# --- the measurements ------------------------------------------------------------------------------------
@dataclass
class Result:
    scale: int
    fields: int
    op: str
    times_ms: list[float]
    queries: list[int]
    slowest: list[tuple[float, str]]
    sql_ms: float  # time spent in the database, median of the counted requests

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.times_ms, n=20, method="inclusive")[18]


# --- the proposed changes (monkeypatched into the app for the "+" ops only; the app is unchanged) -----------
OPEN_COUNT_CAP = 1000
CLAIM_SIGNATURE = ["user", "filters", "skip", "prefer", "lease_seconds"]


def proposed_candidates(base: Any, ids: list[int], order: list[str], n: int = 20) -> Any:
    """The first `n` fields of `base` in queue order, as one index-ordered subquery per workspace merged by
    UNION ALL: fv_queue (workspace, confidence, id) returns one workspace in order, an IN list of two or
    more it cannot, so PostgreSQL reads every open field of those workspaces and sorts them."""
    parts = [base.filter(workspace_id=w).order_by(*order).values_list("pk", *order)[:n] for w in ids]
    if len(parts) == 1:
        return parts[0]
    return parts[0].union(*parts[1:], all=True).order_by(*order)[:n]


def proposed_queue_claim_next(
    *,
    user: Any,
    filters: Any,
    skip: tuple[int, ...] = (),
    prefer: int | None = None,
    lease_seconds: int = 300,
) -> Any:
    """services.queue_claim_next with the candidate query of proposed_candidates (the rest unchanged)."""
    from django.db.models import Q
    from django.utils import timezone

    from reviewapp.models import FieldValue
    from reviewapp.selectors import open_fields, queue_order, workspace_ids

    now = timezone.now()
    free = Q(claimed_by__isnull=True) | Q(claim_expires_at__lt=now) | Q(claimed_by=user)
    base = open_fields(user, filters).filter(free).exclude(pk__in=skip)
    lease = now + timedelta(seconds=lease_seconds)
    if prefer is not None and FieldValue.objects.filter(
        Q(pk=prefer) & Q(pk__in=base.values("pk")) & free
    ).update(claimed_by=user, claim_expires_at=lease):
        return FieldValue.objects.get(pk=prefer)
    mine = base.filter(claimed_by=user, claim_expires_at__gte=now).order_by(*queue_order(filters)).first()
    if mine is not None:
        FieldValue.objects.filter(pk=mine.pk).update(claim_expires_at=lease)
        return mine
    ids = [filters.workspace] if filters.workspace is not None else workspace_ids(user)
    for candidate_id, *_ in proposed_candidates(base, ids, queue_order(filters)):
        won = FieldValue.objects.filter(
            Q(pk=candidate_id) & Q(status=FieldValue.Status.NEEDS_REVIEW) & free
        ).update(claimed_by=user, claim_expires_at=lease)
        if won:
            return FieldValue.objects.get(pk=candidate_id)
    return None


def proposed_queue_counts(user: Any, filters: Any = None) -> dict[str, int]:
    """selectors.queue_counts with the open count stopping at OPEN_COUNT_CAP + 1 (shown as "1000+")."""
    from django.utils import timezone

    from reviewapp.models import ReviewDecision
    from reviewapp.selectors import open_fields

    open_count = open_fields(user, filters).order_by()[: OPEN_COUNT_CAP + 1].count()
    since = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    done_today = ReviewDecision.objects.filter(reviewer=user, created_at__gte=since).count()
    return {"open": open_count, "done_today": done_today}


PROPOSED_INDEX = (
    "CREATE INDEX IF NOT EXISTS bench_fv_queue_age ON reviewapp_fieldvalue (workspace_id, created_at, id) "
    "WHERE status = 'needs_review'"
)  # the age-sorted twin of fv_queue, for ?sort=age


@contextmanager
def proposed_index() -> Iterator[None]:
    """Create the proposed index in the bench database for the "+" ops, and drop it afterwards."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(PROPOSED_INDEX)
        cur.execute("ANALYZE reviewapp_fieldvalue")
    try:
        yield
    finally:
        with connection.cursor() as cur:
            cur.execute("DROP INDEX IF EXISTS bench_fv_queue_age")


def can_patch() -> bool:
    import inspect

    from reviewapp import selectors, services

    claim = list(inspect.signature(services.queue_claim_next).parameters)
    counts = list(inspect.signature(selectors.queue_counts).parameters)
    return claim == CLAIM_SIGNATURE and counts == ["user", "filters"]


@contextmanager
def proposed() -> Iterator[None]:
    """Run the views with the proposed queue_claim_next and queue_counts (the views look them up per call)."""
    from reviewapp import selectors, services

    saved = services.queue_claim_next, selectors.queue_counts
    services.queue_claim_next, selectors.queue_counts = proposed_queue_claim_next, proposed_queue_counts
    try:
        yield
    finally:
        services.queue_claim_next, selectors.queue_counts = saved


class QueryTimer:
    """An execute wrapper timing each query (CaptureQueriesContext rounds to whole milliseconds)."""

    def __init__(self) -> None:
        self.timed: list[tuple[float, str]] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.timed.append(((time.perf_counter() - t) * 1000, sql))


class Bench:
    def __init__(self, ctx: Ctx) -> None:
        from django.test import Client

        self.ctx = ctx
        self.client = Client()
        self.client.force_login(ctx.reviewer)

    def release(self) -> None:
        from reviewapp.models import FieldValue

        FieldValue.objects.filter(claimed_by=self.ctx.reviewer).update(claimed_by=None, claim_expires_at=None)

    def held(self) -> Any:
        from django.utils import timezone

        from reviewapp.models import FieldValue

        return (
            FieldValue.objects.filter(
                claimed_by=self.ctx.reviewer, status="needs_review", claim_expires_at__gte=timezone.now()
            )
            .order_by("confidence", "id")
            .only("id", "version")
            .first()
        )

    # Each op: untimed set-up, then return the timed request as a thunk.
    def queue(self) -> Callable[[], Any]:
        self.release()
        return lambda: self.client.get("/")

    def queue_htmx(self) -> Callable[[], Any]:
        self.release()
        return lambda: self.client.get("/", HTTP_HX_REQUEST="true")

    def queue_cold(self) -> Callable[[], Any]:
        """The full page after the caches were emptied: what the first request after a restart, or after a
        cached value (such as the drift banner's alerts) expired, costs."""
        from django.core.cache import caches

        self.release()
        for cache in caches.all():
            cache.clear()
        return lambda: self.client.get("/")

    def queue_age(self) -> Callable[[], Any]:
        self.release()
        return lambda: self.client.get("/?sort=age", HTTP_HX_REQUEST="true")

    def accept(self) -> Callable[[], Any]:
        fv = self.held()
        if fv is None:  # the previous response claimed the next field; only the first accept needs a GET
            self.client.get("/", HTTP_HX_REQUEST="true")
            fv = self.held()
        if fv is None:
            raise SystemExit("the queue is empty: nothing to accept")
        data = {"action": "accept", "version": str(fv.version)}
        return lambda: self.client.post(f"/fields/{fv.pk}/decide/", data, HTTP_HX_REQUEST="true")

    @staticmethod
    def check(op: str, response: Any) -> None:
        body = response.content
        if response.status_code != 200:
            raise SystemExit(f"{op}: HTTP {response.status_code}")
        if b'data-field=""' in body:
            raise SystemExit(f"{op}: the queue came back empty")
        if op == "accept" and (b"Saved (accept)" not in body or b'class="flash error"' in body):
            raise SystemExit(f"{op}: the accept was not saved")

    def patched(self, op: str) -> Any:
        return proposed() if op.endswith("+") else nullcontext()

    def timed(self, op: str) -> float:
        with self.patched(op):
            request = getattr(self, op.rstrip("+"))()
            t0 = time.perf_counter()
            response = request()
            elapsed = (time.perf_counter() - t0) * 1000
        self.check(op.rstrip("+"), response)
        return elapsed

    def counted(self, op: str) -> tuple[int, list[str], list[tuple[float, str]]]:
        """Run one request of `op` capturing its SQL: (statements, interpolated SQL, [(ms, SQL)])."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with self.patched(op):
            request = getattr(self, op.rstrip("+"))()
            timer = QueryTimer()
            with CaptureQueriesContext(connection) as ctx, connection.execute_wrapper(timer):
                self.check(op.rstrip("+"), request())
        # The capture also lists the transaction statements (BEGIN is implicit, COMMIT is logged); the
        # wrapper sees the queries only.
        return len(ctx.captured_queries), [q["sql"] for q in ctx.captured_queries], timer.timed


OPS = ["queue", "queue_htmx", "queue_age", "accept"]


def run_ops(
    bench: Bench, scale: int, fields: int, requests: int, ops: list[str], warmup: int | None = None
) -> tuple[list[Result], dict[str, list[str]]]:
    """Time the ops interleaved (queue, queue_htmx, queue_age, accept, queue, ...) so that noise from other
    processes spreads over all of them, then count the SQL of three more requests of each."""
    import gc

    for _ in range(max(5, requests // 10) if warmup is None else warmup):
        for op in ops:
            bench.timed(op)
    gc.collect()
    times: dict[str, list[float]] = {op: [] for op in ops}
    for _ in range(requests):
        for op in ops:
            times[op].append(bench.timed(op))
    results, captured = [], {}
    for op in ops:
        runs = [bench.counted(op) for _ in range(3)]
        counts = [n for n, _, _ in runs]
        sql_ms = statistics.median(sum(ms for ms, _ in timed) for _, _, timed in runs)
        slowest = sorted(runs[-1][2], reverse=True)[:3]
        results.append(Result(scale, fields, op, times[op], counts, slowest, sql_ms))
        captured[op] = runs[-1][1]
    bench.release()
    return results, captured


def measure(
    bench: Bench, scale: int, fields: int, requests: int, with_proposed: bool
) -> tuple[list[Result], dict[str, list[str]], dict[str, float]]:
    """The app as it is; then, if asked, the same ops with the proposed changes and index (the "+" ops)."""
    results, captured = run_ops(bench, scale, fields, requests, OPS)
    cold, _ = run_ops(bench, scale, fields, max(5, requests // 5), ["queue_cold"], warmup=1)
    results += cold
    db = db_times(bench, [(k, sql) for k, _, sql in queue_queries(captured) if sql])
    if with_proposed:
        with proposed_index():
            more, _ = run_ops(bench, scale, fields, requests, [op + "+" for op in OPS])
            db.update(db_times(bench, [(k, sql) for k, _, sql in proposed_queries(bench.ctx)]))
        results += more
    return results, captured, db


QUEUE_QUERIES = [  # (key, op whose SQL holds it, title, how to recognise it)
    (
        "claim",
        "queue",
        "claim candidates: open fields of the reviewer's workspaces, least confident first, 20",
        lambda s: "reviewapp_fieldvalue" in s and "LIMIT 20" in s,
    ),
    (
        "mine",
        "queue",
        "the reviewer's own live claim, checked first on every queue request",
        lambda s: '"claim_expires_at" >=' in s and "LIMIT 1" in s,
    ),
    (
        "count",
        "queue",
        "open count shown above the queue (queue_counts)",
        lambda s: "COUNT(*)" in s and "reviewapp_fieldvalue" in s,
    ),
    (
        "age",
        "queue_age",
        "claim candidates sorted oldest first (?sort=age)",
        lambda s: "reviewapp_fieldvalue" in s and "LIMIT 20" in s,
    ),
]


def queue_queries(captured: dict[str, list[str]]) -> list[tuple[str, str, str | None]]:
    """[(key, title, SQL as the page ran it)] for the queries in QUEUE_QUERIES."""
    return [
        (key, title, next((s for s in captured[op] if match(s)), None))
        for key, op, title, match in QUEUE_QUERIES
    ]


def proposed_queries(ctx: Ctx) -> list[tuple[str, str, str]]:
    """The proposed queries (see proposed_candidates and proposed_queue_counts), interpolated."""
    from django.db import connection
    from django.db.models import Q
    from django.utils import timezone

    from reviewapp.selectors import QueueFilters, open_fields, queue_order, workspace_ids

    user, now = ctx.reviewer, timezone.now()
    free = Q(claimed_by__isnull=True) | Q(claim_expires_at__lt=now) | Q(claimed_by=user)
    ids = workspace_ids(user)

    def union(filters: QueueFilters) -> Any:
        return proposed_candidates(open_fields(user, filters).filter(free), ids, queue_order(filters))

    capped = open_fields(user, QueueFilters()).order_by().values("pk")[: OPEN_COUNT_CAP + 1]
    queries = [
        (
            "claim_union",
            "PROPOSED claim candidates: UNION ALL of one LIMIT 20 per workspace",
            union(QueueFilters()),
            "{}",
        ),
        ("count_capped", "PROPOSED open count capped at 1001", capped, "SELECT COUNT(*) FROM ({}) capped"),
        (
            "age_union",
            "PROPOSED oldest first: UNION ALL per workspace, on the proposed index",
            union(QueueFilters(sort="age")),
            "{}",
        ),
    ]
    out = []
    with connection.cursor() as cur:
        for key, title, qs, wrap in queries:
            sql, params = qs.query.sql_with_params()
            out.append((key, title, cur.mogrify(wrap.format(sql), params)))
    return out


def plan_ms(cur: Any, sql: str, repeat: int) -> float:
    """Median planning + execution time (ms) of `sql` per EXPLAIN ANALYZE."""
    runs = []
    for _ in range(repeat):
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
        plan = cur.fetchone()[0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        runs.append(plan[0]["Planning Time"] + plan[0]["Execution Time"])
    return statistics.median(runs)


def db_times(bench: Bench, queries: list[tuple[str, str]], repeat: int = 7) -> dict[str, float]:
    """Median server-side time (EXPLAIN ANALYZE planning + execution, ms) of each query, with nothing
    claimed by the reviewer (the path every fresh queue request takes)."""
    from django.db import connection

    bench.release()
    with connection.cursor() as cur:
        return {key: plan_ms(cur, sql, repeat) for key, sql in queries}


def explain(bench: Bench, captured: dict[str, list[str]], with_proposed: bool) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) the queue's queries exactly as the page ran them, with nothing claimed, then
    the proposed rewrites (with the proposed index)."""
    from django.db import connection

    def show(items: list[tuple[str, str, str | None]]) -> None:
        bench.release()
        with connection.cursor() as cur:
            for _, title, sql in items:
                print(f"\n-- {title}")
                if sql is None:
                    print("   (query not found in the captured SQL)")
                    continue
                print(sql)
                cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                for (line,) in cur.fetchall():
                    print("   " + line)

    show(queue_queries(captured))
    if with_proposed:
        with proposed_index():
            show(proposed_queries(bench.ctx))


def print_table(
    results: list[Result], summaries: dict[int, dict[str, int]], db: dict[int, dict[str, float]]
) -> None:
    print("\nServer time per request (ms), SQL statements per request, time spent in SQL (ms):")
    print("   fields  documents  open (reviewer)  op           median    p95  queries  SQL ms")
    for r in results:
        s = summaries[r.scale]
        q = str(r.queries[0]) if len(set(r.queries)) == 1 else f"{min(r.queries)}-{max(r.queries)}"
        print(
            f"{s['fields']:>9} {s['documents']:>10} {s['open_for_reviewer']:>16}  {r.op:<11}"
            f"{r.median:>7.1f} {r.p95:>6.1f} {q:>8} {r.sql_ms:>7.2f}"
        )
    first, last = min(summaries), max(summaries)
    if first != last:
        print(
            f"growth of the median from {summaries[first]['fields']:,} to {summaries[last]['fields']:,} fields:"
        )
        for op in dict.fromkeys(r.op for r in results):
            a = next(r.median for r in results if r.scale == first and r.op == op)
            b = next(r.median for r in results if r.scale == last and r.op == op)
            print(f"  {op:<11} x{b / a:.2f}")
    print("\nThe queue's queries in the database (EXPLAIN ANALYZE planning + execution, median ms):")
    keys = list(next(iter(db.values()), {}))
    print("   fields  " + "".join(f"{key:>13}" for key in keys))
    for scale, times in db.items():
        print(
            f"{summaries[scale]['fields']:>9}  "
            + "".join(f"{times.get(k, float('nan')):>13.2f}" for k in keys)
        )
    print("\nSlowest queries of one request (ms, SQL):")
    for r in results:
        print(f"  {summaries[r.scale]['fields']} {r.op}:")
        for ms, sql in r.slowest:
            print(f"      {ms:6.2f}  {sql[:120]}…")


def parse_scales(raw: str) -> list[int]:
    scales = sorted(
        {int(x.replace("_", "").replace("k", "000").replace("M", "000000")) for x in raw.split(",")}
    )
    bad = [s for s in scales if s < FIELDS_PER_DOC * 100]
    if bad:
        raise SystemExit(f"scales are numbers of fields, at least {FIELDS_PER_DOC * 100}: {bad}")
    return scales


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="10000,100000,1000000", help="numbers of fields, comma separated")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per op and scale")
    parser.add_argument("--keep", action="store_true", help="reuse the data in the bench database")
    parser.add_argument("--drop", action="store_true", help="drop the bench database at the end")
    parser.add_argument(
        "--no-proposed",
        action="store_true",
        help="skip the '+' ops (the same requests with the proposed queue changes patched in)",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    scales = parse_scales(args.scales)
    db_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB_URL)

    configure(db_url)
    warnings.filterwarnings("ignore", message="No directory at")
    ensure_database(db_url, fresh=not args.keep)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import override_settings

    call_command("migrate", verbosity=0, interactive=False)
    check_columns()
    if not (Path(settings.STATIC_ROOT) / "staticfiles.json").exists():
        # No collectstatic output: serve static URLs unhashed rather than fail (a dict lookup either way).
        storages = {**settings.STORAGES}
        storages["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
        override_settings(STORAGES=storages).enable()
    assert not settings.DEBUG
    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        pg_version = cur.fetchone()[0]
    print(
        f"PostgreSQL {pg_version}, Django {django.get_version()}, database {urlsplit(db_url).path[1:]}, "
        f"{os.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )

    ctx = setup_fixtures()
    bench = Bench(ctx)
    with_proposed = not args.no_proposed and can_patch()
    if with_proposed:
        print("ops ending in + run with the proposed queue_claim_next, queue_counts and index")
    elif not args.no_proposed:
        print("the app's queue_claim_next / queue_counts changed signature: skipping the proposed ops")
    results: list[Result] = []
    summaries: dict[int, dict[str, int]] = {}
    captured: dict[str, Any] = {}
    db: dict[int, dict[str, float]] = {}
    started = time.perf_counter()
    for scale in scales:
        print(f"\n== scale {scale:,} fields ({scale // FIELDS_PER_DOC:,} documents)")
        added, secs = load_to(ctx, scale // FIELDS_PER_DOC, args.seed)
        t0 = time.perf_counter()
        prepare_queue(ctx)
        if added:
            print(
                f"  added {added:,} documents in {secs:.1f} s, vacuum analyze {time.perf_counter() - t0:.1f} s"
            )
        summaries[scale] = data_summary(ctx)
        print("  " + ", ".join(f"{k} {v:,}" for k, v in summaries[scale].items()))
        scale_results, captured, db[scale] = measure(
            bench, scale, summaries[scale]["fields"], args.requests, with_proposed
        )
        results.extend(scale_results)
        for r in scale_results:
            print(
                f"  {r.op:<11} median {r.median:6.1f} ms  p95 {r.p95:6.1f} ms  SQL {r.sql_ms:5.2f} ms"
                f"  queries {sorted(set(r.queries))}"
            )
        print(
            "  in the database (EXPLAIN ANALYZE, median): "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in db[scale].items())
        )
    print_table(results, summaries, db)
    print(f"\nEXPLAIN ANALYZE at {scales[-1]:,} fields:")
    explain(bench, captured, with_proposed)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {load} on {os.cpu_count()} CPUs")
    if args.drop:
        drop_database(db_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
