"""ORM queries compiled once per process, then run with each request's values.

Building and compiling an ORM query costs 0.1-1 ms of Python per request, more than running it on the
database. The hot reads and writes (the queue, a decision, a claim) are therefore built once per process,
database vendor and shape of request (how many workspaces, which filters), with distinct stand-in values
(StandIns) for the per-request ones; the stand-ins are recognised among the compiled statement's parameters
and replaced with the request's values (bind). Model rows are turned into the ORM's own instances, with the
compiler's own layout of a row (instances), so callers get what iterating the queryset would give. Where the
backend adapts a stand-in on its way through the compiler (SQLite turns datetimes into strings), there is no
compiled statement and the ORM builds the query each time.

The query builders themselves stay with their callers (selectors, services): a builder takes a StandIns (or
an Actual, the request's own values under the same names) and returns the queryset.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.db.transaction import TransactionManagementError


class StandIns:
    """Distinct stand-in values, one per named parameter, recognisable in a compiled statement's parameters."""

    def __init__(self) -> None:
        self.names: dict[tuple[type, Any], str] = {}

    def _add(self, name: str, value: Any) -> Any:
        self.names[(type(value), value)] = name
        return value

    def int(self, name: str) -> int:
        return self._add(name, -2_000_000_000 + len(self.names))  # in range of any id column

    def datetime(self, name: str) -> Any:
        return self._add(name, datetime(1901, 1, 1, microsecond=len(self.names) + 1, tzinfo=UTC))

    def str(self, name: str) -> str:
        return self._add(name, f"\x00stand-in {name}")

    def slots(self, params: Any) -> tuple[tuple[str | None, Any], ...]:
        """Each parameter of a compiled statement with its stand-in's name (None: a constant, kept)."""
        return tuple((self.names.get((type(p), p)), p) for p in params)

    def complete(
        self, slots: tuple[tuple[str | None, Any], ...], *, unused: frozenset[str] = frozenset()
    ) -> bool:
        """Whether every stand-in made (but `unused`) came through the compiler unchanged: not where the backend
        adapts a value (SQLite turns datetimes into strings); then the ORM must build the statement each time."""
        return {name for name, _ in slots} - {None} == set(self.names.values()) - unused

    def compile(self, qs: QuerySet[Any]) -> tuple[str, tuple[tuple[str | None, Any], ...]]:
        """`qs`'s SQL as the ORM writes it, and each parameter's stand-in name (slots)."""
        sql, params = qs.query.sql_with_params()
        return sql, self.slots(params)

    def compile_update(
        self, qs: QuerySet[Any], **values: Any
    ) -> tuple[str, tuple[tuple[str | None, Any], ...]]:
        """The SQL of `qs.update(**values)` as the ORM writes it (QuerySet.update's own steps), with its stand-ins
        named as in compile()."""
        from django.db.models import sql

        query = qs.query.chain(sql.UpdateQuery)
        query.add_update_values(values)
        query.annotations = {}
        sql_, params = query.get_compiler(connection=connection).as_sql()
        return sql_, self.slots(params)


class Actual:
    """The request's own values under the stand-ins' names: a builder given this instead of a StandIns builds
    the ORM query that the compiled statement stands for (the fallback, and what the tests compare it with)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def int(self, name: str) -> Any:
        return self.values[name]

    datetime = str = int


def bind(slots: tuple[tuple[str | None, Any], ...], values: dict[str, Any]) -> list[Any]:
    """The parameters of a statement compiled by StandIns.compile, with `values` in place of the stand-ins."""
    return [const if name is None else values[name] for name, const in slots]


@functools.cache
def statement(
    build: Callable[[Any], QuerySet[Any]], vendor: str
) -> tuple[str, tuple[tuple[str | None, Any], ...]]:
    """The SQL of `build(value)`'s query as the ORM writes it, built once per process (and database vendor),
    with `value`'s place among its parameters. For the statements every queue request runs: building and
    compiling a query costs the ORM 0.1-0.5 ms of Python each time, more than running it."""
    si = StandIns()
    sql, slots = si.compile(build(si.int("value")))
    if [name for name, _ in slots].count("value") != 1:
        raise ValueError(f"the value must be exactly one parameter of {sql}")
    return sql, slots


def rows(build: Callable[[Any], QuerySet[Any]], value: Any) -> list[tuple[Any, ...]]:
    """Run `build(value)`'s query (a values_list: plain rows) from its SQL compiled once (statement)."""
    sql, slots = statement(build, connection.vendor)
    with connection.cursor() as cur:
        cur.execute(sql, bind(slots, {"value": value}))
        return cur.fetchall()


