"""The offline model: extraction from the samples, evidence, confidence behaviour, classify and verify."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from extraction import heuristic
from extraction.demo_types import INVOICE, RECEIPT, SCHEMAS
from extraction.normalize import normalize, values_equal
from extraction.schemas import (
    ClassifyResult,
    DocumentSchema,
    ExtractedField,
    FieldSpec,
    FieldType,
    VerifyResult,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

TRUTH: dict[str, Any] = json.loads((SAMPLES / "truth.json").read_text(encoding="utf-8"))
TEXT_SAMPLES = sorted(name for name in TRUTH if name.endswith((".txt", ".eml")))


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def check_evidence(text: str, result: dict[str, dict]) -> None:
    for name, answer in result.items():
        if answer["evidence"] is None:
            assert answer["start"] is None, name
        else:
            start = answer["start"]
            assert text[start : start + len(answer["evidence"])] == answer["evidence"], name


# --------------------------------------------------------------------------------------------------
# extract


def test_samples_cover_both_types_and_the_formats() -> None:
    assert len(TRUTH) >= 12
    assert {info["type"] for info in TRUTH.values()} == {"receipt", "invoice"}
    assert {Path(name).suffix for name in TRUTH} == {".txt", ".html", ".eml"}
    for name, info in TRUTH.items():
        assert (SAMPLES / name).is_file(), name
        schema = SCHEMAS[info["type"]]
        assert set(info["fields"]) == {f.name for f in schema.fields}, name
        for field, value in info["fields"].items():
            assert normalize(schema.field(field), value) == value, (name, field)  # truth is canonical


@pytest.mark.parametrize("name", TEXT_SAMPLES)
def test_extracts_the_true_values_from_samples(name: str) -> None:
    info = TRUTH[name]
    schema = SCHEMAS[info["type"]]
    text = sample(name)
    result = heuristic.extract(text, schema.fields)
    assert set(result) == {f.name for f in schema.fields}
    wrong = {
        f.name: (result[f.name]["value"], info["fields"][f.name])
        for f in schema.fields
        if not values_equal(f, result[f.name]["value"], info["fields"][f.name])
    }
    assert not wrong
    check_evidence(text, result)


@pytest.mark.parametrize("name", TEXT_SAMPLES)
def test_answers_are_canonical_json_and_valid_model_answers(name: str) -> None:
    schema = SCHEMAS[TRUTH[name]["type"]]
    result = heuristic.extract(sample(name), schema.fields)
    assert json.loads(json.dumps(result)) == result
    for spec in schema.fields:
        answer = result[spec.name]
        ExtractedField(**answer)  # the shape the pipeline parses
        assert 0.0 <= answer["confidence"] <= 1.0
        assert answer["reasoning"]
        assert normalize(spec, answer["value"]) == answer["value"]


def test_specific_values_and_evidence() -> None:
    text = sample("invoice_de_software.txt")
    result = heuristic.extract(text, INVOICE.fields)
    assert result["invoice_number"]["value"] == "RE-2024-0089"
    assert result["invoice_date"]["value"] == "2024-03-18"
    assert result["total"]["value"] == "3558.10 EUR"
    assert result["total"]["evidence"].startswith("Rechnungsbetrag")
    assert result["vendor"]["value"] == "Kessler & Vogt Softwareentwicklung GmbH"
    assert result["paid"]["value"] is False


def test_table_header_with_values_in_the_next_row() -> None:
    text = sample("invoice_uk_design.txt")
    result = heuristic.extract(text, INVOICE.fields)
    assert result["invoice_number"]["value"] == "BDS-1187"
    assert result["due_date"]["value"] == "2024-03-06"
    assert result["due_date"]["evidence"] == "06/03/2024"
    assert "column" in result["due_date"]["reasoning"]
    assert result["paid"]["value"] is True


def test_total_ignores_subtotal_and_prefers_the_last_largest_total() -> None:
    text = "Subtotal 90.00\nTotal 95.00\nCash 100.00\nChange 5.00\nTotal rounded 95.05\n"
    result = heuristic.extract(text, [FieldSpec(name="total", type=FieldType.MONEY)])
    assert result["total"]["value"] == "95.05"


def test_ambiguous_dates_follow_the_document_order() -> None:
    date = [FieldSpec(name="invoice_date", type=FieldType.DATE)]
    # a US address makes 03/04 month-first; an unambiguous 25/04 elsewhere makes it day-first
    us = "Acme Inc\n1 Main St\nAustin, TX 78701\nInvoice date: 03/04/2024\n"
    eu = "Acme GmbH\nInvoice date: 03/04/2024\nDelivery date: 25/04/2024\n"
    assert heuristic.extract(us, date)["invoice_date"]["value"] == "2024-03-04"
    assert heuristic.extract(eu, date)["invoice_date"]["value"] == "2024-04-03"


def test_confidence_drops_without_a_label() -> None:
    total = [FieldSpec(name="total", type=FieldType.MONEY, required=True)]
    labelled = heuristic.extract("Coffee 3.50\nCake 4.00\nTotal: 7.50\n", total)["total"]
    unlabelled = heuristic.extract("Coffee 3.50\nCake 4.00\n7.50\n", total)["total"]
    assert labelled["value"] == unlabelled["value"] == "7.50"
    assert labelled["confidence"] > 0.9
    assert unlabelled["confidence"] < labelled["confidence"] - 0.3


def test_confidence_drops_when_candidates_conflict() -> None:
    total = [FieldSpec(name="total", type=FieldType.MONEY)]
    clean = heuristic.extract("Item 12.50\nTotal: 12.50\n", total)["total"]
    conflict = heuristic.extract("Item 12.50\nTotal: 12.50\nAmount due: 19.99\n", total)["total"]
    assert conflict["confidence"] < clean["confidence"] - 0.1
    assert "other candidate" in conflict["reasoning"]


def test_agreeing_evidence_raises_confidence() -> None:
    number = [FieldSpec(name="invoice_number")]
    once = heuristic.extract("Invoice no: INV-2024-7\n", number)["invoice_number"]
    twice = heuristic.extract("Subject: Invoice INV-2024-7\nInvoice no: INV-2024-7\n", number)[
        "invoice_number"
    ]
    assert once["value"] == twice["value"] == "INV-2024-7"
    assert twice["confidence"] > once["confidence"]


def test_bill_to_company_is_not_the_vendor() -> None:
    text = "INVOICE\nNorthwind Ltd\n1 High St\n\nBill To:\nContoso Ltd\n2 Low Rd\n\nTotal: 10.00\n"
    result = heuristic.extract(text, [FieldSpec(name="vendor")])
    assert result["vendor"]["value"] == "Northwind Ltd"


def test_missing_fields_are_none_with_low_confidence() -> None:
    fields = [
        FieldSpec(name="invoice_number", required=True),
        FieldSpec(name="due_date", type=FieldType.DATE),
        FieldSpec(name="iban"),
    ]
    result = heuristic.extract("Thanks for your order!\nSee you soon.\n", fields)
    for name in ("invoice_number", "due_date", "iban"):
        assert result[name]["value"] is None
        assert result[name]["evidence"] is None and result[name]["start"] is None
        assert result[name]["confidence"] < 0.5
    assert result["invoice_number"]["confidence"] < result["due_date"]["confidence"]  # required vs optional


def test_generic_fields_use_their_own_name_as_label() -> None:
    fields = [
        FieldSpec(name="po_number"),
        FieldSpec(name="quantity", type=FieldType.NUMBER),
        FieldSpec(name="express", type=FieldType.BOOLEAN),
        FieldSpec(name="email"),
        FieldSpec(name="priority", type=FieldType.ENUM, choices=("Low", "High")),
    ]
    text = "Order form\nPO Number: PO-7781\nQuantity: 1,200\nExpress: yes\nPriority: high\nContact: ops@example.com\n"
    result = heuristic.extract(text, fields)
    assert result["po_number"]["value"] == "PO-7781"
    assert result["quantity"]["value"] == 1200
    assert result["express"]["value"] is True
    assert result["priority"]["value"] == "High"
    assert result["email"]["value"] == "ops@example.com"
    check_evidence(text, result)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x00\x01\x02" * 1000,
        "1" * 300_000,
        "(((((" * 60_000,
        "Total: 1.00\n" * 30_000,
        "12/12/12 " * 30_000,
        "".join(chr(i % 700 + 32) for i in range(250_000)),
        "Invoice\r\nTotal:\r\n12.50\r\n",
    ],
)
def test_hostile_input_is_bounded_and_keeps_the_evidence_contract(text: str) -> None:
    started = time.perf_counter()
    result = heuristic.extract(text, INVOICE.fields)
    assert (
        time.perf_counter() - started < 30.0
    )  # a hang guard (catastrophic backtracking), not a speed target
    check_evidence(text, result)
    json.dumps(result)


# --------------------------------------------------------------------------------------------------
# classify


@pytest.mark.parametrize("text", ["", "   \n\t ", "\x00\x01\x02\x03" * 200, "12345 67890 11 22 33 44"])
def test_classify_rejects_non_documents(text: str) -> None:
    result = heuristic.classify(text, [RECEIPT, INVOICE], "invoice")
    ClassifyResult(**result)
    assert result["is_document"] is False
    assert result["matches_declared_type"] is False


@pytest.mark.parametrize("name", TEXT_SAMPLES)
def test_classify_picks_the_sample_type(name: str) -> None:
    expected = TRUTH[name]["type"]
    # The offline provider only passes slug, name and description of each candidate.
    bare = [
        DocumentSchema(slug=s.slug, name=s.name, description=s.description, fields=())
        for s in (RECEIPT, INVOICE)
    ]
    result = heuristic.classify(sample(name), bare, "receipt")
    ClassifyResult(**result)
    assert result["is_document"] is True
    assert result["document_type"] == expected
    assert result["matches_declared_type"] is (expected == "receipt")
    assert result["confidence"] > 0.5


@pytest.mark.parametrize(
    ("name", "language"),
    [
        ("invoice_de_software.txt", "de"),
        ("receipt_de_supermarkt.txt", "de"),
        ("receipt_fr_cafe.txt", "fr"),
        ("invoice_us_consulting.txt", "en"),
        ("receipt_uk_bookshop.txt", "en"),
    ],
)
def test_classify_detects_the_language(name: str, language: str) -> None:
    assert heuristic.classify(sample(name), [RECEIPT, INVOICE], "invoice")["language"] == language


def test_classify_language_unknown_and_other_languages() -> None:
    candidates = [RECEIPT, INVOICE]
    assert heuristic.classify("zxqv plorb wumbo frazzle", candidates, "receipt")["language"] == "und"
    es = "Factura número 12. Gracias por su compra, el total a pagar es de 10 euros con la fecha de hoy."
    assert heuristic.classify(es, candidates, "receipt")["language"] == "es"
    nl = "Factuur voor uw bestelling. Het totaal bedrag is te betalen binnen 14 dagen, met dank voor de opdracht."
    assert heuristic.classify(nl, candidates, "receipt")["language"] == "nl"


def test_classify_without_keywords_keeps_the_declared_type_with_low_confidence() -> None:
    result = heuristic.classify("Lorem ipsum dolor sit amet consectetur", [RECEIPT, INVOICE], "invoice")
    assert result["is_document"] is True
    assert result["document_type"] == "invoice"
    assert result["confidence"] <= 0.3


# --------------------------------------------------------------------------------------------------
# verify


def test_verify_accepts_the_extractors_own_answer() -> None:
    text = sample("receipt_my_hardware.txt")
    result = heuristic.verify(text, RECEIPT.fields, heuristic.extract(text, RECEIPT.fields))
    VerifyResult(**result)
    assert {v["verdict"] for v in result["fields"].values()} == {"correct"}
    assert result["accuracy"] > 0.9 and result["completeness"] == 1.0 and result["schema_fit"] == 1.0


def test_verify_flags_a_wrong_value_unsupported_evidence_and_a_missing_field() -> None:
    text = sample("receipt_my_hardware.txt")
    answer = heuristic.extract(text, RECEIPT.fields)
    answer["total"]["value"] = "43.68"  # the evidence line says 46.30
    answer["date"]["evidence"] = "DATE : 16/03/2018"  # not in the document
    answer["company"] = {"value": None, "confidence": 0.1, "evidence": None}
    result = heuristic.verify(text, RECEIPT.fields, answer)
    VerifyResult(**result)
    verdicts = {name: v["verdict"] for name, v in result["fields"].items()}
    assert verdicts == {
        "company": "missing",
        "date": "unsupported",
        "address": "correct",
        "total": "incorrect",
    }
    assert "46.30" in result["fields"]["total"]["feedback"]
    assert result["fields"]["total"]["score"] < 0.2
    assert result["completeness"] < 1.0
    assert result["accuracy"] < 0.5
    assert "total" in result["feedback"]


def test_verify_checks_values_without_evidence_and_invalid_values() -> None:
    text = sample("invoice_us_consulting.txt")
    answer: dict[str, Any] = {
        "invoice_number": {"value": "NA-2024-0317"},  # right, no quote
        "vendor": {"value": "Bluefin Logistics Inc."},  # the customer: in the text, but not the vendor
        "invoice_date": {"value": "31/02/2024"},  # not a date
        "total": {"value": "999.00"},  # nowhere in the document
        "bogus": {"value": 1},
    }
    result = heuristic.verify(text, INVOICE.fields, answer)
    VerifyResult(**result)
    fields = result["fields"]
    assert fields["invoice_number"]["verdict"] == "correct"
    assert fields["vendor"]["verdict"] == "correct" and fields["vendor"]["score"] < 0.9
    assert fields["invoice_date"]["verdict"] == "incorrect"
    assert fields["total"]["verdict"] in {"incorrect", "unsupported"}
    assert fields["paid"]["verdict"] in {"correct", "missing"}
    assert result["schema_fit"] < 1.0  # an invalid date and an unknown field


def test_verify_enum_and_boolean_evidence() -> None:
    text = sample("invoice_uk_design.txt")
    answer = {
        "currency": {"value": "GBP", "evidence": "£4,080.00"},
        "paid": {"value": False, "evidence": "*** PAID"},
    }
    fields = heuristic.verify(text, INVOICE.fields, answer)["fields"]
    assert fields["currency"]["verdict"] == "correct"
    assert fields["paid"]["verdict"] == "incorrect"
