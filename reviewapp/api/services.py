"""API-side writes and reads that reviewapp.services does not offer yet (document delete, workspace
administration: webhooks and API keys). Same rules: lock what you change, queue work on commit."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from .. import webhooks
from ..errors import InvalidTransition, NotFound, ReviewAppError
from ..models import Document, Membership, ReviewDecision, WebhookSubscription, Workspace


class NotWorkspaceAdmin(ReviewAppError):
    code = "not_workspace_admin"
    status = 403


def admin_workspaces(user: Any) -> QuerySet[Workspace]:
    """Return the workspaces `user` administers (all for a superuser)."""
    if getattr(user, "api_workspace_ids", None) is not None:
        return Workspace.objects.none()  # an API key administers nothing
    if user.is_superuser:
        return Workspace.objects.order_by("name")
    return Workspace.objects.filter(membership__user=user, membership__role=Membership.Role.ADMIN).order_by(
        "name"
    )


def admin_workspace(user: Any, slug: str | None) -> Workspace:
    """Return the workspace named by `slug` among those `user` administers, or the only one."""
    allowed = admin_workspaces(user)
    if slug:
        workspace = allowed.filter(slug=slug).first()
        if workspace is None:
            raise NotFound(f"No workspace {slug!r}.")
        return workspace
    count = allowed.count()
    if count == 0:
        raise NotWorkspaceAdmin("You administer no workspace.")
    if count > 1:
        raise ReviewAppError(
            "You administer several workspaces: name one with `workspace`.", code="workspace_required"
        )
    return allowed.get()


def document_delete(*, document: Document) -> None:
    """Delete a document with its runs, fields and calls.

    Refused (409) while it is queued or extracting, since a worker may be writing its results, and once a
    human decided any of its fields: review decisions are the append-only audit trail and the gold data.
    The row is locked so a concurrent retry cannot re-queue it between the check and the delete.
    """
    with transaction.atomic():
        locked = Document.objects.select_for_update().get(pk=document.pk)
        if locked.status in (Document.Status.QUEUED, Document.Status.EXTRACTING):
            raise InvalidTransition(
                f"Document {locked.pk} is {locked.status}; delete it once its extraction has finished.",
                code="in_progress",
            )
        if ReviewDecision.objects.filter(document=locked).exists():
            raise InvalidTransition(
                f"Document {locked.pk} has review decisions, which are kept as the audit trail.",
                code="has_decisions",
            )
        name, storage = locked.file.name, locked.file.storage
        locked.delete()
        if name:
            # The file goes only once the row is gone for good: a rollback must not leave a row without it.
            transaction.on_commit(lambda: storage.delete(name))


def webhook_subscribe(*, workspace: Workspace, url: str, events: list[str]) -> WebhookSubscription:
    return WebhookSubscription.objects.create(
        workspace=workspace,
        url=url,
        events=[e for e in webhooks.EVENTS if e in events],
        secret=webhooks.new_secret(),
    )
