"""The database side of an extraction run's hot path: the claim, the run row, the call rows, the results.

Every document goes through these statements, so they are plain SQL over Django's connection (the same
text on PostgreSQL and on the embedded SQLite) rather than the ORM: building model instances and compiling
queries was most of the app's own CPU per document (bench/THROUGHPUT.md). Values still go through each
model field's `get_db_prep_save`, so they are stored exactly as the ORM would store them.

- **Document types are cached per process**, checked against `DocumentType.config_version`, which the
  claim returns with the document. Editing a type, a field or a prompt anywhere bumps it (models.py), so
  the next claim reloads the type; when nothing changed, the claim is the only read of a run.
- **The run's row is written with its results.** A run is built in memory when the claim succeeds and
  INSERTed, already finished, by the statement that stores its results; only a run that must be pointed at
  earlier (a failed call's trace, a crash) is stored while running (`ensure_run`). The claim's
  (`claim_token`, `deliveries`) pair tells each delivery's results apart, so no running row is needed as
  an ownership mark.
- **Group commit.** Runs that finish at about the same time in one process write their results together
  (`ResultWriter`): on PostgreSQL in **one statement** (data-modifying CTEs: the ownership check, the
  documents' UPDATE, and the INSERTs of the runs, their calls and their fields), which in autocommit mode
  is also its own transaction: one round trip per batch instead of eight. Each run's task still returns,
  and acks its message, only after the statement holding its results has committed.
- **Claims are group-committed too** (`claims`, `claim_many`): a batch of results wakes its tasks at once,
  their slots take new messages together, and those claims share one `UPDATE … FROM unnest(…)` with the
  same rule as a lone claim. Only a batch's leader touches the database.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.db.models import Model
from django.utils import timezone

from . import webhooks
from .models import (
    Document,
    DocumentType,
    ExtractionRun,
    FieldValue,
    LLMCall,
    WebhookSubscription,
    Workspace,
)

Status = Document.Status
RunStatus = ExtractionRun.Status


def _t(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _prep(conn: Any, fields: Sequence[Any], values: Sequence[Any]) -> list[Any]:
    """Return `values` as the ORM would send them for `fields`."""
    return [f.get_db_prep_save(v, conn) for f, v in zip(fields, values, strict=True)]


def _json_row(row: Sequence[Any], convert: tuple[int, ...]) -> Sequence[Any]:
    """The row with its dates and decimals as JSON strings (PostgreSQL reads them back as their types)."""
    if not convert:
        return row
    row = list(row)
    for i in convert:
        value = row[i]
        if isinstance(value, datetime):
            row[i] = value.isoformat()
        elif isinstance(value, Decimal):
            row[i] = str(value)
    return row


@dataclass(frozen=True)
class _Insert:
    fields: list[Any]
    columns: list[str]
    convert: tuple[int, ...]  # the columns holding dates or decimals
    values_sql: str  # INSERT ... VALUES (%s, ...): one row
    json_sql: str  # PostgreSQL: INSERT ... SELECT ... FROM json_populate_recordset(NULL::table, %s)


@functools.cache
def _insert_plan(model: type[Model], names: tuple[str, ...], quote: Any) -> _Insert:
    fields = [model._meta.get_field(n) for n in names]
    columns = [f.column for f in fields]
    table = quote(model._meta.db_table)
    quoted = ", ".join(quote(c) for c in columns)
    return _Insert(
        fields=fields,
        columns=columns,
        convert=tuple(
            i for i, f in enumerate(fields) if isinstance(f, (models.DateTimeField, models.DecimalField))
        ),
        values_sql=f"INSERT INTO {table} ({quoted}) VALUES ({', '.join(['%s'] * len(fields))})",
        json_sql=f"INSERT INTO {table} ({quoted}) SELECT {quoted} FROM json_populate_recordset(NULL::{table}, %s)",
    )


def insert_rows(
    model: type[Model], names: tuple[str, ...], rows: Sequence[Sequence[Any]], *, returning: bool = False
) -> list[int]:
    """INSERT `rows` (values in the order of `names`); return their ids if asked (one row only).

    On PostgreSQL, several rows go in one statement with one parameter, the rows as a JSON array: psycopg
    parses a statement with more than 50 placeholders on every call, and escapes each value on its own.
    """
    if not rows:
        return []
    conn = connections[DEFAULT_DB_ALIAS]
    plan = _insert_plan(model, names, conn.ops.quote_name)
    with conn.cursor() as cursor:
        if returning:
            (row,) = rows
            cursor.execute(plan.values_sql + " RETURNING id", _prep(conn, plan.fields, row))
            return [cursor.fetchone()[0]]
        if conn.vendor == "postgresql" and len(rows) > 1:
            data = [dict(zip(plan.columns, _json_row(row, plan.convert), strict=True)) for row in rows]
            cursor.execute(plan.json_sql, [json.dumps(data)])
        else:
            cursor.executemany(plan.values_sql, [_prep(conn, plan.fields, row) for row in rows])
    return []


def _update(
    cursor: Any, model: type[Model], pk: int, values: dict[str, Any], where: str = "", *args: Any
) -> int:
    conn = cursor.db
    fields = [model._meta.get_field(n) for n in values]
    sets = ", ".join(f"{conn.ops.quote_name(f.column)} = %s" for f in fields)
    params = [*_prep(conn, fields, list(values.values())), pk, *args]
    cursor.execute(f"UPDATE {_t(model)} SET {sets} WHERE id = %s{where}", params)
    return cursor.rowcount


# --- document types, cached per process -----------------------------------------------------------------
_types: dict[int, DocumentType] = {}


def document_type(type_id: int, version: int) -> DocumentType:
    """Return the type with its fields and prompts loaded, from this process's cache if still `version`.

    The instances are shared by the runs of this process's threads: treat them as read-only.
    """
    cached = _types.get(type_id)
    if cached is not None and cached.config_version == version:
        return cached
    loaded = (
        DocumentType.objects.select_related("active_prompt", "candidate_prompt")
        .prefetch_related("fields")
        .get(pk=type_id)
    )
    loaded.run_schema = loaded.to_schema()  # the pipeline's view of it, built once (services.run_pipeline)
    _types[type_id] = loaded
    return loaded


# --- the claim ------------------------------------------------------------------------------------------
@functools.cache
def _claim_plan(conn_alias: str, vendor: str) -> tuple[str, list[str], list[tuple[int, list[Any]]]]:
    """The claim statement, the Document columns it returns and the converters they need (per backend)."""
    conn = connections[conn_alias]
    quote = conn.ops.quote_name
    d, dt, ws = (quote(m._meta.db_table) for m in (Document, DocumentType, Workspace))
    fields = Document._meta.concrete_fields
    returned = ", ".join(f"{d}.{quote(f.column)}" for f in fields)
    sql = (
        f"UPDATE {d} SET status = %s, claim_token = %s, claimed_at = %s, deliveries = deliveries + 1, "
        f"updated_at = %s WHERE id = %s AND (status = %s OR (status = %s AND (claim_token = %s "
        f"OR claimed_at < %s))) RETURNING {returned}, "
        f"(SELECT config_version FROM {dt} WHERE {dt}.id = {d}.document_type_id), "
        f"(SELECT slug FROM {ws} WHERE {ws}.id = {d}.workspace_id), "
        f"(SELECT redact_pii FROM {ws} WHERE {ws}.id = {d}.workspace_id)"
    )
    # What the ORM's compiler would apply to each column read back (JSON text, SQLite dates and booleans).
    converters = []
    for i, f in enumerate(fields):
        found = conn.ops.get_db_converters(f.cached_col) + f.get_db_converters(conn)
        if found:
            converters.append((i, found))
    return sql, [f.attname for f in fields], converters


def claim(document_id: int, token: str, *, now: Any, stale_before: Any) -> Document | None:
    """Claim the document for this delivery (see services._claim); return it, or None.

    One statement: the conditional UPDATE returns the document row with its type's config version and what
    the run needs of its workspace.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    sql = _claim_plan(conn.alias, conn.vendor)[0]
    stamp = conn.ops.adapt_datetimefield_value(now)
    params = [Status.EXTRACTING, token, stamp, stamp, document_id, Status.QUEUED, Status.EXTRACTING, token,
              conn.ops.adapt_datetimefield_value(stale_before)]  # fmt: skip
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else _claimed_document(conn, row)


