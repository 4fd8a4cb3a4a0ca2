"""The classify -> extract -> verify chain against the scripted server (no database)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extraction.config import LLMConfig
from extraction.gateway import Gateway, Trace
from extraction.pipeline import Pipeline, PipelineError, PipelineOptions
from extraction.schemas import DocumentSchema, FieldSpec, FieldType, FieldVerdict
from tests.conftest import server_config
from tests.llmserver import reply, reply_json, responder

RECEIPT = DocumentSchema(
    slug="receipt",
    name="Receipt",
    fields=(
        FieldSpec(name="company", type=FieldType.TEXT, required=True, threshold=0.8),
        FieldSpec(name="date", type=FieldType.DATE, required=True, threshold=0.8),
        FieldSpec(name="total", type=FieldType.MONEY, required=True, threshold=0.8),
    ),
)
TEXT = "ACME STORES LTD\nDate: 2024-03-12\nItems ...\nTOTAL: 12.50 EUR\n"
CLASSIFY_OK = {
    "is_document": True,
    "document_type": "receipt",
    "matches_declared_type": True,
    "language": "en",
    "confidence": 0.95,
    "reasoning": "a till receipt",
}


def field(value: Any, confidence: float, evidence: str | None) -> dict[str, Any]:
    return {"value": value, "confidence": confidence, "reasoning": "seen", "evidence": evidence}


GOOD = {
    "fields": {
        "company": field("ACME STORES LTD", 0.95, "ACME STORES LTD"),
        "date": field("2024-03-12", 0.95, "2024-03-12"),
        "total": field("12.50 EUR", 0.95, "TOTAL: 12.50 EUR"),
    }
}


def verdicts(total_verdict: str = "correct", score: float = 0.95, feedback: str = "") -> dict[str, Any]:
    return {
        "fields": {
            "company": {"verdict": "correct", "score": 0.95},
            "date": {"verdict": "correct", "score": 0.95},
            "total": {"verdict": total_verdict, "score": score, "feedback": feedback},
        },
        "accuracy": score,
        "completeness": 1.0,
        "schema_fit": 1.0,
        "feedback": feedback,
    }


def run(
    llm: Any, text: str = TEXT, *, config: dict[str, Any] | None = None, **options: Any
) -> tuple[Any, Trace]:
    cfg = config or server_config(llm.base_url, classify="secondary", verify="secondary", fallbacks=[])
    trace = Trace()
    result = Pipeline(Gateway(LLMConfig.model_validate(cfg), sleep=lambda s: None)).run(
        text=text,
        schema=RECEIPT,
        candidates=[RECEIPT],
        trace=trace,
        options=PipelineOptions(prompt_label="receipt-extract v7", **options),
    )
    return result, trace


def test_a_clean_run_auto_accepts_confident_supported_fields(llm: Any) -> None:
    llm.script("secondary-model", reply_json(CLASSIFY_OK), reply_json(verdicts()))
    llm.script("primary-model", reply_json(GOOD))
    result, trace = run(llm)
    by_name = {f.name: f for f in result.fields}
    assert by_name["total"].value == "12.50 EUR" and by_name["total"].status == "auto_accepted"
    assert by_name["total"].evidence.text == "TOTAL: 12.50 EUR"
    assert TEXT[by_name["total"].evidence.start : by_name["total"].evidence.end] == "TOTAL: 12.50 EUR"
    assert by_name["total"].confidence == pytest.approx(0.95 * (0.5 + 0.5 * 0.95), abs=1e-4)
    assert [c.step for c in trace.calls] == ["classify", "extract", "verify"]
    assert all(c.parse_status == "ok" for c in trace.calls)
    system = llm.requests_for("primary-model")[0].messages[0]["content"]
    assert system.startswith("# receipt-extract v7")  # the version label is in the prompt


def test_repaired_output_is_used_and_marked(llm: Any) -> None:
    fenced = "Sure! Here it is:\n```json\n" + json.dumps(GOOD)[:-1] + ",}\n```\nHope that helps."
    llm.script("secondary-model", reply_json(CLASSIFY_OK), reply_json(verdicts()))
    llm.script("primary-model", reply(fenced))
    result, trace = run(llm)
    extract_call = next(c for c in trace.calls if c.step == "extract")
    assert extract_call.parse_status == "repaired" and extract_call.raw_response == fenced
    assert {f.name: f.value for f in result.fields}["total"] == "12.50 EUR"


def test_hallucinated_fields_are_dropped_and_missing_required_go_to_review(llm: Any) -> None:
    answer = {
        "fields": {
            "company": GOOD["fields"]["company"],
            "total": GOOD["fields"]["total"],
            "cashier": field("AMY", 0.9, "AMY"),
        }
    }
    llm.script("secondary-model", reply_json(CLASSIFY_OK), reply_json(verdicts()))
    llm.script("primary-model", reply_json(answer))
    result, _ = run(llm)
    assert result.dropped_fields == ["cashier"]
    date = next(f for f in result.fields if f.name == "date")
    assert date.value is None and date.confidence == 0.0 and date.status == "needs_review"


def test_evidence_that_is_not_in_the_text_caps_confidence(llm: Any) -> None:
    answer = json.loads(json.dumps(GOOD))
    answer["fields"]["total"] = field("99.00 EUR", 0.99, "TOTAL: 99.00 EUR")
    llm.script("secondary-model", reply_json(CLASSIFY_OK), reply_json(verdicts()))
    llm.script("primary-model", reply_json(answer))
    result, _ = run(llm)
    total = next(f for f in result.fields if f.name == "total")
    assert not total.supported and total.confidence <= 0.5 and total.status == "needs_review"


def test_a_verdict_written_in_capitals_is_read() -> None:
    assert FieldVerdict.model_validate({"verdict": " Correct ", "score": 0.9}).verdict == "correct"


def test_an_unusable_verdict_sends_its_field_to_review_and_keeps_the_others(llm: Any) -> None:
    answer = verdicts()
    answer["fields"]["total"]["verdict"] = "looks fine to me"
    llm.script("secondary-model", reply_json(CLASSIFY_OK), reply_json(answer))
    llm.script("primary-model", reply_json(GOOD))
    result, trace = run(llm)
    by_name = {f.name: f for f in result.fields}
    assert (by_name["total"].status, by_name["total"].verdict) == ("needs_review", "")
    assert by_name["total"].problem == "the verifier gave no usable verdict"
    assert [by_name[n].status for n in ("company", "date")] == ["auto_accepted", "auto_accepted"]
    verify_call = trace.calls[-1]
    assert (verify_call.step, verify_call.parse_status) == ("verify", "repaired")
    assert "verdicts_dropped:total" in verify_call.repairs


def test_an_unusable_verify_answer_keeps_the_extraction_for_review(llm: Any) -> None:
    # Before, the document failed (invalid_verification) and its extraction was lost to the reviewers.
    llm.script("secondary-model", reply_json(CLASSIFY_OK), reply("I checked it all and it looks right."))
    llm.script("primary-model", reply_json(GOOD))
    result, trace = run(llm)
    assert [(f.value, f.status) for f in result.fields] == [
        ("ACME STORES LTD", "needs_review"),
        ("2024-03-12", "needs_review"),
        ("12.50 EUR", "needs_review"),
    ]
    assert {f.problem for f in result.fields} == {"the verifier gave no usable verdict"}
    assert result.verify_score is None
    assert (trace.calls[-1].parse_status, trace.calls[-1].raw_response) == (
        "failed",
        "I checked it all and it looks right.",
    )


def test_the_chain_stops_on_an_invalid_classification(llm: Any) -> None:
    llm.script("secondary-model", reply("I think this is probably a receipt."))
    with pytest.raises(PipelineError) as err:
        run(llm)
    assert (err.value.step, err.value.code) == ("classify", "invalid_output")
    assert llm.requests_for("primary-model") == []  # extract never ran


def test_junk_beside_the_classification_does_not_stop_the_chain(llm: Any) -> None:
    junk = {**CLASSIFY_OK, "language": ["en"], "confidence": "very", "reasoning": {"why": "it is"}}
    llm.script("secondary-model", reply_json(junk), reply_json(verdicts()))
    llm.script("primary-model", reply_json(GOOD))
    result, trace = run(llm)
    assert result.classification is not None and result.classification.matches_declared_type
    assert (result.classification.language, result.classification.confidence) == ("und", 0.0)
    assert trace.calls[0].parse_status == "repaired"
    assert "fields_dropped:confidence,language,reasoning" in trace.calls[0].repairs
    assert [f.status for f in result.fields] == ["auto_accepted"] * 3


def test_not_a_document_stops_the_chain(llm: Any) -> None:
    llm.script(
        "secondary-model", reply_json({**CLASSIFY_OK, "is_document": False, "reasoning": "random bytes"})
    )
    with pytest.raises(PipelineError, match="not a document"):
        run(llm)


def test_evaluate_and_retry_regenerates_with_feedback_and_keeps_the_best(llm: Any) -> None:
    wrong = json.loads(json.dumps(GOOD))
    wrong["fields"]["total"] = field("1.25 EUR", 0.9, "12.50 EUR")
    llm.script(
        "secondary-model",
        reply_json(CLASSIFY_OK),
        reply_json(verdicts("incorrect", 0.2, "total is 12.50 EUR, not 1.25")),
        reply_json(verdicts()),
    )
    llm.script("primary-model", reply_json(wrong), reply_json(GOOD))
    result, trace = run(llm, verify_threshold=0.8, max_attempts=3)
    assert result.attempts == 2 and result.best_attempt == 2
    assert {f.name: f.value for f in result.fields}["total"] == "12.50 EUR"
    second_prompt = llm.requests_for("primary-model")[1].messages[0]["content"]
    assert "total is 12.50 EUR, not 1.25" in second_prompt
    assert [(c.step, c.attempt) for c in trace.calls] == [
        ("classify", 1),
        ("extract", 1),
        ("verify", 1),
        ("extract", 2),
        ("verify", 2),
    ]


def test_unparseable_extraction_is_kept_raw_and_retried_visibly(llm: Any) -> None:
    llm.script("secondary-model", reply_json(CLASSIFY_OK), reply_json(verdicts()))
    llm.script("primary-model", reply("no idea, sorry"), reply_json(GOOD))
    result, trace = run(llm)
    failed = [c for c in trace.calls if c.parse_status == "failed"]
    assert len(failed) == 1 and failed[0].raw_response == "no idea, sorry"
    assert result.attempts == 2


def test_a_long_document_is_chunked_and_merged_by_confidence(llm: Any) -> None:
    filler = "".join(f"line {i} of the itemised list with words\n" for i in range(400))
    text = "ACME STORES LTD\nDate: 2024-03-12\n" + filler + "TOTAL: 12.50 EUR\n"

    def extract(body: dict[str, Any]) -> dict[str, Any]:
        chunk = body["messages"][1]["content"]
        fields = {}
        if "ACME STORES LTD" in chunk:
            fields["company"] = field("ACME STORES LTD", 0.9, "ACME STORES LTD")
            fields["date"] = field("2024-03-12", 0.9, "2024-03-12")
        if "TOTAL: 12.50" in chunk:
            fields["total"] = field("12.50 EUR", 0.92, "TOTAL: 12.50 EUR")
        return {"fields": fields}

    cfg = server_config(llm.base_url, classify="secondary", verify="secondary", fallbacks=[])
    cfg["model_list"][0]["model_info"].update(max_input_tokens=2500, max_output_tokens=500)
    llm.script("secondary-model", reply_json(CLASSIFY_OK), reply_json(verdicts()))
    llm.default = responder(extract)
    result, trace = run(llm, text, config=cfg)
    extract_calls = [c for c in trace.calls if c.step == "extract"]
    assert len(extract_calls) >= 3 and [c.chunk for c in extract_calls] == list(range(len(extract_calls)))
    by_name = {f.name: f for f in result.fields}
    assert by_name["total"].value == "12.50 EUR"
    assert text[by_name["total"].evidence.start : by_name["total"].evidence.end] == "TOTAL: 12.50 EUR"
    assert by_name["total"].evidence.chunk == len(extract_calls) - 1
    assert by_name["company"].evidence.chunk == 0
    assert result.chunks == len(extract_calls)
