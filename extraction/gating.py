"""From a model's answer for one field to a gated field: normalised value, located evidence, confidence, status.

The gated confidence combines the extractor's confidence c with the verifier's verdict and score s:

    correct                 -> c * (0.5 + 0.5 * s)
    incorrect / unsupported -> min(c, 0.5) * s
    missing                 -> 0
    no verifier answer      -> c

and is capped at 0.5 when our own check cannot find the evidence in the text, or finds it without the value.

Why: the verifier may only lower confidence, never raise it. Auto-acceptance needs the extractor and an
independent check to agree, because a confidently wrong value that nobody reviews is the costly failure; a
missed auto-accept only costs a reviewer a keystroke. A lukewarm "correct" shrinks confidence mildly; any
doubt caps it below every sensible threshold so the field goes to a human.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from .normalize import InvalidValue, normalize, values_equal
from .schemas import Evidence, ExtractedField, FieldSpec, FieldType, FieldVerdict

AUTO_ACCEPTED = "auto_accepted"
NEEDS_REVIEW = "needs_review"
UNSUPPORTED_CAP = 0.5


@dataclass
class GatedField:
    name: str
    value: Any
    raw_value: Any
    confidence: float
    model_confidence: float
    reasoning: str
    evidence: Evidence | None
    supported: bool
    verdict: str
    problem: str
    status: str


def combine_confidence(c: float, verdict: FieldVerdict | None) -> float:
    """Return the gated confidence of an extractor confidence `c` given the verifier's verdict."""
    if verdict is None:
        return c
    if verdict.verdict == "correct":
        return c * (0.5 + 0.5 * verdict.score)
    if verdict.verdict == "missing":
        return 0.0
    return min(c, 0.5) * verdict.score


# A regex search of the whole text restarts at every occurrence of the quote's first token: 1.2 s for a
# 199-token quote that is not there, in a 1 MB document of repeated words, with the worker's event loop
# blocked. So the quote's pattern is tried only around the occurrences of one of its tokens that is rare in
# the text (every match contains each token); only when all of them are common does the whole text get searched.
_RARE = 20


def _loose_search(text: str, quote: str) -> re.Match[str] | None:
    """The first match of `quote` in `text`, tolerant of case and whitespace."""
    words = re.findall(r"\w+|[^\w\s]", quote)
    if not words or len(words) > 200:
        return None
    pattern = re.compile(r"\s*".join(re.escape(w) for w in words), re.I)
    reach = 4 * len(quote) + 200  # a match spans the quote's tokens and the text's whitespace between them
    for word in sorted(set(words), key=len, reverse=True):
        found = list(itertools.islice(re.finditer(re.escape(word), text, re.I), _RARE + 1))
        if len(found) <= _RARE:  # rare enough: search only around it (none at all: the quote is not there)
            for hit in found:
                m = pattern.search(text, max(0, hit.start() - reach), hit.end() + reach)
                if m:
                    return m
            return None
    return pattern.search(text)


def locate(text: str, quote: str | None, hint: int | None = None) -> Evidence | None:
    """Return where `quote` stands in `text` (nearest to `hint`), tolerant of case and whitespace."""
    if not quote:
        return None
    # The hint is the model's offset: a negative one would count from the end in str.startswith.
    if hint is not None and hint >= 0 and text.startswith(quote, hint):
        return Evidence(start=hint, end=hint + len(quote), text=quote)
    positions = []
    i = text.find(quote)
    while i != -1 and len(positions) < 50:
        positions.append(i)
        i = text.find(quote, i + 1)
    if positions:
        best = min(positions, key=lambda p: abs(p - hint)) if hint is not None else positions[0]
        return Evidence(start=best, end=best + len(quote), text=quote)
    m = _loose_search(text, quote)
    if m:
        return Evidence(start=m.start(), end=m.end(), text=m.group(0))
    return None


_DIGITS = re.compile(r"\d")


def evidence_supports(spec: FieldSpec, value: Any, evidence: str) -> bool:
    """Return whether the evidence quote really contains the value (by the field type's rules)."""
    if value is None:
        return True
    ev = evidence.casefold()
    if spec.type == FieldType.TEXT:
        norm = lambda s: re.sub(r"[\W_]+", "", s.casefold())  # noqa: E731
        return norm(str(value)) in norm(ev)
    if spec.type in (FieldType.NUMBER, FieldType.MONEY):
        amount = str(value).split()[0]
        want = "".join(_DIGITS.findall(amount.rstrip("0").rstrip(".") if "." in amount else amount))
        return bool(want) and want in "".join(_DIGITS.findall(ev))
    if spec.type == FieldType.DATE:
        for m in re.finditer(r"[\w]+[ ./-][\w]+[ ./,-]+\w+", evidence):
            try:
                if values_equal(spec, m.group(0), value):
                    return True
            except InvalidValue:
                continue
        return False
    # Enums and booleans are often implied rather than quoted (a € sign for EUR, a PAID stamp for true):
    # finding the evidence is all we check; the verifier judges the rest.
    return True


def gate(
    spec: FieldSpec,
    answer: ExtractedField | None,
    text: str,
    *,
    verdict: FieldVerdict | None = None,
    problem: str = "",
    chunk_offset: int = 0,
    chunk: int | None = None,
    unverified: bool = False,
) -> GatedField:
    """Normalise, check and gate one field. A required field that is missing or invalid gets confidence 0.

    `unverified`: the verifier was asked about the field but gave no usable verdict, so the field is not
    auto-accepted on the extractor's word alone (it goes to review, its own problems named first)."""
    if answer is None:
        answer = ExtractedField(
            value=None, confidence=0.0, reasoning="the model gave no answer for this field"
        )
        problem = problem or "missing from the model's answer"
    raw = answer.value
    try:
        value = normalize(spec, raw)
    except InvalidValue as exc:
        value, problem = None, f"invalid value: {exc}"
    hint = answer.start + chunk_offset if answer.start is not None else None
    evidence = locate(text, answer.evidence, hint)
    if evidence is not None and chunk is not None:
        evidence = evidence.model_copy(update={"chunk": chunk})
    supported = evidence is not None and evidence_supports(spec, value, evidence.text)
    confidence = combine_confidence(answer.confidence, verdict)
    if value is not None and not supported:
        confidence = min(confidence, UNSUPPORTED_CAP)
        problem = problem or (
            "evidence not found in the document" if evidence is None else "evidence does not show the value"
        )
    if problem.startswith("invalid value") or (spec.required and value is None):
        confidence = 0.0
        problem = problem or "required field missing"
    if unverified:
        problem = problem or "the verifier gave no usable verdict"
    status = AUTO_ACCEPTED if confidence >= spec.threshold and not problem else NEEDS_REVIEW
    return GatedField(
        name=spec.name,
        value=value,
        raw_value=raw,
        confidence=round(confidence, 4),
        model_confidence=answer.confidence,
        reasoning=answer.reasoning,
        evidence=evidence,
        supported=supported,
        verdict=verdict.verdict if verdict else "",
        problem=problem,
        status=status,
    )