def _claimed_document(conn: Any, row: Sequence[Any]) -> Document:
    """The Document of a claim's returned row, with its (cached) type and the workspace columns it needs."""
    _, attnames, converters = _claim_plan(conn.alias, conn.vendor)
    values = list(row[: len(attnames)])
    type_version, ws_slug, ws_redact_pii = row[len(attnames) : len(attnames) + 3]
    for i, functions in converters:
        for convert in functions:
            values[i] = convert(values[i], Document._meta.concrete_fields[i].cached_col, conn)
    document = Document.from_db(conn.alias, attnames, values)
    document.document_type = document_type(document.document_type_id, type_version)
    document.workspace = Workspace.from_db(
        conn.alias, ["id", "slug", "redact_pii"], [document.workspace_id, ws_slug, bool(ws_redact_pii)]
    )
    return document


@functools.cache
def _claim_many_sql() -> str:
    """claim_many's statement (PostgreSQL): claim's conditional UPDATE for a list of (id, token) pairs,
    locking the documents it takes in id order first, as the results statement does (no deadlock between
    a process claiming and one storing results)."""
    sql, _, _ = _claim_plan(DEFAULT_DB_ALIAS, "postgresql")
    d = _t(Document)
    returned = sql[sql.index(" RETURNING ") :]
    return (
        f"WITH asked AS (SELECT * FROM unnest(%s::bigint[], %s::text[]) AS a(id, token)), "
        f"ours AS (SELECT {d}.id, asked.token FROM {d} JOIN asked ON asked.id = {d}.id "
        f"WHERE {d}.status = %s OR ({d}.status = %s AND ({d}.claim_token = asked.token "
        f"OR {d}.claimed_at < %s)) ORDER BY {d}.id FOR UPDATE OF {d}) "
        f"UPDATE {d} SET status = %s, claim_token = ours.token, claimed_at = %s, "
        f"deliveries = {d}.deliveries + 1, updated_at = %s FROM ours WHERE {d}.id = ours.id{returned}"
    )


