"""Reads. Every query that returns documents or fields is scoped to the user's workspaces here, once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Q, QuerySet, Subquery, Value
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from .errors import NotFound
from .models import Document, DocumentType, FieldValue, Membership, Workspace

_memberships_epoch = 0  # bumped by every change of a membership or workspace in this process


@receiver([post_save, post_delete], sender=Membership)
@receiver([post_save, post_delete], sender=Workspace)
def _memberships_changed(**kwargs: Any) -> None:
    global _memberships_epoch
    _memberships_epoch += 1


def workspace_ids(user: Any) -> list[int]:
    """Return the ids of the workspaces `user` may see: all for a superuser, one for an API key.

    Remembered on the user object (loaded afresh for each request) until a membership or workspace changes:
    a queue request asked for the same ids 3 times, an accept 4 times."""
    if not getattr(user, "is_authenticated", False):
        return []
    # An API-key principal is its creator narrowed to the key's workspace (set by ApiKeyAuthentication):
    # the key must never reach further than that, even when its creator is a superuser.
    scoped = getattr(user, "api_workspace_ids", None)
    if scoped is not None:
        return list(scoped)
    key = (_memberships_epoch, user.pk, user.is_superuser)
    memo = getattr(user, "_workspace_ids_memo", None)
    if memo is not None and memo[0] == key:
        return list(memo[1])
    if user.is_superuser:
        ids = list(Workspace.objects.values_list("id", flat=True))
    else:
        ids = list(Membership.objects.filter(user=user).values_list("workspace_id", flat=True))
    user._workspace_ids_memo = (key, ids)
    return list(ids)


def workspaces_for(user: Any) -> QuerySet[Workspace]:
    return Workspace.objects.filter(id__in=workspace_ids(user)).order_by("name")


def is_workspace_admin(user: Any, workspace: Workspace) -> bool:
    return (
        bool(user.is_superuser)
        or Membership.objects.filter(user=user, workspace=workspace, role=Membership.Role.ADMIN).exists()
    )


def documents_for(user: Any) -> QuerySet[Document]:
    return Document.objects.filter(workspace_id__in=workspace_ids(user)).select_related(
        "document_type", "workspace"
    )


def document_for(user: Any, pk: Any) -> Document:
    """Return the document if `user` may see it. Another workspace's document is NotFound, not Forbidden:
    its existence is not disclosed."""
    try:
        return documents_for(user).get(pk=int(pk))
    except (Document.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such document.") from None


def field_for(user: Any, pk: Any) -> FieldValue:
    try:
        return (
            FieldValue.objects.filter(workspace_id__in=workspace_ids(user))
            .select_related("field_spec", "document", "document__document_type", "run__prompt_version")
            .get(pk=int(pk))
        )
    except (FieldValue.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such field.") from None


def document_types() -> QuerySet[DocumentType]:
    return DocumentType.objects.order_by("name")


@dataclass(frozen=True)
class QueueFilters:
    workspace: int | None = None
    document_type: str | None = None
    field: str | None = None
    band: str | None = None  # "low" < 0.5 <= "mid" < 0.8 <= "high"
    max_age_days: int | None = None
    sort: str = "confidence"  # confidence | age

    BANDS = {"low": (0.0, 0.5), "mid": (0.5, 0.8), "high": (0.8, 1.01)}

    @classmethod
    def from_query(cls, params: Any) -> QueueFilters:
        def _int(name: str) -> int | None:
            try:
                return int(params.get(name)) if params.get(name) else None
            except (TypeError, ValueError):
                return None

        sort = params.get("sort") if params.get("sort") in ("confidence", "age") else "confidence"
        band = params.get("band") if params.get("band") in cls.BANDS else None
        return cls(
            workspace=_int("workspace"),
            document_type=params.get("type") or None,
            field=params.get("field") or None,
            band=band,
            max_age_days=_int("age"),
            sort=sort,
        )

    def as_query(self) -> dict[str, Any]:
        q = {
            "workspace": self.workspace,
            "type": self.document_type,
            "field": self.field,
            "band": self.band,
            "age": self.max_age_days,
            "sort": self.sort,
        }
        return {k: v for k, v in q.items() if v not in (None, "")}


def open_fields(user: Any, filters: QueueFilters | None = None) -> QuerySet[FieldValue]:
    """Return the fields waiting for review that `user` may see, filtered; unordered."""
    filters = filters or QueueFilters()
    ids = workspace_ids(user)
    if filters.workspace is not None:
        ids = [i for i in ids if i == filters.workspace]
    qs = FieldValue.objects.filter(status=FieldValue.Status.NEEDS_REVIEW, workspace_id__in=ids)
    if filters.document_type:
        qs = qs.filter(field_spec__document_type__slug=filters.document_type)
    if filters.field:
        qs = qs.filter(field_spec__name=filters.field)
    if filters.band:
        low, high = QueueFilters.BANDS[filters.band]
        qs = qs.filter(confidence__gte=low, confidence__lt=high)
    if filters.max_age_days:
        qs = qs.filter(created_at__gte=timezone.now() - timedelta(days=filters.max_age_days))
    return qs


def queue_order(filters: QueueFilters) -> list[str]:
    return ["created_at", "id"] if filters.sort == "age" else ["confidence", "id"]


def queue_candidates(
    base: QuerySet[FieldValue],
    workspace_ids: list[int],
    order: list[str],
    n: int = 20,
    held: QuerySet[FieldValue] | None = None,
) -> Any:
    """Return (pk, held, *order) of the first `n` fields of `base` in queue order, after the first field of
    `held` (the fields the reviewer holds; `held` is True on its row) when given.

    One index-ordered subquery per workspace, merged by UNION ALL: the partial indexes fv_queue and
    fv_queue_age return one workspace's open fields in order, but for an IN list of several workspaces
    PostgreSQL reads every open field and sorts them (358 ms instead of 0.2 ms at 1 M fields, see bench/).
    """
    parts = [
        base.filter(workspace_id=w)
        .annotate(held=Value(False))
        .order_by(*order)
        .values_list("pk", "held", *order)[:n]
        for w in workspace_ids
    ]
    if held is not None:
        parts.insert(
            0, held.annotate(held=Value(True)).order_by(*order).values_list("pk", "held", *order)[:1]
        )
    if not parts:
        return []
    if len(parts) == 1:
        return parts[0]
    if connection.features.supports_slicing_ordering_in_compound:
        return parts[0].union(*parts[1:], all=True).order_by("-held", *order)[:n]
    # SQLite (the embedded demo) cannot order or limit the parts of a UNION: merge them here.
    return sorted((row for part in parts for row in part), key=lambda r: (not r[1], *r[2:]))[:n]


OPEN_COUNT_CAP = 1000  # "1000+": counting every open field costs a scan of all of them


def queue_counts(user: Any, filters: QueueFilters | None = None) -> dict[str, int]:
    """Return the counts shown above the queue: open fields (capped), and today's decisions by this user.

    Both in one statement: every queue response shows them."""
    from .models import ReviewDecision

    since = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    open_sql, open_params = (
        open_fields(user, filters).order_by().values("pk")[: OPEN_COUNT_CAP + 1].query.sql_with_params()
    )
    done_sql, done_params = (
        ReviewDecision.objects.filter(reviewer=user, created_at__gte=since)
        .values("pk")
        .query.sql_with_params()
    )
    with connection.cursor() as cur:
        cur.execute(
            # Both parts are the ORM's SQL with their values passed as parameters: nothing is interpolated.
            f"SELECT (SELECT COUNT(*) FROM ({open_sql}) o), (SELECT COUNT(*) FROM ({done_sql}) d)",  # noqa: S608
            [*open_params, *done_params],
        )
        open_count, done_today = cur.fetchone()
    return {"open": open_count, "done_today": done_today}


def queue_filter_choices(user: Any) -> dict[str, list[dict[str, Any]]]:
    """Return the options of the queue's filter form: the user's workspaces (pk, name) and the document
    types (slug, name), as plain rows."""
    return {
        "workspaces": list(workspaces_for(user).values("pk", "name")),
        "document_types": list(document_types().values("slug", "name")),
    }


def document_status_counts(user: Any) -> dict[str, int]:
    rows = documents_for(user).order_by().values("status").annotate(n=Count("id"))
    return {r["status"]: r["n"] for r in rows}


def _current_run_fields(document: Document) -> QuerySet[FieldValue]:
    """The fields of the document's current run (Document.current_run), in schema order.

    One query: the current run is a subquery, not a round trip of its own (no run: no fields)."""
    current_run = document.runs.current().values("pk")[:1]
    return FieldValue.objects.filter(run_id=Subquery(current_run)).order_by(
        "field_spec__position", "field_spec_id"
    )


def document_fields(document: Document) -> list[FieldValue]:
    """Return the fields of the document's current run, in schema order."""
    return list(_current_run_fields(document).select_related("field_spec", "reviewer", "claimed_by"))


