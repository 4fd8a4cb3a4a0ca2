"""The extraction chain: classify -> extract -> verify, each answer validated before the next step runs.

Evaluate-and-retry: when the verifier's overall score is under the threshold, the extraction is
regenerated with the verifier's feedback added, up to `max_attempts`; the best-scoring attempt wins. Every
call of every attempt is traced. A step whose answer cannot be validated stops the chain with a
PipelineError naming the step; nothing half-validated reaches the gate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import ValidationError

from .chunking import Chunk, split
from .gateway import Gateway, GatewayError, Trace
from .gating import GatedField, gate
from .parsing import ParseError, parse_extraction, parse_json_object, parse_model
from .prompts import CLASSIFY_VERSION, VERIFY_VERSION, classify_messages, extract_messages, verify_messages
from .schemas import (
    ClassifyResult,
    DocumentSchema,
    ExtractedField,
    FieldVerdict,
    VerifyResult,
    extraction_json_schema,
)

CLASSIFY_PREFIX_CHARS = 6000  # the classifier needs the head of a document, not all of it


@cache
def _schema_json(model: type[ClassifyResult] | type[VerifyResult]) -> str:
    return json.dumps(model.model_json_schema())


def _json_schema(model: type[ClassifyResult] | type[VerifyResult]) -> dict[str, Any]:
    # Building a pydantic JSON schema costs about 1 ms; parsing the cached text gives each call its own
    # copy (a provider adapter may edit the schema it is given) for a few microseconds.
    return json.loads(_schema_json(model))


class PipelineError(Exception):
    """The chain stopped. `step` and `code` say where and why; `retryable` whether trying later may help."""

    def __init__(self, message: str, *, step: str, code: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.step = step
        self.code = code
        self.retryable = retryable


@dataclass
class PipelineOptions:
    prompt_label: str
    instructions: str = ""
    verify_threshold: float = 0.7
    max_attempts: int = 3
    classify: bool = True
    verify: bool = True
    extract_aliases: list[str] | None = None  # an A/B arm or an evaluation may pin the extract model
    examples: list[dict[str, Any]] = field(default_factory=list)  # few-shot: past corrections


@dataclass
class Candidate:
    answer: ExtractedField
    chunk: Chunk


@dataclass
class Attempt:
    number: int
    candidates: dict[str, Candidate]
    dropped: list[str]
    verify: VerifyResult | None = None
    # Fields the verifier was asked about but gave no usable verdict for; "*": its whole answer was unusable.
    unverified: frozenset[str] = frozenset()

    @property
    def score(self) -> float:
        return self.verify.overall if self.verify is not None else 1.0


@dataclass
class PipelineResult:
    classification: ClassifyResult | None
    fields: list[GatedField]
    attempts: int
    best_attempt: int
    verify_score: float | None
    model_answered: str
    chunks: int
    dropped_fields: list[str]
    warnings: list[str] = field(default_factory=list)


class Pipeline:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def run(
        self,
        *,
        text: str,
        schema: DocumentSchema,
        candidates: Sequence[DocumentSchema],
        options: PipelineOptions,
        trace: Trace,
    ) -> PipelineResult:
        """Run the whole chain on `text` for the declared `schema`; raise PipelineError if a step fails."""
        if not text.strip():
            raise PipelineError("the document has no text", step="classify", code="empty")
        warnings: list[str] = []
        classification = self._classify(text, schema, candidates, trace) if options.classify else None
        if classification is not None:
            if not classification.is_document:
                raise PipelineError(
                    f"not a document: {classification.reasoning}", step="classify", code="not_a_document"
                )
            if not classification.matches_declared_type:
                warnings.append(
                    f"the classifier thinks this is a {classification.document_type or 'different type'}, "
                    f"not a {schema.slug}: {classification.reasoning}"
                )

        best: Attempt | None = None
        feedback: str | None = None
        last_error: PipelineError | None = None
        attempts = 0
        model_answered = ""
        for number in range(1, max(1, options.max_attempts) + 1):
            attempts = number
            try:
                attempt, model_answered = self._extract(text, schema, options, number, feedback, trace)
            except PipelineError as exc:
                if exc.code != "invalid_output":
                    raise
                last_error = exc
                feedback = (
                    f"Your previous answer was not valid JSON for the schema ({exc}). Answer with JSON only."
                )
                continue
            if options.verify:
                attempt.verify, attempt.unverified = self._verify(text, schema, attempt, number, trace)
            if best is None or attempt.score > best.score:
                best = attempt
            if attempt.verify is None or attempt.score >= options.verify_threshold:
                break
            feedback = _feedback(attempt.verify)
        if best is None:
            assert last_error is not None
            raise last_error

        chunks = max((c.chunk.index for c in best.candidates.values()), default=0) + 1
        multi = any(c.chunk.index > 0 or c.chunk.end < len(text) for c in best.candidates.values())
        problem = warnings[0] if warnings else ""
        fields = []
        for spec in schema.fields:
            cand = best.candidates.get(spec.name)
            verdict = best.verify.fields.get(spec.name) if best.verify else None
            fields.append(
                gate(
                    spec,
                    cand.answer if cand else None,
                    text,
                    verdict=verdict,
                    problem=problem,
                    unverified="*" in best.unverified or spec.name in best.unverified,
                    chunk_offset=cand.chunk.start if cand else 0,
                    chunk=cand.chunk.index if (cand and multi) else None,
                )
            )
        return PipelineResult(
            classification=classification,
            fields=fields,
            attempts=attempts,
            best_attempt=best.number,
            verify_score=best.verify.overall if best.verify else None,
            model_answered=model_answered,
            chunks=chunks,
            dropped_fields=best.dropped,
            warnings=warnings,
        )

    # --- steps -------------------------------------------------------------------------------------------
    def _call(self, step: str, trace: Trace, **kwargs: Any) -> Any:
        try:
            return self.gateway.complete(task=step, trace=trace, **kwargs)
        except GatewayError as exc:
            raise PipelineError(str(exc), step=step, code=exc.code, retryable=exc.retryable) from exc

    def _classify(
        self, text: str, schema: DocumentSchema, candidates: Sequence[DocumentSchema], trace: Trace
    ) -> ClassifyResult:
        messages = classify_messages(schema, candidates, text[:CLASSIFY_PREFIX_CHARS])
        completion = self._call(
            "classify",
            trace,
            messages=messages,
            prompt_version=CLASSIFY_VERSION,
            json_schema=_json_schema(ClassifyResult),
            schema_name="classification",
        )
        try:
            result, repairs = parse_model(completion.text, ClassifyResult)
        except ParseError as exc:
            # Junk in what the pipeline does not act on (language, confidence, reasoning) does not stop it.
            salvaged, dropped = _salvage_classification(completion.text)
            if salvaged is None:
                _finish(completion.record, trace, "failed", exc.repairs)
                raise PipelineError(
                    f"classify answer is invalid: {exc}", step="classify", code="invalid_output"
                ) from exc
            _finish(
                completion.record, trace, "repaired", [*exc.repairs, f"fields_dropped:{','.join(dropped)}"]
            )
            return salvaged
        _finish(completion.record, trace, "repaired" if repairs else "ok", repairs)
        return result  # type: ignore[return-value]

    def _extract(
        self,
        text: str,
        schema: DocumentSchema,
        options: PipelineOptions,
        number: int,
        feedback: str | None,
        trace: Trace,
    ) -> tuple[Attempt, str]:
        route_alias = (
            options.extract_aliases or self.gateway.config.route("extract", self.gateway.environment).aliases
        )[0]
        overhead = self.gateway.count_tokens(
            route_alias,
            extract_messages(
                schema,
                "",
                label=options.prompt_label,
                instructions=options.instructions,
                feedback=feedback,
                chunk=(0, 2),
            ),
        )
        budget = max(256, self.gateway.input_budget("extract") - overhead)
        chunks = split(
            text,
            max_tokens=budget,
            overlap_tokens=self.gateway.config.settings.chunk_overlap_tokens,
            count=lambda t: self.gateway.count_tokens(route_alias, [{"role": "user", "content": t}]),
        )
        json_schema = extraction_json_schema(schema)
        candidates: dict[str, Candidate] = {}
        dropped: set[str] = set()
        errors: list[str] = []
        model_answered = ""
        for chunk in chunks:
            messages = extract_messages(
                schema,
                chunk.text,
                label=options.prompt_label,
                instructions=options.instructions,
                feedback=feedback,
                chunk=(chunk.index, len(chunks)) if len(chunks) > 1 else None,
                examples=options.examples,
            )
            completion = self._call(
                "extract",
                trace,
                messages=messages,
                prompt_version=options.prompt_label,
                json_schema=json_schema,
                schema_name=f"{schema.slug}_extraction",
                attempt=number,
                chunk=chunk.index if len(chunks) > 1 else None,
                aliases=options.extract_aliases,
            )
            outcome = parse_extraction(completion.text, schema)
            if outcome.error or outcome.data is None:
                _finish(completion.record, trace, "failed", outcome.repairs)
                errors.append(outcome.error or "no data")
                continue
            _finish(completion.record, trace, "repaired" if outcome.repaired else "ok", outcome.repairs)
            model_answered = completion.record.model_answered
            dropped.update(outcome.dropped_fields)
            for name, data in outcome.data["fields"].items():
                answer = ExtractedField.model_validate(data)
                _merge(candidates, name, answer, chunk)
        if errors and len(errors) == len(chunks):
            raise PipelineError(
                f"extract answer is invalid: {errors[0]}", step="extract", code="invalid_output"
            )
        return Attempt(number=number, candidates=candidates, dropped=sorted(dropped)), model_answered

    def _verify(
        self, text: str, schema: DocumentSchema, attempt: Attempt, number: int, trace: Trace
    ) -> tuple[VerifyResult | None, frozenset[str]]:
        """The verifier's verdicts, and the fields it gave no usable verdict for ("*": none usable).

        A verify answer that does not validate does not fail the document: the verdicts that validate are
        kept (the rest dropped, noted as a repair), or, with none usable, the run goes on unverified. Either
        way the fields without a verdict go to review, and the call keeps the raw answer for prompt tuning.
        """
        extraction = {
            name: {"value": c.answer.value, "confidence": c.answer.confidence, "evidence": c.answer.evidence}
            for name, c in attempt.candidates.items()
        }
        alias = self.gateway.config.route("verify", self.gateway.environment).model
        source = text
        if (
            self.gateway.count_tokens(alias, [{"role": "user", "content": text}])
            > self.gateway.input_budget("verify") // 2
        ):
            source = _excerpts(
                text, attempt
            )  # a long document: show the verifier the evidence neighbourhoods
        messages = verify_messages(schema, source, extraction)
        completion = self._call(
            "verify",
            trace,
            messages=messages,
            prompt_version=VERIFY_VERSION,
            attempt=number,
            json_schema=_json_schema(VerifyResult),
            schema_name="verification",
        )
        try:
            result, repairs = parse_model(completion.text, VerifyResult)
        except ParseError as exc:
            salvaged, dropped = _salvage_verdicts(completion.text)
            if salvaged is None:
                _finish(completion.record, trace, "failed", exc.repairs)
                return None, frozenset({"*"})
            _finish(
                completion.record, trace, "repaired", [*exc.repairs, f"verdicts_dropped:{','.join(dropped)}"]
            )
            return salvaged, frozenset(dropped)
        _finish(completion.record, trace, "repaired" if repairs else "ok", repairs)
        return result, frozenset()  # type: ignore[return-value]


def _salvage_classification(raw: str) -> tuple[ClassifyResult | None, list[str]]:
    """The classify answer with only its essential fields (ClassifyResult.ESSENTIAL), and the names of the
    others it had; None if the essential ones do not validate either."""
    try:
        obj, _ = parse_json_object(raw)
    except ParseError:
        return None, []
    try:
        result = ClassifyResult.model_validate({k: obj[k] for k in ClassifyResult.ESSENTIAL if k in obj})
    except ValidationError:
        return None, []
    return result, sorted(k for k in obj if k not in ClassifyResult.ESSENTIAL)


def _salvage_verdicts(raw: str) -> tuple[VerifyResult | None, list[str]]:
    """The verify answer with its invalid field verdicts dropped, and their names; None if that is not enough
    (no JSON object, no "fields" object, or document-level scores that do not validate either)."""
    try:
        obj, _ = parse_json_object(raw)
    except ParseError:
        return None, []
    fields = obj.get("fields")
    if not isinstance(fields, dict):
        return None, []
    kept: dict[str, FieldVerdict] = {}
    dropped: list[str] = []
    for name, verdict in fields.items():
        try:
            kept[name] = FieldVerdict.model_validate(verdict)
        except ValidationError:
            dropped.append(name)
    try:
        return VerifyResult.model_validate({**obj, "fields": kept}), dropped
    except ValidationError:
        return None, []


def _finish(record: Any, trace: Trace, status: str, repairs: list[str]) -> None:
    record.parse_status = status
    record.repairs = list(repairs)
    trace.add(record)


def _merge(candidates: dict[str, Candidate], name: str, answer: ExtractedField, chunk: Chunk) -> None:
    """Keep, per field, the most confident non-null answer across chunks (a null never beats a value)."""
    current = candidates.get(name)
    if current is None:
        candidates[name] = Candidate(answer, chunk)
        return
    if answer.value is None:
        return
    if current.answer.value is None or answer.confidence > current.answer.confidence:
        candidates[name] = Candidate(answer, chunk)


def _feedback(verify: VerifyResult) -> str:
    lines = [
        f"- {name}: {v.verdict}. {v.feedback}".strip()
        for name, v in verify.fields.items()
        if v.verdict != "correct"
    ]
    if verify.feedback:
        lines.append(verify.feedback)
    return "\n".join(lines) or "Re-check every field against the document."


def _excerpts(text: str, attempt: Attempt, radius: int = 400) -> str:
    spans: list[tuple[int, int]] = []
    for c in attempt.candidates.values():
        quote = c.answer.evidence
        if not quote:
            continue
        pos = text.find(quote, c.chunk.start)
        if pos >= 0:
            spans.append((max(0, pos - radius), min(len(text), pos + len(quote) + radius)))
    spans.sort()
    merged: list[list[int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return "\n…\n".join(text[s:e] for s, e in merged) or text[:4000]