def claim_many(requests: Sequence[tuple[int, str]], *, now: Any, stale_before: Any) -> list[Document | None]:
    """claim() for many (document id, token) pairs at once; on PostgreSQL in one statement.

    Of two requests for one document in the same batch (a redelivery meeting the first delivery) only the
    first can claim it; the other is refused, as it would be if it came second.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.vendor != "postgresql" or len(requests) == 1:
        return [claim(i, t, now=now, stale_before=stale_before) for i, t in requests]
    first: dict[int, str] = {}
    for doc_id, token in requests:
        first.setdefault(doc_id, token)
    stamp = conn.ops.adapt_datetimefield_value(now)
    params = [list(first), list(first.values()), Status.QUEUED, Status.EXTRACTING,
              conn.ops.adapt_datetimefield_value(stale_before), Status.EXTRACTING, stamp, stamp]  # fmt: skip
    with conn.cursor() as cursor:
        cursor.execute(_claim_many_sql(), params)
        rows = cursor.fetchall()
    claimed = {row[0]: _claimed_document(conn, row) for row in rows}  # the first column is the id
    # A document's first request is the one the statement made; popping it refuses any later one, same token
    # or not.
    return [claimed.get(doc_id) if first.pop(doc_id, None) == token else None for doc_id, token in requests]


def _claims_batch(requests: list[tuple[int, str]]) -> list[Document | None]:
    now = timezone.now()
    return claim_many(
        requests, now=now, stale_before=now - timedelta(seconds=settings.REVIEWAPP_STUCK_AFTER_SECONDS)
    )


# --- the run and its calls ------------------------------------------------------------------------------
def new_run(
    *, document: Document, prompt: Any, token: str, arm: str, model_requested: str, now: Any
) -> ExtractionRun:
    """Return this delivery's run, bound to the loaded document and prompt, not yet stored: its row goes in
    with its results (write_results), or earlier through ensure_run."""
    return ExtractionRun(
        document=document, prompt_version=prompt, task_id=token, arm=arm, model_requested=model_requested,
        started_at=now,
    )  # fmt: skip


@functools.cache
def _run_names() -> tuple[str, ...]:
    return tuple(f.name for f in ExtractionRun._meta.concrete_fields if not f.primary_key)


def _run_row(run: ExtractionRun, values: dict[str, Any] | None = None) -> list[Any]:
    """The run's row in _run_names() order, with `values` (by field name) in place of its own."""
    values = values or {}
    return [
        values[n] if n in values else getattr(run, ExtractionRun._meta.get_field(n).attname)
        for n in _run_names()
    ]


