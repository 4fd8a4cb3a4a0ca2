"""The promotion gate: a prompt version becomes active only if its evaluation does not regress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F, Q

from ..errors import NotFound, ReviewAppError
from ..models import DocumentType, Evaluation, PromotionEvent, PromptVersion
from .reports import evaluation_compare


class PromotionBlocked(ReviewAppError):
    """The gate refused a promotion; `details["comparison"]` holds the comparison that failed."""

    code = "promotion_blocked"
    status = 409


def latest_evaluation(prompt_version: PromptVersion) -> Evaluation | None:
    """Return the newest finished evaluation of a prompt version with the model it will run with.

    An evaluation with another model alias does not speak for the version as it would run in production.
    """
    return (
        Evaluation.objects.filter(prompt_version=prompt_version, status=Evaluation.Status.DONE)
        .filter(Q(model_alias="") | Q(model_alias=prompt_version.model_alias))
        .select_related("document_type")
        .order_by("-created_at", "-id")
        .first()
    )


@dataclass
class Gate:
    """The promotion gate's verdict for one prompt version."""

    passes: bool
    message: str
    evaluation: Evaluation | None
    baseline: Evaluation | None
    comparison: dict[str, Any]


def promotion_gate(*, document_type: DocumentType, prompt_version: PromptVersion) -> Gate:
    """Decide whether `prompt_version` may become active: its evaluation must not regress.

    Compare its latest evaluation with the current active version's (compare(), margin =
    promotion_margin). No evaluation of the candidate blocks; no active version passes; an active
    version without an evaluation blocks (there is nothing to show the candidate is no worse).
    """
    current = document_type.active_prompt
    candidate = latest_evaluation(prompt_version)
    if candidate is None:
        return Gate(False, f"{prompt_version.label} has no finished evaluation on gold", None, None, {})
    if current is None:
        return Gate(True, "no active version to compare with", candidate, None, {})
    if current.pk == prompt_version.pk:
        return Gate(False, f"{prompt_version.label} is already active", candidate, None, {})
    baseline = latest_evaluation(current)
    if baseline is None:
        message = f"the active version {current.label} has no finished evaluation to compare with"
        return Gate(False, message, candidate, None, {})
    comparison = evaluation_compare(baseline, candidate, margin=document_type.promotion_margin)
    return Gate(comparison.passes, comparison.summary, candidate, baseline, comparison.to_dict())


def prompt_promote(
    *, document_type: DocumentType, prompt_version: PromptVersion, user: Any, override_reason: str = ""
) -> PromotionEvent:
    """Make `prompt_version` active if the gate passes, or with a written override reason; audit it.

    Raise PromotionBlocked when the gate fails and no reason is given. If the version was the A/B
    candidate, the candidate slot is cleared: both arms would otherwise run the same prompt.
    """
    if prompt_version.document_type_id != document_type.pk:
        raise NotFound("No such prompt version for this document type.")
    reason = override_reason.strip()
    with transaction.atomic():
        # Lock the type: two admins promoting at once must not both record the same `previous`.
        locked = DocumentType.objects.select_for_update().get(pk=document_type.pk)
        if locked.active_prompt_id == prompt_version.pk:
            raise ReviewAppError(f"{prompt_version.label} is already active", code="already_active")
        gate = promotion_gate(document_type=locked, prompt_version=prompt_version)
        if not gate.passes and not reason:
            raise PromotionBlocked(gate.message, details={"comparison": gate.comparison})
        event = PromotionEvent.objects.create(
            document_type=locked,
            prompt_version=prompt_version,
            previous_id=locked.active_prompt_id,
            evaluation=gate.evaluation,
            baseline=gate.baseline,
            comparison={**gate.comparison, "gate": gate.message, "passes": gate.passes},
            overridden=not gate.passes,
            reason=reason,
            actor=user,
        )
        _activate(locked, prompt_version)
    document_type.refresh_from_db()
    return event


def _activate(locked: DocumentType, prompt_version: PromptVersion) -> None:
    updates: dict[str, Any] = {"active_prompt": prompt_version}
    if locked.candidate_prompt_id == prompt_version.pk:
        updates.update(candidate_prompt=None, candidate_share=0.0)
    DocumentType.objects.filter(pk=locked.pk).update(**updates, config_version=F("config_version") + 1)


def prompt_rollback(*, document_type: DocumentType, user: Any, reason: str = "") -> PromotionEvent:
    """Make the version that was active before the latest promotion active again; audit it.

    A rollback after a rollback goes back again (it undoes the undo), like an editor's undo of the last
    change, not a walk down the history.
    """
    with transaction.atomic():
        locked = DocumentType.objects.select_for_update().get(pk=document_type.pk)
        last = locked.promotions.order_by("-created_at", "-id").first()
        if last is None or last.previous_id is None:
            raise ReviewAppError("There is no previous active version to roll back to.", code="no_previous")
        if last.prompt_version_id != locked.active_prompt_id:
            # The active version changed outside the audited path: rolling back would be a guess.
            raise ReviewAppError(
                "The active version is not the one the last promotion made active.", code="out_of_sync"
            )
        target = last.previous
        event = PromotionEvent.objects.create(
            document_type=locked,
            prompt_version=target,
            previous_id=locked.active_prompt_id,
            is_rollback=True,
            reason=reason.strip() or "rollback",
            actor=user,
        )
        _activate(locked, target)
    document_type.refresh_from_db()
    return event