@dataclass(frozen=True)
class ModelStatement:
    """A model query (select_related, only, annotations, FOR UPDATE OF ...) compiled once: its SQL, its parameters'
    stand-in names, and the ORM compiler's own layout of a row (which columns make which instance, the related
    objects it caches, the annotations, each column's converters), so that its rows become the same instances
    the ORM would build (django.db.models.query.ModelIterable)."""

    sql: str
    slots: tuple[tuple[str | None, Any], ...]
    model: type
    init_list: tuple[str, ...]
    fields: slice
    populators: tuple[Any, ...]
    annotations: tuple[tuple[str, int], ...]
    converters: tuple[tuple[int, tuple[Callable[..., Any], ...], Any], ...]
    for_update: bool


def compile_models(si: StandIns, qs: QuerySet[Any]) -> ModelStatement:
    from django.db.models.query import get_related_populators

    compiler = qs.query.get_compiler(connection=connection)
    sql, params = compiler.as_sql()
    select, klass_info = compiler.select, compiler.klass_info
    start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    converters = compiler.get_converters([col for col, *_ in select])
    return ModelStatement(
        sql=sql,
        slots=si.slots(params),
        model=klass_info["model"],
        init_list=tuple(col.target.attname for col, *_ in select[start:end]),
        fields=slice(start, end),
        populators=tuple(get_related_populators(klass_info, select, qs.db)),
        annotations=tuple(compiler.annotation_col_map.items()),
        converters=tuple((i, tuple(convs), expr) for i, (convs, expr) in converters.items()),
        for_update=qs.query.select_for_update,
    )


@functools.lru_cache(maxsize=512)
def model_statement(build: Callable[..., QuerySet[Any]], vendor: str, *shape: Any) -> ModelStatement | None:
    """`build(si, *shape)`'s model query compiled once per process, database vendor and shape (ModelStatement).
    `build` names each per-request value with a stand-in of `si`. None when a stand-in does not come through
    unchanged (SQLite adapts datetimes to strings): then the ORM builds the query every time."""
    si = StandIns()
    st = compile_models(si, build(si, *shape))
    return st if si.complete(st.slots) else None


def instances(
    build: Callable[..., QuerySet[Any]], shape: tuple[Any, ...], values: dict[str, Any]
) -> list[Any]:
    """The instances of `build(values, *shape)`'s query: what iterating the ORM's queryset returns, from its
    statement compiled once (model_statement) instead of building and compiling it on every request (0.5-1 ms
    of Python for a select_related read, more than running it)."""
    st = model_statement(build, connection.vendor, *shape)
    if st is None:
        return list(build(Actual(values), *shape))
    if st.for_update and connection.get_autocommit():  # as the ORM: a lock outside a transaction is a bug
        raise TransactionManagementError("select_for_update cannot be used outside of a transaction.")
    with connection.cursor() as cur:
        cur.execute(st.sql, bind(st.slots, values))
        fetched = cur.fetchall()
    out = []
    for raw in fetched:
        row = list(raw)
        for i, convs, expr in st.converters:
            for convert in convs:
                row[i] = convert(row[i], expr, connection)
        obj = st.model.from_db(connection.alias, st.init_list, row[st.fields])
        for populator in st.populators:
            populator.populate(row, obj)
        for name, pos in st.annotations:
            setattr(obj, name, row[pos])
        out.append(obj)
    return out