def _stored(run: ExtractionRun, pk: int) -> None:
    run.pk = pk
    run._state.adding = False
    run._state.db = connection.alias


def ensure_run(run: ExtractionRun) -> None:
    """INSERT the run as it stands (usually 'running') if it is not stored yet: something must point at it
    before its results do (a failed call's trace), or it ends without results (a crash, a failed step)."""
    if run.pk is None:
        (pk,) = insert_rows(ExtractionRun, _run_names(), [_run_row(run)], returning=True)
        _stored(run, pk)


CALL_FIELDS = ("run", "document", "step", "attempt", "chunk", "prompt_version", "model_alias", "model_requested",
               "model_answered", "output_mode", "messages", "raw_response", "parse_status", "repairs",
               "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd", "latency_ms", "ttft_ms",
               "near_limit", "error_class", "error_message", "created_at")  # fmt: skip

FIELD_FIELDS = ("run", "document", "workspace", "field_spec", "value", "raw_value", "confidence",
                "model_confidence", "reasoning", "evidence_start", "evidence_end", "evidence_text",
                "evidence_chunk", "supported", "problem", "verdict", "status", "audit_sample", "final_value",
                "version", "gold_excluded", "created_at")  # fmt: skip


def insert_calls(rows: Sequence[Sequence[Any]]) -> None:
    insert_rows(LLMCall, CALL_FIELDS, rows)


def _with_run(rows: Sequence[Sequence[Any]], run_id: Any) -> list[Sequence[Any]]:
    """`rows` (CALL_FIELDS or FIELD_FIELDS order: the run first) pointing at `run_id`."""
    return [(run_id, *row[1:]) for row in rows]


# --- results, group-committed ---------------------------------------------------------------------------
@dataclass(eq=False)
class Finished:
    """A succeeded pipeline run, ready to be stored."""

    document: Document
    run: ExtractionRun
    document_status: str
    status_reason: str
    run_values: dict[str, Any]
    fields: list[Sequence[Any]]
    calls: Any  # services.CallLog: its pending rows go in with the results
    events: tuple[str, ...]
    outcome: str = ""


def write_results(items: Sequence[Finished], now: Any) -> None:
    """Store the results of `items` together; set each item's outcome and store its run.

    Ownership is checked per document: it must still be 'extracting' under this delivery's claim (token and
    delivery count: someone may have re-queued or reclaimed it while the models answered, or a redelivery
    of the same task may have taken it over). Runs that lost are stored as abandoned and their fields
    dropped ("superseded"); their calls are kept, as traces.
    """
    if connection.vendor == "postgresql" and all(it.run.pk is None for it in items):
        results = _write_in_one_statement(items, now)
    else:
        results = _write_in_a_transaction(items, now)
    changes = []
    for it, (run_id, mine, subscribed) in zip(items, results, strict=True):
        for name, value in it.run_values.items():
            setattr(it.run, name, value)
        if not mine:
            it.run.status = RunStatus.ABANDONED
        _stored(it.run, run_id)
        it.outcome = it.document_status if mine else "superseded"
        it.calls.pending = []
        if subscribed:
            changes.append((it.document.pk, it.events, it.document.workspace_id))
    webhooks.emit_many(changes)


def _write_in_a_transaction(items: Sequence[Finished], now: Any) -> list[tuple[int, bool, bool]]:
    """write_results, a statement at a time: SQLite, and batches holding a run stored while it ran."""
    d = _t(Document)
    results = []
    with transaction.atomic(), connection.cursor() as cursor:
        # Lock the documents first (in id order), then the runs, as every other writer does.
        owned_sql = " OR ".join(["(id = %s AND claim_token = %s AND deliveries = %s)"] * len(items))
        lock = " ORDER BY id FOR UPDATE" if connection.features.has_select_for_update else ""
        params: list[Any] = [Status.EXTRACTING]
        for it in items:
            params += [it.document.pk, it.document.claim_token, it.document.deliveries]
        cursor.execute(f"SELECT id, deliveries FROM {d} WHERE status = %s AND ({owned_sql}){lock}", params)
        owned = set(cursor.fetchall())
        calls: list[Sequence[Any]] = []
        fields: list[Sequence[Any]] = []
        for it in items:
            mine = (it.document.pk, it.document.deliveries) in owned
            run_values = {**it.run_values, "status": RunStatus.SUCCEEDED if mine else RunStatus.ABANDONED}
            if it.run.pk is None:
                row = _run_row(it.run, run_values)
                (run_id,) = insert_rows(ExtractionRun, _run_names(), [row], returning=True)
            else:
                run_id = it.run.pk
                if not _update(
                    cursor, ExtractionRun, run_id, run_values, " AND status = %s", RunStatus.RUNNING
                ):
                    mine = False  # closed meanwhile (abandoned by a redelivery): drop the results
            if mine:
                values = {"status": it.document_status, "status_reason": it.status_reason, "updated_at": now}
                _update(cursor, Document, it.document.pk, values)
                fields.extend(_with_run(it.fields, run_id))
            calls.extend(_with_run(it.calls.pending, run_id))
            results.append((run_id, mine, mine))
        insert_calls(calls)
        insert_rows(FieldValue, FIELD_FIELDS, fields)
    return results


