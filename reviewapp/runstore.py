"""The database side of an extraction run's hot path: the claim, the run row, the call rows, the results.

Every document goes through these statements, so they are plain SQL over Django's connection (the same
text on PostgreSQL and on the embedded SQLite) rather than the ORM: building model instances and compiling
queries was most of the app's own CPU per document (bench/THROUGHPUT.md). Values still go through each
model field's `get_db_prep_save`, so they are stored exactly as the ORM would store them.

- **Document types are cached per process**, checked against `DocumentType.config_version`, which the
  claim returns with the document. Editing a type, a field or a prompt anywhere bumps it (models.py), so
  the next claim reloads the type; when nothing changed, the claim is the only read of a run.
- **Group commit.** Runs that finish at about the same time in one process write their results in one
  transaction (`ResultWriter`): one INSERT of all their calls, one of all their fields. Each run's task
  still returns, and acks its message, only after the transaction holding its results has committed.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.db.models import Model
from django.utils import timezone

from . import webhooks
from .models import Document, DocumentType, ExtractionRun, FieldValue, LLMCall, Workspace

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
    sql, attnames, converters = _claim_plan(conn.alias, conn.vendor)
    stamp = conn.ops.adapt_datetimefield_value(now)
    params = [Status.EXTRACTING, token, stamp, stamp, document_id, Status.QUEUED, Status.EXTRACTING, token,
              conn.ops.adapt_datetimefield_value(stale_before)]  # fmt: skip
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row[: len(attnames)])
    type_version, ws_slug, ws_redact_pii = row[len(attnames) :]
    for i, functions in converters:
        for convert in functions:
            values[i] = convert(values[i], Document._meta.concrete_fields[i].cached_col, conn)
    document = Document.from_db(conn.alias, attnames, values)
    document.document_type = document_type(document.document_type_id, type_version)
    document.workspace = Workspace.from_db(
        conn.alias, ["id", "slug", "redact_pii"], [document.workspace_id, ws_slug, bool(ws_redact_pii)]
    )
    return document


# --- the run and its calls ------------------------------------------------------------------------------
def run_start(
    *, document: Document, prompt: Any, token: str, arm: str, model_requested: str, now: Any
) -> ExtractionRun:
    """INSERT the run row ('running', the model's defaults elsewhere) and return it, bound to the loaded
    document and prompt."""
    run = ExtractionRun(
        document=document, prompt_version=prompt, task_id=token, arm=arm, model_requested=model_requested,
        started_at=now,
    )  # fmt: skip
    fields = [f for f in ExtractionRun._meta.concrete_fields if not f.primary_key]
    (run.pk,) = insert_rows(
        ExtractionRun,
        tuple(f.name for f in fields),
        [[getattr(run, f.attname) for f in fields]],
        returning=True,
    )
    run._state.adding = False
    run._state.db = connection.alias
    return run


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
    error: BaseException | None = None
    lead: bool = False
    wake: threading.Event = field(default_factory=threading.Event)


def write_results(items: Sequence[Finished], now: Any) -> None:
    """Store the results of `items` in one transaction; set each item's outcome.

    Ownership is checked per document: the document must still be 'extracting' under this delivery's token
    (someone may have re-queued or reclaimed it while the models answered) and its run still 'running' (a
    duplicate delivery of the same task abandons it when it takes over). Runs that lost are marked
    abandoned and their results dropped ("superseded"); their calls are kept, as traces.
    """
    d, r = _t(Document), _t(ExtractionRun)
    with transaction.atomic(), connection.cursor() as cursor:
        # Lock the documents first (in id order), then the runs, as every other writer does.
        owned_sql = " OR ".join(["(id = %s AND claim_token = %s)"] * len(items))
        lock = " ORDER BY id FOR UPDATE" if connection.features.has_select_for_update else ""
        params: list[Any] = [Status.EXTRACTING]
        for it in items:
            params += [it.document.pk, it.document.claim_token]
        cursor.execute(f"SELECT id FROM {d} WHERE status = %s AND ({owned_sql}){lock}", params)
        owned = {row[0] for row in cursor.fetchall()}
        calls: list[Sequence[Any]] = []
        fields: list[Sequence[Any]] = []
        lost: list[int] = []
        stored: list[Finished] = []
        for it in items:
            mine = it.document.pk in owned and _update(
                cursor, ExtractionRun, it.run.pk, it.run_values, " AND status = %s", RunStatus.RUNNING
            )
            if mine:
                values = {"status": it.document_status, "status_reason": it.status_reason, "updated_at": now}
                _update(cursor, Document, it.document.pk, values)
                fields.extend(it.fields)
                stored.append(it)
                it.outcome = it.document_status
            else:
                lost.append(it.run.pk)
                it.outcome = "superseded"
            calls.extend(it.calls.pending)
        if lost:
            marks = ", ".join(["%s"] * len(lost))
            cursor.execute(
                f"UPDATE {r} SET status = %s, finished_at = %s WHERE id IN ({marks})",
                [RunStatus.ABANDONED, connection.ops.adapt_datetimefield_value(now), *lost],
            )
        insert_calls(calls)
        insert_rows(FieldValue, FIELD_FIELDS, fields)
        webhooks.emit_many([(it.document.pk, it.events, it.document.workspace_id) for it in stored])
    for it in items:
        it.calls.pending = []


class ResultWriter:
    """Group commit: the first run to finish leads, waits `window` seconds, and writes the results of every
    run that finished meanwhile in one transaction; runs finishing during that write form the next batch,
    led by the first of them. Every run waits until its own batch has committed, so a task never acks
    results that are not stored; a failed batch raises its error in every run of it.
    """

    MAX_BATCH = 50

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Finished] = []
        self._leading = False

    def submit(self, item: Finished, *, window: float) -> str:
        if window <= 0 or connection.in_atomic_block:
            # No batching asked for, or the caller's own transaction must hold the results (tests, eager
            # tasks): write on this thread, now.
            write_results([item], timezone.now())
            return item.outcome
        with self._lock:
            self._queue.append(item)
            elected = not self._leading
            if elected:
                self._leading = item.lead = True
        if not elected:
            item.wake.wait()  # our batch was written, or the previous leader handed us the lead
        if item.lead:
            # Our item heads the queue, so it is in the batch we write. Only a newly elected leader
            # waits: a successor's batch gathered while the previous one was being written.
            self._lead(window if elected else 0.0)
        if item.error is not None:
            raise item.error
        return item.outcome

    def _lead(self, window: float) -> None:
        if window > 0:
            time.sleep(window)  # let the runs finishing now join this transaction
        with self._lock:
            batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
        try:
            write_results(batch, timezone.now())
        except BaseException as exc:
            for it in batch:
                it.error = exc
        finally:
            with self._lock:
                successor = self._queue[0] if self._queue else None
                if successor is None:
                    self._leading = False
                else:
                    successor.lead = True
            for it in batch:
                if it is not successor:
                    it.wake.set()
            if successor is not None:
                successor.wake.set()


results = ResultWriter()
