"""The review queue in a real browser (Debian's chromium via Playwright), checked against the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reviewapp.models import FieldValue, ReviewDecision
from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
DOCS = Path(__file__).resolve().parents[2] / "docs"
PASSWORD_OF = {"rita": "pw-rita-123", "sam": "pw-sam-123", "olga": "pw-olga-123"}


def open_count() -> int:
    return FieldValue.objects.filter(status="needs_review").count()


def current_item(page: Any) -> FieldValue:
    page.wait_for_function(
        "document.body.dataset.ready && document.body.dataset.ready === document.querySelector('#item').dataset.field"
    )
    pk = int(page.get_attribute("#item", "data-field"))
    return FieldValue.objects.select_related("field_spec").get(pk=pk)


def wait_for_new_item(page: Any, old_pk: int) -> None:
    """Wait until another item is swapped in and settled (the page marks it ready for keys)."""
    page.wait_for_function(
        f"document.body.dataset.ready === (document.querySelector('#item').dataset.field || 'empty')"
        f" && document.body.dataset.ready !== '{old_pk}'"
    )


def test_review_with_the_keyboard_only(new_page: Any, make_document: Any, reviewer: Any) -> None:
    while FieldValue.objects.filter(status="needs_review").count() < 20:
        make_document(filename=f"receipt-{FieldValue.objects.count()}.txt")
    page = new_page()
    login(page, "rita", PASSWORD_OF["rita"])
    start = open_count()

    # a: accept, and the next field arrives without a page load, focus on its Accept button.
    item = current_item(page)
    page.evaluate("window.__marker = 1")  # survives only if no full page load happens
    page.keyboard.press("a")
    wait_for_new_item(page, item.pk)
    item.refresh_from_db()
    assert item.status == "accepted" and item.reviewer == reviewer
    assert page.evaluate("window.__marker") == 1
    assert page.evaluate("document.activeElement.id") == "btn-accept"
    assert open_count() == start - 1

    # c: correct with an invalid value (error inline, nothing stored), then a valid one (Enter saves).
    page.wait_for_timeout(100)
    page.screenshot(path=str(DOCS / "queue.png"))
    item = current_item(page)
    page.keyboard.press("c")
    page.keyboard.press("Control+a")
    bad = (
        "not-a-date"
        if item.field_spec.type == "date"
        else ("abc" if item.field_spec.type == "money" else None)
    )
    if bad:
        page.keyboard.type(bad)
        page.keyboard.press("Enter")
        page.wait_for_selector("#correct-error")
        assert page.get_attribute("#correct-value", "aria-invalid") == "true"
        item.refresh_from_db()
        assert item.status == "needs_review" and not item.decisions.exists()
        page.keyboard.press("Control+a")
    good = {"date": "2024-03-14", "money": "99.95 MYR", "number": "42"}.get(
        item.field_spec.type, "Corrected Name"
    )
    page.keyboard.type(good)
    page.keyboard.press("Enter")
    wait_for_new_item(page, item.pk)
    item.refresh_from_db()
    assert item.status == "corrected" and item.final_value is not None
    decision = ReviewDecision.objects.get(field_value=item)
    assert decision.action == "correct" and decision.after_value == item.final_value

    # Esc cancels a correction without deciding.
    item = current_item(page)
    page.keyboard.press("c")
    page.keyboard.press("Escape")
    assert page.is_hidden(".correct-box")
    item.refresh_from_db()
    assert item.status == "needs_review"

    # r: reject.
    page.keyboard.press("r")
    wait_for_new_item(page, item.pk)
    item.refresh_from_db()
    assert item.status == "rejected" and item.final_value is None

    # j skips, k comes back.
    skipped = current_item(page)
    page.keyboard.press("j")
    wait_for_new_item(page, skipped.pk)
    page.keyboard.press("k")
    page.wait_for_function(f"document.body.dataset.ready === '{skipped.pk}'")

    # ? shows the shortcuts.
    page.keyboard.press("?")
    assert page.is_visible("#help")
    page.keyboard.press("Escape")

    # The rest with the keyboard only, until the queue is empty.
    while open_count():
        item = current_item(page)
        page.keyboard.press("a")
        wait_for_new_item(page, item.pk)
        item.refresh_from_db()
        assert item.status == "accepted"
    page.wait_for_selector("text=Queue is empty")
    assert FieldValue.objects.filter(status="needs_review").count() == 0


def test_two_reviewers_get_different_items_and_a_stale_decision_is_refused(
    new_page: Any, make_document: Any, reviewer: Any, second_reviewer: Any
) -> None:
    for i in range(3):
        make_document(filename=f"r{i}.txt")
    rita, sam = new_page(), new_page()
    login(rita, "rita", PASSWORD_OF["rita"])
    login(sam, "sam", PASSWORD_OF["sam"])
    a, b = current_item(rita), current_item(sam)
    assert a.pk != b.pk

    # Sam opens the document page of Rita's item, waits, and decides after Rita already did.
    sam.goto(f"/documents/{a.document_id}/")
    rita.keyboard.press("a")
    wait_for_new_item(rita, a.pk)
    sam.click(f"#f{a.pk} button[value=reject]")
    sam.wait_for_selector(".flash.error, [data-code]")
    a.refresh_from_db()
    assert a.status == "accepted" and a.reviewer == reviewer  # not silently overwritten
    assert ReviewDecision.objects.filter(field_value=a).count() == 1


def test_document_page_shows_fields_and_highlighted_evidence(
    new_page: Any, make_document: Any, reviewer: Any
) -> None:
    doc = make_document()
    page = new_page()
    login(page, "rita", PASSWORD_OF["rita"])
    page.goto(f"/documents/{doc.pk}/")
    assert page.inner_text("[data-testid=doc-status]") in ("Needs review", "Auto-accepted")
    marks = page.locator("mark.evidence")
    assert marks.count() >= 2
    page.screenshot(path=str(DOCS / "document.png"), full_page=True)


def test_a_script_in_a_value_is_inert(new_page: Any, make_document: Any, reviewer: Any) -> None:
    doc = make_document(
        '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>\n'
        "EVIL SHOP SDN BHD\nDate: 01/02/2024\nTOTAL RM 5.00\n"
    )
    page = new_page()
    login(page, "rita", PASSWORD_OF["rita"])
    page.goto(f"/documents/{doc.pk}/")
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
    assert "<script>window.__pwned=1</script>" in page.inner_text(".doctext")


def test_queue_works_at_tablet_width(new_page: Any, make_document: Any, reviewer: Any) -> None:
    make_document()
    page = new_page(width=768, height=1024)
    login(page, "rita", PASSWORD_OF["rita"])
    item = current_item(page)
    box = page.locator("#btn-accept").bounding_box()
    assert box is not None and box["x"] + box["width"] <= 768
    page.click("#btn-accept")
    wait_for_new_item(page, item.pk)
    item.refresh_from_db()
    assert item.status == "accepted"


def test_bulk_accept_asks_for_confirmation(new_page: Any, make_document: Any, reviewer: Any) -> None:
    doc = make_document()
    open_ids = list(
        FieldValue.objects.filter(document=doc, status="needs_review").values_list("pk", flat=True)
    )
    page = new_page()
    login(page, "rita", PASSWORD_OF["rita"])
    page.goto(f"/documents/{doc.pk}/")
    for pk in open_ids:
        page.check(f"#f{pk} input[type=checkbox]")
    page.once("dialog", lambda dialog: dialog.dismiss())  # first: the reviewer changes their mind
    page.click("#btn-bulk-accept")
    page.wait_for_timeout(300)
    assert FieldValue.objects.filter(pk__in=open_ids, status="needs_review").count() == len(open_ids)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#btn-bulk-accept")
    page.wait_for_selector(".flash.ok")
    assert FieldValue.objects.filter(pk__in=open_ids, status="accepted").count() == len(open_ids)
    doc.refresh_from_db()
    assert doc.status == "reviewed"


def test_several_files_are_uploaded_at_once_from_the_form(
    new_page: Any, reviewer: Any, receipt_type: Any, tmp_path: Path
) -> None:
    from reviewapp.models import Document
    from tests.conftest import RECEIPT

    paths = []
    for name in ("one", "two"):
        path = tmp_path / f"{name}.txt"
        path.write_text(RECEIPT + f"\nref {name}")
        paths.append(str(path))
    page = new_page()
    login(page, "rita", PASSWORD_OF["rita"])
    page.goto("/documents/")
    page.select_option("#id_document_type", "receipt")
    page.set_input_files("#id_file", paths)  # the input takes several files (multiple)
    page.click("button:has-text('Upload and extract')")
    page.wait_for_url("**/documents/")
    assert "2 documents queued for extraction." in page.inner_text(".messages")
    assert sorted(Document.objects.values_list("filename", flat=True)) == ["one.txt", "two.txt"]
    assert page.locator("table.docs a", has_text="one.txt").count() == 1