@functools.cache
def _one_statement_sql() -> str:
    """The PostgreSQL statement of write_results (see _write_in_one_statement)."""
    quote = connection.ops.quote_name
    d, r, c, f, s = (_t(m) for m in (Document, ExtractionRun, LLMCall, FieldValue, WebhookSubscription))

    def columns(model: type[Model], names: tuple[str, ...]) -> list[str]:
        return [quote(model._meta.get_field(n).column) for n in names]

    runs = columns(ExtractionRun, _run_names())
    runs_from_x = ", ".join(
        "CASE WHEN docs.k IS NULL THEN %s ELSE x.status END" if col == quote("status") else f"x.{col}"
        for col in runs
    )
    calls = columns(LLMCall, CALL_FIELDS)[1:]  # the run comes from the item
    fields = columns(FieldValue, FIELD_FIELDS)[1:]
    run_id = quote("run_id")
    return f"""
WITH items AS MATERIALIZED (
    SELECT i.*, nextval(pg_get_serial_sequence('{ExtractionRun._meta.db_table}', 'id')) AS run_id
    FROM json_to_recordset(%s::json)
        AS i(k integer, doc bigint, token text, deliveries integer, status text, reason text)
), owned AS (
    SELECT d.id FROM {d} d JOIN items i ON d.id = i.doc AND d.claim_token = i.token
        AND d.deliveries = i.deliveries
    WHERE d.status = %s ORDER BY d.id FOR UPDATE OF d
), docs AS (
    UPDATE {d} d SET status = i.status, status_reason = i.reason, updated_at = %s
    FROM items i WHERE d.id = i.doc AND d.deliveries = i.deliveries AND d.id IN (SELECT id FROM owned)
    RETURNING i.k, d.workspace_id
), runs AS (
    INSERT INTO {r} (id, {", ".join(runs)})
    SELECT i.run_id, {runs_from_x}
    FROM json_populate_recordset(NULL::{r}, %s::json) x JOIN items i ON i.k = x.id LEFT JOIN docs ON docs.k = i.k
), calls AS (
    INSERT INTO {c} ({run_id}, {", ".join(calls)})
    SELECT i.run_id, {", ".join(f"x.{col}" for col in calls)}
    FROM json_populate_recordset(NULL::{c}, %s::json) WITH ORDINALITY x JOIN items i ON i.k = x.{run_id}
    ORDER BY x.ordinality
), fields AS (
    INSERT INTO {f} ({run_id}, {", ".join(fields)})
    SELECT i.run_id, {", ".join(f"x.{col}" for col in fields)}
    FROM json_populate_recordset(NULL::{f}, %s::json) WITH ORDINALITY x JOIN items i ON i.k = x.{run_id}
        JOIN docs ON docs.k = i.k
    ORDER BY x.ordinality
)
SELECT i.run_id, docs.k IS NOT NULL,
    EXISTS (SELECT 1 FROM {s} s WHERE s.active AND s.workspace_id = docs.workspace_id)
FROM items i LEFT JOIN docs ON docs.k = i.k ORDER BY i.k"""


def _json_rows(
    model: type[Model], names: tuple[str, ...], rows: list[tuple[int, Sequence[Any]]], key: str
) -> str:
    """`rows` as a JSON array of objects keyed by column, with the item's number `k` under `key`."""
    plan = _insert_plan(model, names, connection.ops.quote_name)
    out = []
    for k, row in rows:
        data = dict(zip(plan.columns, _json_row(row, plan.convert), strict=True))
        data[key] = k
        out.append(data)
    return json.dumps(out)