def queue_siblings(document: Document) -> list[dict[str, Any]]:
    """Return the rows of the queue's "other fields" list, in schema order: pk, status, its label, the field's
    name and the value shown (the final value, else the model's, else a dash).

    Plain rows, not models: the queue renders this on every request (whole rows with their users cost 2.7 ms,
    models with only these columns 1.1 ms, these rows ~0.4 ms)."""
    labels = dict(FieldValue.Status.choices)
    rows = _current_run_fields(document).values_list(
        "id", "status", "value", "final_value", "field_spec__name"
    )
    return [
        {
            "pk": pk,
            "status": status,
            "label": labels.get(status, status),
            "name": name,
            "shown": final if final is not None else "—" if value is None else value,
        }
        for pk, status, value, final, name in rows
    ]


def document_history(document: Document) -> QuerySet[Any]:
    from .models import ReviewDecision

    return ReviewDecision.objects.filter(document=document).select_related(
        "reviewer", "field_value__field_spec", "field_value__run__prompt_version"
    )


def search_documents(user: Any, *, status: str | None = None, q: str | None = None) -> QuerySet[Document]:
    qs = documents_for(user)
    if status:
        qs = qs.filter(status=status)
    if q:
        qs = qs.filter(Q(filename__icontains=q) | Q(sha256=q))
    return qs
