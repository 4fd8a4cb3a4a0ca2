"""Parsing of real-world (malformed) model replies; fixtures live in tests/fixtures/llm/."""

from __future__ import annotations

from pathlib import Path

import pytest

from extraction.parsing import ParseError, ParseOutcome, parse_extraction, parse_json_object, parse_model
from extraction.schemas import (
    ClassifyResult,
    DocumentSchema,
    ExtractedField,
    FieldSpec,
    FieldType,
    VerifyResult,
    extraction_model,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llm"
ALL_FIELDS = ["vendor", "invoice_number", "invoice_date", "total", "paid"]

SCHEMA = DocumentSchema(
    slug="invoice",
    name="Invoice",
    fields=(
        FieldSpec(name="vendor", required=True),
        FieldSpec(name="invoice_number"),
        FieldSpec(name="invoice_date", type=FieldType.DATE),
        FieldSpec(name="total", type=FieldType.MONEY, required=True),
        FieldSpec(name="paid", type=FieldType.BOOLEAN),
    ),
)


def load(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text(encoding="utf-8")


def fields_of(outcome: ParseOutcome) -> dict[str, dict]:
    assert outcome.data is not None, outcome.error
    return outcome.data["fields"]


# --- parse_json_object -----------------------------------------------------------------------------


def test_plain_json_needs_no_repair() -> None:
    obj, repairs = parse_json_object('{"a": 1, "b": [true, null]}')
    assert obj == {"a": 1, "b": [True, None]}
    assert repairs == []


@pytest.mark.parametrize(
    ("name", "expected_notes"),
    [
        ("fenced", {"code_fence"}),
        ("prose_around", {"prose_stripped"}),
        ("trailing_commas", {"json_repair"}),
        ("single_quotes", {"json_repair", "single_quotes"}),
        ("comments", {"json_repair", "comments"}),
        ("python_literals", {"json_repair", "python_literals"}),
        ("truncated", {"json_repair", "truncated"}),
        ("truncated_fenced", {"code_fence", "json_repair", "truncated"}),
        ("think_block", {"think_block_stripped"}),
        ("array_wrapped", {"array_unwrapped"}),
    ],
)
def test_malformed_replies_are_recovered_with_notes(name: str, expected_notes: set[str]) -> None:
    obj, repairs = parse_json_object(load(name))
    assert isinstance(obj, dict)
    assert "fields" in obj
    assert expected_notes <= set(repairs), repairs


@pytest.mark.parametrize("name", ["empty", "whitespace_only", "not_json_at_all"])
def test_replies_without_an_object_raise(name: str) -> None:
    raw = load(name)
    with pytest.raises(ParseError) as info:
        parse_json_object(raw)
    assert info.value.raw == raw


def test_prose_braces_do_not_win_over_the_answer() -> None:
    obj, _ = parse_json_object(load("prose_around"))
    assert obj["fields"]["vendor"]["reasoning"] == "Header says {ACME}"


def test_python_literals_become_json_values() -> None:
    obj, _ = parse_json_object(load("python_literals"))
    assert obj["fields"]["paid"]["value"] is True
    assert obj["fields"]["invoice_number"]["value"] is None
    # A literal inside a string is text, not a boolean.
    assert obj["fields"]["vendor"]["reasoning"] == "True name on header"


def test_comments_are_dropped_but_urls_in_strings_survive() -> None:
    obj, _ = parse_json_object(load("comments"))
    assert obj["fields"]["vendor"]["reasoning"] == "see http://acme.example/about"
    assert obj["fields"]["invoice_date"]["value"] == "2024-03-01"


def test_single_quoted_strings_keep_apostrophes() -> None:
    obj, _ = parse_json_object(load("single_quotes"))
    assert obj["fields"]["vendor"]["reasoning"] == "It's on the letterhead"


def test_top_level_array_of_one_object_is_unwrapped() -> None:
    obj, repairs = parse_json_object('[{"a": 1}]')
    assert obj == {"a": 1}
    assert repairs == ["array_unwrapped"]


def test_array_of_several_objects_is_refused() -> None:
    with pytest.raises(ParseError, match="array of 2"):
        parse_json_object('[{"a": 1}, {"a": 2}]')


def test_double_encoded_json_is_decoded() -> None:
    obj, repairs = parse_json_object('"{\\"a\\": 1}"')
    assert obj == {"a": 1}
    assert repairs[0] == "double_encoded"


def test_scalar_json_is_refused() -> None:
    with pytest.raises(ParseError):
        parse_json_object("42")


def test_nan_reads_as_null() -> None:
    obj, _ = parse_json_object('{"confidence": NaN}')
    assert obj == {"confidence": None}


def test_unquoted_keys_are_repaired() -> None:
    obj, repairs = parse_json_object('{vendor: "ACME", total: 12.5}')
    assert obj == {"vendor": "ACME", "total": 12.5}
    assert "json_repair" in repairs


def test_truncation_inside_a_string_is_detected() -> None:
    obj, repairs = parse_json_object('{"a": "complete", "b": "cut in the mid')
    assert obj["a"] == "complete"
    assert "truncated" in repairs


# --- parse_extraction --------------------------------------------------------------------------------


def test_fenced_reply_parses_completely() -> None:
    outcome = parse_extraction(load("fenced"), SCHEMA)
    assert outcome.error is None
    assert outcome.repaired
    assert outcome.repairs == ["code_fence"]
    fields = fields_of(outcome)
    assert list(fields) == ALL_FIELDS
    # Raw values are kept: normalising "1,234.50 EUR" is another module's job.
    assert fields["total"]["value"] == "1,234.50 EUR"
    assert (
        fields["paid"]
        == ExtractedField(
            value=False, confidence=0.7, reasoning="No payment stamp", evidence=None
        ).model_dump()
    )
    assert outcome.missing_fields == [] and outcome.dropped_fields == [] and outcome.invalid_fields == {}


def test_outcome_data_validates_against_the_schema_model() -> None:
    for name in ["fenced", "wrong_types", "bare_mapping", "truncated", "missing_required", "extra_fields"]:
        outcome = parse_extraction(load(name), SCHEMA)
        extraction_model(SCHEMA).model_validate(outcome.data)


def test_plain_wellformed_reply_is_not_marked_repaired() -> None:
    raw = '{"fields": {"vendor": {"value": "ACME", "confidence": 0.9, "reasoning": "", "evidence": "ACME"}}}'
    outcome = parse_extraction(raw, SCHEMA)
    assert not outcome.repaired
    assert outcome.missing_fields == ["invoice_number", "invoice_date", "total", "paid"]
    assert outcome.repairs == ["missing_fields:invoice_number,invoice_date,total,paid"]


@pytest.mark.parametrize(
    "name", ["prose_around", "trailing_commas", "single_quotes", "comments", "python_literals"]
)
def test_repaired_replies_yield_every_field(name: str) -> None:
    outcome = parse_extraction(load(name), SCHEMA)
    assert outcome.error is None
    assert outcome.repaired
    assert list(fields_of(outcome)) == ALL_FIELDS
    assert fields_of(outcome)["vendor"]["value"] == "ACME GmbH"


def test_extra_fields_are_dropped_and_recorded() -> None:
    outcome = parse_extraction(load("extra_fields"), SCHEMA)
    assert outcome.dropped_fields == ["iban", "tax_rate"]
    assert "extra_fields_dropped:iban,tax_rate" in outcome.repairs
    assert "top_level_keys_ignored:notes" in outcome.repairs
    assert list(fields_of(outcome)) == ALL_FIELDS


def test_missing_fields_are_recorded_not_fatal() -> None:
    outcome = parse_extraction(load("missing_required"), SCHEMA)
    assert outcome.error is None
    assert outcome.missing_fields == ["vendor", "total", "paid"]
    assert "missing_fields:vendor,total,paid" in outcome.repairs
    assert list(fields_of(outcome)) == ["invoice_number", "invoice_date"]
    assert not outcome.repaired  # nothing was repaired; fields were simply absent


def test_wrong_types_are_coerced_field_by_field() -> None:
    outcome = parse_extraction(load("wrong_types"), SCHEMA)
    fields = fields_of(outcome)
    assert outcome.invalid_fields == {}
    assert fields["vendor"]["confidence"] == 0.9  # "0.9" as a string
    assert fields["vendor"]["reasoning"] == "42"
    assert fields["vendor"]["evidence"] == "ACME GmbH"  # {"text": ...} evidence
    assert fields["invoice_number"]["confidence"] == pytest.approx(0.87)  # 87 meant percent
    assert fields["invoice_number"]["value"] == 2024001
    assert fields["invoice_date"]["confidence"] == 0.9  # "high"
    assert fields["invoice_date"]["start"] is None  # "page two" dropped, the field kept
    assert fields["total"]["value"] == "1,234.50"
    assert fields["total"]["confidence"] == pytest.approx(0.75)  # "75%"
    assert fields["paid"] == {
        "value": "yes",
        "confidence": 0.0,
        "reasoning": "",
        "evidence": None,
        "start": None,
    }
    assert set(outcome.repairs) >= {
        "confidence_string:vendor",
        "confidence_percent:invoice_number,total",
        "confidence_words:invoice_date",
        "invalid_keys_dropped:invoice_date.start",
        "bare_values:paid",
    }


def test_bare_mapping_with_bare_values_and_renamed_keys() -> None:
    outcome = parse_extraction(load("bare_mapping"), SCHEMA)
    fields = fields_of(outcome)
    assert list(fields) == ALL_FIELDS
    assert fields["total"] == {
        "value": "12.50",
        "confidence": 0.0,
        "reasoning": "",
        "evidence": None,
        "start": None,
    }
    assert fields["invoice_number"]["value"] == "INV-2024-001"
    assert "bare_mapping" in outcome.repairs
    assert "fields_renamed:Invoice Number->invoice_number" in outcome.repairs
    assert "bare_values:invoice_date,total,paid" in outcome.repairs


def test_truncated_reply_keeps_complete_fields_and_distrusts_the_last() -> None:
    outcome = parse_extraction(load("truncated"), SCHEMA)
    fields = fields_of(outcome)
    assert "truncated" in outcome.repairs
    assert fields["vendor"]["confidence"] == 0.95
    # The date was cut mid-value ("2024-03-0") although its confidence came first: it must go to review.
    assert fields["invoice_date"]["value"] == "2024-03-0"
    assert fields["invoice_date"]["confidence"] == 0.0
    assert "truncated_field:invoice_date" in outcome.repairs
    assert outcome.missing_fields == ["total", "paid"]


def test_one_invalid_field_does_not_sink_the_others() -> None:
    raw = """{"fields": {
        "vendor": {"value": "ACME", "confidence": 0.9},
        "total": {"value": "12.50", "confidence": "very sure", "start": [1, 2]}
    }}"""
    outcome = parse_extraction(raw, SCHEMA)
    fields = fields_of(outcome)
    assert fields["vendor"]["value"] == "ACME"
    # An unreadable confidence becomes 0 (review), an unusable start is dropped.
    assert fields["total"]["confidence"] == 0.0
    assert "confidence_unparsed:total" in outcome.repairs
    assert "invalid_keys_dropped:total.start" in outcome.repairs


def test_invalid_field_is_set_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    # ExtractedField is lenient today; a stricter version (text-only values) exercises the safety net.
    class StrictField(ExtractedField):
        value: str | None = None

    monkeypatch.setattr("extraction.parsing.ExtractedField", StrictField)
    raw = '{"fields": {"vendor": {"value": "ACME", "confidence": 0.9}, "total": {"value": [1, 2], "confidence": 0.9}}}'
    outcome = parse_extraction(raw, SCHEMA)
    assert list(fields_of(outcome)) == ["vendor"]
    assert set(outcome.invalid_fields) == {"total"}
    assert outcome.invalid_fields["total"].startswith("value:")
    assert "invalid_fields:total" in outcome.repairs
    assert "total" not in outcome.missing_fields


def test_confidence_booleans_are_not_full_confidence() -> None:
    raw = '{"fields": {"vendor": {"value": "ACME", "confidence": true}}}'
    outcome = parse_extraction(raw, SCHEMA)
    assert fields_of(outcome)["vendor"]["confidence"] == 0.0
    assert "confidence_unparsed:vendor" in outcome.repairs


def test_fields_as_a_list_are_accepted() -> None:
    raw = '{"fields": [{"name": "vendor", "value": "ACME", "confidence": 0.8}, {"name": "total", "value": "3"}]}'
    outcome = parse_extraction(raw, SCHEMA)
    assert fields_of(outcome)["vendor"]["value"] == "ACME"
    assert fields_of(outcome)["total"]["value"] == "3"
    assert "fields_list" in outcome.repairs


def test_envelope_is_unwrapped() -> None:
    raw = '{"extraction": {"fields": {"vendor": {"value": "ACME", "confidence": 0.8}}}}'
    outcome = parse_extraction(raw, SCHEMA)
    assert fields_of(outcome)["vendor"]["value"] == "ACME"
    assert "wrapper_unwrapped:extraction" in outcome.repairs


def test_field_named_fields_is_not_mistaken_for_the_wrapper() -> None:
    schema = DocumentSchema(
        slug="form", name="Form", fields=(FieldSpec(name="fields"), FieldSpec(name="title"))
    )
    outcome = parse_extraction('{"fields": {"value": "3 fields", "confidence": 0.9}, "title": "T"}', schema)
    assert fields_of(outcome)["fields"]["value"] == "3 fields"
    assert fields_of(outcome)["title"]["value"] == "T"


@pytest.mark.parametrize("name", ["empty", "not_json_at_all"])
def test_unparseable_reply_sets_error(name: str) -> None:
    outcome = parse_extraction(load(name), SCHEMA)
    assert outcome.data is None
    assert outcome.error
    assert outcome.missing_fields == ALL_FIELDS


def test_reply_without_any_schema_field_sets_error() -> None:
    outcome = parse_extraction('{"summary": "an invoice"}', SCHEMA)
    assert outcome.data is None
    assert outcome.error == "reply holds none of the schema's fields"
    assert outcome.dropped_fields == ["summary"]


# --- parse_model -------------------------------------------------------------------------------------


def test_parse_model_classify_with_fence_and_word_confidence() -> None:
    result, repairs = parse_model(load("classify_fenced"), ClassifyResult)
    assert isinstance(result, ClassifyResult)
    assert result.document_type == "invoice"
    assert result.confidence == 0.9
    assert {"code_fence", "json_repair", "scores_coerced:confidence"} <= set(repairs)


def test_parse_model_verify_with_envelope_and_percentages() -> None:
    result, repairs = parse_model(load("verify_percent"), VerifyResult)
    assert result.accuracy == 0.8
    assert result.schema_fit == 1.0
    assert result.fields["vendor"].score == 0.95
    assert result.fields["total"].verdict == "incorrect"
    assert "wrapper_unwrapped:result" in repairs
    assert "scores_coerced:fields.vendor.score,accuracy,schema_fit" in repairs


def test_parse_model_raises_with_pydantic_message() -> None:
    with pytest.raises(ParseError) as info:
        parse_model(load("verify_invalid"), VerifyResult)
    message = str(info.value)
    assert "VerifyResult" in message
    assert "fields.vendor.verdict" in message
    assert "schema_fit" in message


def test_parse_model_plain_valid_reply() -> None:
    raw = '{"is_document": true, "matches_declared_type": false, "confidence": 0.4}'
    result, repairs = parse_model(raw, ClassifyResult)
    assert result.confidence == 0.4
    assert repairs == []


def test_parse_model_does_not_reinterpret_valid_numbers() -> None:
    # 0.5 is valid and must stay 0.5; only the out-of-range 50 is read as a percentage.
    raw = '{"is_document": true, "matches_declared_type": true, "confidence": 50}'
    result, _ = parse_model(raw, ClassifyResult)
    assert result.confidence == 0.5


def test_parse_model_propagates_parse_errors() -> None:
    with pytest.raises(ParseError):
        parse_model("", ClassifyResult)


@pytest.mark.parametrize(
    "raw",
    [
        '{"vendor": "Ac\\ud800me", "note": "nul \\u0000 here", "k\\udfffey": ["\\ud800"]}',  # as escapes
        '{"vendor": "Ac\ud800me", "note": "nul \x00 here", "k\udfffey": ["\ud800"]}',  # raw in the text
        '```json\n{"vendor": "Ac\\ud800me", "note": "nul \\u0000 here", "k\\udfffey": ["\\ud800",],}\n```',  # repaired
    ],
)
def test_nul_and_lone_surrogates_in_a_reply_come_back_as_replacement_characters(raw: str) -> None:
    # PostgreSQL refuses both in text and JSON: left in, they would fail the run's results statement.
    obj, _ = parse_json_object(raw)
    assert obj == {"vendor": "Ac\ufffdme", "note": "nul \ufffd here", "k\ufffdey": ["\ufffd"]}


def test_a_surrogate_pair_escape_is_one_character_and_kept() -> None:
    obj, repairs = parse_json_object('{"vendor": "caf\\u00e9 \\ud83d\\ude00"}')
    assert obj == {"vendor": "café 😀"} and repairs == []


@pytest.mark.parametrize(
    "raw",
    [
        '{"total": 1e400, "items": [-1e400, 2.5], "nested": {"n": 1' + "0" * 400 + ".0}}",  # strict JSON
        "{'total': 1e400, 'items': [-1e400, 2.5], 'nested': {'n': 1" + "0" * 400 + ".0},}",  # json_repair
    ],
)
def test_numbers_beyond_a_float_read_as_null_like_nan(raw: str) -> None:
    obj, _ = parse_json_object(raw)
    assert obj == {"total": None, "items": [None, 2.5], "nested": {"n": None}}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{" * 200_000, "nested 200000 deep"),  # json_repair took 18 s on this, blocking the worker
        ('{"a": "' + "x, " * 70_000, "nested 1 deep in 210006 characters"),
    ],
)
def test_a_reply_too_deep_or_too_large_to_repair_is_refused_without_trying(
    raw: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def repair_json(*args: object, **kwargs: object) -> object:
        raise AssertionError("json_repair must not be run on this")

    monkeypatch.setattr("extraction.parsing.json_repair.repair_json", repair_json)
    with pytest.raises(ParseError, match=f"not repaired: {why}"):
        parse_json_object(raw)


def test_a_deep_but_valid_reply_is_still_read() -> None:
    obj, repairs = parse_json_object('{"a":' * 100 + "1" + "}" * 100)
    assert repairs == [] and list(obj) == ["a"]


@pytest.mark.parametrize("confidence", ["Infinity", "1e400", "NaN", float("inf")])
def test_a_confidence_that_is_not_a_finite_number_is_zero_not_certainty(confidence: object) -> None:
    assert ExtractedField.model_validate({"value": "x", "confidence": confidence}).confidence == 0.0
