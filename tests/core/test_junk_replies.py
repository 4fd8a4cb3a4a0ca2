"""Junk model replies, generated: the pipeline either finishes with storable fields or fails visibly.

Each case answers the extract and verify calls with the offline model's answers, mutated at random (seeded): values swapped for
junk (NUL, lone surrogates, huge or non-finite numbers, structures, markup), keys dropped or added, and the
reply's text itself bent (1e400 for a number, escapes). Whatever comes back must be what the results
statement can store: no exception but PipelineError, JSON without NaN or Infinity, no NUL or surrogate,
confidences in 0..1, evidence inside the text. Each of those broke a run before (see README, Reliability).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from extraction.config import LLMConfig
from extraction.gateway import Gateway, Trace
from extraction.pipeline import Pipeline, PipelineError, PipelineOptions
from extraction.providers import answer as offline_answer
from extraction.schemas import DocumentSchema, FieldSpec, FieldType
from tests.conftest import server_config
from tests.llmserver import responder

SCHEMA = DocumentSchema(
    slug="receipt",
    name="Receipt",
    fields=(
        FieldSpec(name="company", type=FieldType.TEXT, required=True),
        FieldSpec(name="date", type=FieldType.DATE, required=True),
        FieldSpec(name="total", type=FieldType.MONEY, required=True),
        FieldSpec(name="items", type=FieldType.NUMBER),
        FieldSpec(name="paid", type=FieldType.BOOLEAN),
        FieldSpec(name="currency", type=FieldType.ENUM, choices=("EUR", "USD", "MYR")),
    ),
)
TEXT = "SUPER SAVE MART SDN BHD\nDate: 12/03/2024\nItems: 3\nPAID\nTOTAL: 23.10 MYR\n"
JUNK: list[Any] = [
    None, True, False, 0, -1, -8, 1e308, -1e308, 2**70, 10**30, "", " ", "\x00", "\ud800", "x" * 5000, [], {},
    [None], {"a": None}, "NaN", "1e400", "9" * 400, "9" * 400 + ".5", 0.5, 1.5, 100, "high", "87%", [1, 2],
    {"amount": "x", "currency": 5}, "<script>alert(1)</script>", "\U0001f600" * 10, "CORRECT",
]  # fmt: skip
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def mutate(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        out = {
            k: rng.choice(JUNK) if rng.random() < 0.25 else mutate(v, rng)
            for k, v in value.items()
            if rng.random() > 0.1
        }
        if rng.random() < 0.1:
            out[rng.choice(["extra", "value", "start", "fields", "verdict", "score"])] = rng.choice(JUNK)
        return out
    if isinstance(value, list):
        return [mutate(v, rng) for v in value]
    return value if rng.random() < 0.7 else rng.choice(JUNK)


def bend(text: str, rng: random.Random) -> str:
    """Junk only the reply's text can carry: numbers beyond a float, raw control characters, a cut."""
    r = rng.random()
    if r < 0.1:
        return re.sub(r"\b0\.\d+", "1e400", text, count=1)
    if r < 0.2:
        return text.replace('": "', '": "\\u0000\\udfff', 1)
    if r < 0.25:
        return text[: rng.randrange(len(text))]
    return text


@pytest.mark.parametrize("seed", range(4))
def test_junk_replies_end_in_storable_fields_or_a_visible_failure(llm: Any, seed: int) -> None:
    rng = random.Random(seed)

    def answer(body: dict[str, Any]) -> str:
        text = offline_answer(body["messages"])
        if '"is_document"' in text:
            return text  # junk in the classification stops the chain by design (test_pipeline.py covers it)
        return bend(json.dumps(mutate(json.loads(text), rng)), rng)

    llm.default = responder(answer)
    config = server_config(llm.base_url, classify="primary", verify="primary", fallbacks=[], retries=0)
    pipeline = Pipeline(Gateway(LLMConfig.model_validate(config), sleep=lambda s: None))
    finished = 0
    for _ in range(40):
        trace = Trace()
        try:
            result = pipeline.run(
                text=TEXT,
                schema=SCHEMA,
                candidates=[SCHEMA],
                trace=trace,
                options=PipelineOptions(prompt_label="x v1"),
            )
        except PipelineError:
            pass  # a visible failure, with its calls traced
        else:
            finished += 1
            for f in result.fields:
                stored = json.dumps(  # ensure_ascii=False: a NUL must show as itself, not as its escape
                    [f.value, f.raw_value, f.reasoning, f.problem, f.verdict],
                    allow_nan=False,
                    ensure_ascii=False,
                )
                assert not UNSTORABLE.search(stored), stored[:200]
                assert 0.0 <= f.confidence <= 1.0
                assert f.evidence is None or 0 <= f.evidence.start <= f.evidence.end <= len(TEXT)
        for call in trace.calls:
            assert not UNSTORABLE.search(call.raw_response + call.error_message + "".join(call.repairs))
    assert finished >= 25  # most junk still ends in fields for review, not in a failure