def _write_in_one_statement(items: Sequence[Finished], now: Any) -> list[tuple[int, bool, bool]]:
    """write_results on PostgreSQL, for runs not stored yet: one statement, its own transaction.

    Every item gets a number `k` and a run id from the runs' sequence; the JSON rows of its run, calls and
    fields carry `k` in their id / run_id column, which joins them to the item. Calls and fields are
    inserted in the order given (ORDER BY ordinality: the joins would shuffle them), so their ids keep
    the order the calls were made and the fields are declared in. Sub-statements of one
    statement share a snapshot, so each one takes what it needs of the others from their RETURNING: the
    documents still ours (`docs`) decide the runs' status and which fields go in.
    """
    heads = [
        {"k": k, "doc": it.document.pk, "token": it.document.claim_token, "deliveries": it.document.deliveries,
         "status": it.document_status, "reason": it.status_reason}
        for k, it in enumerate(items)
    ]  # fmt: skip
    rows = [(k, _run_row(it.run, it.run_values)) for k, it in enumerate(items)]
    runs = _json_rows(ExtractionRun, _run_names(), rows, "id")
    calls = _json_rows(
        LLMCall, CALL_FIELDS, [(k, c) for k, it in enumerate(items) for c in it.calls.pending], "run_id"
    )
    fields = _json_rows(
        FieldValue, FIELD_FIELDS, [(k, f) for k, it in enumerate(items) for f in it.fields], "run_id"
    )
    params = [json.dumps(heads), Status.EXTRACTING, now, RunStatus.ABANDONED, runs, calls, fields]
    with connection.cursor() as cursor:
        cursor.execute(_one_statement_sql(), params)
        return cursor.fetchall()  # (run id, still ours, the workspace has webhooks) per item, in order


class _Waiter:
    __slots__ = ("error", "item", "lead", "result", "wake")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.result: Any = None
        self.error: BaseException | None = None
        self.lead = False
        self.wake = threading.Event()


class GroupCommit:
    """Callers of one process that reach the same statement at about the same time share it.

    The first to arrive leads: it waits `window` seconds and runs `write` once for every item submitted
    meanwhile (at most `max_batch`); items submitted during that write form the next batch, led by the
    first of them. Every caller waits until its own batch is done and gets its own result back, so a task
    never goes on (or acks) before its statement has committed; a failed batch raises its error in every
    caller of it. Followers never touch the database: only the leader's connection is used.
    """

    def __init__(self, write: Callable[[list[Any]], Sequence[Any]], *, max_batch: int) -> None:
        self._write = write
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._leading = False

    def submit(self, item: Any, *, window: float) -> Any:
        if window <= 0 or connection.in_atomic_block:
            # No batching asked for, or the caller's own transaction must hold the statement (tests, eager
            # tasks): run it on this thread, now.
            return self._write([item])[0]
        me = _Waiter(item)
        with self._lock:
            self._queue.append(me)
            elected = not self._leading
            if elected:
                self._leading = me.lead = True
        if not elected:
            me.wake.wait()  # our batch is done, or the previous leader handed us the lead
        if me.lead:
            # We head the queue, so we are in the batch we run. Only a newly elected leader waits: a
            # successor's batch gathered while the previous one was being written.
            self._lead(window if elected else 0.0)
        if me.error is not None:
            raise me.error
        return me.result

    def _lead(self, window: float) -> None:
        if window > 0:
            time.sleep(window)  # let the callers arriving now join this batch
        with self._lock:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        try:
            for w, result in zip(batch, self._write([w.item for w in batch]), strict=True):
                w.result = result
        except BaseException as exc:
            for w in batch:
                w.error = exc
        finally:
            with self._lock:
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._leading = False
                else:
                    successor.lead = True
            for w in batch:
                if w is not successor:
                    w.wake.set()
            if successor is not None:
                successor.wake.set()


def _results_batch(items: list[Finished]) -> list[str]:
    write_results(items, timezone.now())
    return [it.outcome for it in items]


# Group commit of results (services._store_result) and of claims (services._claim).
results = GroupCommit(_results_batch, max_batch=50)
claims = GroupCommit(_claims_batch, max_batch=64)
