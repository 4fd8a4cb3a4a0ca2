"""Parse what language models really send back into validated structures.

Models wrap JSON in code fences, add prose around it, leave trailing commas, use single quotes or Python
literals, write comments, and get cut off at the token limit. Everything here recovers what can be
recovered, records each repair as a machine-readable note, and never lets one bad field sink the others.

Repair notes (``repairs``) are short strings, optionally followed by ``:`` and a comma-separated list of
names, for example ``"code_fence"``, ``"truncated"`` or ``"extra_fields_dropped:foo,bar"``.

Values are kept exactly as the model gave them; normalising them is another module's job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import json_repair
from pydantic import BaseModel, ValidationError

from extraction.schemas import DocumentSchema, ExtractedField

__all__ = [
    "MAX_REPLY_CHARS",
    "ParseError",
    "ParseOutcome",
    "parse_extraction",
    "parse_json_object",
    "parse_model",
]

# The repair path walks the reply in pure Python; a reply far beyond any sane completion size is refused
# rather than parsed slowly.
MAX_REPLY_CHARS = 2_000_000
# json_repair is not linear on every input: 200 000 unclosed "{" took it 18 s, 1.9 M took 170 s, all of it
# with the worker's event loop blocked. No answer to our schemas nests deeper than a few levels or needs
# repairing at this size, so deeper or larger candidates are refused (a strictly valid reply is still read).
MAX_REPAIR_NESTING = 64
MAX_REPAIR_CHARS = 200_000

# Reasoning models (DeepSeek-R1, Qwen) may prepend their chain of thought, which can contain braces.
_THINK_BLOCK = re.compile(r"<think(?:ing)?>.*?(?:</think(?:ing)?>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE_MARK = re.compile(r"```[A-Za-z0-9_+-]*")
_PYTHON_LITERALS = frozenset({"True", "False", "None"})

# Keys that make a dict look like one field's answer rather than a bare (dict-shaped) value.
_FIELD_KEYS = frozenset({"value", "confidence", "reasoning", "evidence", "start"})
# Keys that may be dropped from a field when they alone fail validation: the value and confidence survive.
_AUXILIARY_KEYS = frozenset({"start", "evidence", "reasoning"})

M = TypeVar("M", bound=BaseModel)

_CONFIDENCE_WORDS: dict[str, float] = {
    "very high": 0.95,
    "high": 0.9,
    "medium": 0.6,
    "moderate": 0.6,
    "med": 0.6,
    "low": 0.3,
    "very low": 0.1,
}

# What a model can put in its reply that is not storable text: NUL (PostgreSQL's text and JSON types refuse it)
# and UTF-16 surrogate code points, which are not characters (a lone one comes out of a "\ud800" escape or a
# broken provider). Each becomes U+FFFD, the replacement character, as undecodable bytes do in a document.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD (the model's reply, an error message)."""
    return _UNSTORABLE.sub("\ufffd", text)


def _storable_values(value: Any) -> Any:
    """A parsed reply with storable() applied to every string in it, keys included, and numbers too large for
    a float (1e400) as null, as NaN and Infinity are read (_loads_strict)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {storable(k): _storable_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable_values(v) for v in value]
    return value


def _finite(token: str) -> float | None:
    number = float(token)
    return number if math.isfinite(number) else None


# pydantic error types that a word ("high") or a percentage (87, "87%") in a 0..1 score field produces.
_SCORE_ERROR_TYPES = frozenset({"float_parsing", "float_type", "less_than_equal", "greater_than_equal"})


class ParseError(Exception):
    """A model reply from which no usable JSON object could be recovered."""

    def __init__(self, message: str, *, raw: str = "", repairs: list[str] | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.repairs = list(repairs or [])


@dataclass
class ParseOutcome:
    """The result of parsing an extraction reply against a document schema.

    ``data`` is ``{"fields": {name: ExtractedField-as-dict}}`` holding only the declared fields that were
    present and valid, or None when ``error`` is set. ``repaired`` is True when anything beyond a plain
    ``json.loads`` of a well-shaped answer was needed (missing fields alone do not count: nothing was
    repaired, something was absent).
    """

    data: dict[str, Any] | None
    repaired: bool = False
    repairs: list[str] = field(default_factory=list)
    error: str | None = None
    dropped_fields: list[str] = field(default_factory=list)
    missing_fields: list[str] = field(default_factory=list)
    invalid_fields: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Locating the JSON object in a reply


@dataclass
class _Span:
    """A brace-delimited candidate in the reply: [start, end), closed unless the reply ended inside it."""

    start: int
    end: int
    closed: bool
    depth: int = 0  # the deepest nesting of brackets seen
    comments: bool = False
    single_quotes: bool = False
    python_literals: bool = False


def _match_object(text: str, start: int) -> _Span:
    """Return the span of the object opening at ``text[start] == "{"``, aware of strings and comments."""
    span = _Span(start=start, end=len(text), closed=False)
    stack: list[str] = []
    quote: str | None = None
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if quote is not None:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
            i += 1
            continue
        if c in "\"'":
            quote = c
            span.single_quotes = span.single_quotes or c == "'"
        elif c == "/" and text.startswith("//", i):
            span.comments = True
            newline = text.find("\n", i)
            i = n if newline < 0 else newline
            continue
        elif c == "/" and text.startswith("/*", i):
            span.comments = True
            close = text.find("*/", i + 2)
            i = n if close < 0 else close + 2
            continue
        elif c in "{[":
            stack.append(c)
            if len(stack) > span.depth:
                span.depth = len(stack)
        elif c in "}]":
            opener = "{" if c == "}" else "["
            # Tolerate a mismatched closer by unwinding to its opener; a stray one is ignored.
            if opener in stack:
                while stack.pop() != opener:
                    pass
            if not stack:
                span.end, span.closed = i + 1, True
                return span
        elif c.isalpha() or c == "_":
            k = i
            while k < n and (text[k].isalnum() or text[k] == "_"):
                k += 1
            if text[i:k] in _PYTHON_LITERALS:
                span.python_literals = True
            i = k
            continue
        i += 1
    return span


def _object_spans(text: str) -> list[_Span]:
    """Return every top-level brace group of ``text``, in order; the last may be unclosed."""
    spans: list[_Span] = []
    i = 0
    while True:
        j = text.find("{", i)
        if j < 0:
            return spans
        span = _match_object(text, j)
        spans.append(span)
        if not span.closed:
            return spans
        i = span.end


def _loads_strict(text: str) -> Any:
    # NaN/Infinity are valid to Python's json but poison numeric checks downstream, and PostgreSQL's JSON
    # refuses them: read them as null, and so a number too large for a float (1e400 would be Infinity).
    return json.loads(text, parse_constant=lambda _name: None, parse_float=_finite)


def _unwrap_top_level(value: Any, repairs: list[str], raw: str) -> dict[str, Any] | None:
    """Return the object a strictly parsed top-level value stands for, or None if it is not one."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        objects = [v for v in value if isinstance(v, dict)]
        if len(value) == 1 and objects:
            repairs.append("array_unwrapped")
            return objects[0]
        if value:
            raise ParseError(f"reply is a JSON array of {len(value)} items, expected one object", raw=raw)
    return None


def parse_json_object(raw: str) -> tuple[dict[str, Any], list[str]]:
    """Extract the JSON object from a model reply and return it with the list of repairs it needed.

    Try ``json.loads`` first; otherwise drop ``<think>`` blocks, code fences and prose around the
    outermost ``{...}``, and hand what remains to json_repair (trailing commas, single quotes, comments,
    unquoted keys, Python literals, truncated output). A top-level array holding one object yields that
    object. Raise ParseError when the reply is empty or holds no object. NUL and lone surrogates in its strings
    (raw, or from a ``\\u`` escape) come back as U+FFFD (storable()), numbers beyond a float's range as null.
    """
    obj, repairs = _parse_json_object(raw)
    # An escape or the raw text can hold what is not storable; json_repair's numbers are not checked by
    # _loads_strict. (raw is a str here.)
    if "\\u" in raw or "json_repair" in repairs or _UNSTORABLE.search(raw):
        obj = _storable_values(obj)
    return obj, repairs


def _parse_json_object(raw: str) -> tuple[dict[str, Any], list[str]]:
    if not isinstance(raw, str):
        raise ParseError(f"reply is {type(raw).__name__}, not text", raw=str(raw))
    text = raw.strip()
    if not text:
        raise ParseError("empty reply", raw=raw)
    if len(text) > MAX_REPLY_CHARS:
        raise ParseError(f"reply too long ({len(text)} characters)", raw=raw[:1000])

    repairs: list[str] = []
    try:
        value = _loads_strict(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        pass
    else:
        # A double-encoded answer ("{\"a\": 1}") is a string holding the JSON we want.
        if isinstance(value, str) and "{" in value:
            inner, inner_repairs = _parse_json_object(value)
            return inner, ["double_encoded", *inner_repairs]
        obj = _unwrap_top_level(value, repairs, raw)
        if obj is not None:
            return obj, repairs
        raise ParseError(f"reply is a JSON {type(value).__name__}, expected an object", raw=raw)

    if _THINK_BLOCK.search(text):
        text = _THINK_BLOCK.sub("", text).strip()
        repairs.append("think_block_stripped")

    spans = _object_spans(text)
    if not spans:
        raise ParseError("no JSON object found in reply", raw=raw, repairs=repairs)

    # The answer is normally the largest brace group; smaller ones are prose such as "{placeholder}".
    failures: list[str] = []
    for span in sorted(spans, key=lambda s: s.end - s.start, reverse=True):
        end = span.end
        if not span.closed:
            # A reply cut inside the object may still carry a closing fence: keep it out of the JSON.
            fence = text.find("```", span.start)
            if fence >= 0:
                end = fence
        candidate = text[span.start : end]
        notes = _surroundings_notes(text, span.start, end)
        try:
            obj = _loads_strict(candidate)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            return obj, repairs + notes
        if span.depth > MAX_REPAIR_NESTING or len(candidate) > MAX_REPAIR_CHARS:
            failures.append(
                f"not repaired: nested {span.depth} deep in {len(candidate)} characters "
                f"(limits {MAX_REPAIR_NESTING}, {MAX_REPAIR_CHARS})"
            )
            continue
        try:
            repaired_value = json_repair.repair_json(candidate, return_objects=True, skip_json_loads=True)
        except Exception as exc:  # json_repair is heuristic; any failure just means "not this candidate"
            failures.append(f"json_repair failed: {exc}")
            continue
        if not isinstance(repaired_value, dict) or (not repaired_value and candidate.strip("{} \n\t\r")):
            failures.append("json_repair found no object")
            continue
        notes.append("json_repair")
        if not span.closed:
            notes.append("truncated")
        if span.comments:
            notes.append("comments")
        if span.single_quotes:
            notes.append("single_quotes")
        if span.python_literals:
            notes.append("python_literals")
        return repaired_value, repairs + notes
    raise ParseError("; ".join(failures) or "no JSON object found in reply", raw=raw, repairs=repairs)


def _surroundings_notes(text: str, start: int, end: int) -> list[str]:
    """Return notes for what surrounds the chosen object: fences, prose, an enclosing array."""
    notes: list[str] = []
    outside = text[:start] + "\n" + text[end:]
    if "```" in outside:
        notes.append("code_fence")
    leftover = _FENCE_MARK.sub("", outside).strip()
    if leftover.startswith("[") and leftover.endswith("]") and not leftover[1:-1].strip(" \n\t\r,"):
        notes.append("array_unwrapped")
    elif leftover:
        notes.append("prose_stripped")
    return notes


# --------------------------------------------------------------------------------------------------
# Scores and confidences


def _unit_score(value: Any) -> tuple[float | None, str | None]:
    """Read a 0..1 score a model may have written as a word, a string, or a percentage.

    Return (score, kind) where kind names the coercion ("words", "string", "percent", "clamped") or is
    None when the value was already a plain 0..1 number; score is None when nothing sensible was found.
    """
    if isinstance(value, bool):  # True would otherwise read as 1.0: full confidence from a type error
        return None, "unparsed"
    if isinstance(value, int | float):
        f = float(value)
        if math.isnan(f):
            return None, "unparsed"
        if 0.0 <= f <= 1.0:
            return f, None
        if 1.0 < f <= 100.0:
            return f / 100.0, "percent"
        return min(max(f, 0.0), 1.0), "clamped"
    if isinstance(value, str):
        s = value.strip().lower()
        if s in _CONFIDENCE_WORDS:
            return _CONFIDENCE_WORDS[s], "words"
        percent = s.endswith("%")
        try:
            f = float(s.rstrip("%").strip())
        except ValueError:
            return None, "unparsed"
        if percent:
            return (min(max(f / 100.0, 0.0), 1.0) if not math.isnan(f) else None), "percent"
        score, kind = _unit_score(f)
        return score, kind or "string"
    return None, "unparsed"


# --------------------------------------------------------------------------------------------------
# Extraction replies


def _norm_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def _locate_fields(
    obj: dict[str, Any], names: set[str], notes: dict[str, list[str]], depth: int = 0
) -> dict[str, Any]:
    """Return the name → answer mapping of an extraction reply, whatever shape wraps it."""
    inner = obj.get("fields")
    # A declared field may itself be called "fields": then only a mapping of field names is the wrapper.
    is_wrapper = "fields" in obj and (
        "fields" not in names
        or (isinstance(inner, dict) and bool(set(inner) & names) and not set(inner) & _FIELD_KEYS)
    )
    if is_wrapper:
        ignored = sorted(k for k in obj if k != "fields")
        if ignored:
            notes["top_level_keys_ignored"] = ignored
        if isinstance(inner, dict):
            return inner
        if isinstance(inner, list):
            return _fields_from_list(inner, notes)
        notes["fields_not_object"] = []
        return {}
    # {"extraction": {"fields": {...}}} and similar single-key envelopes.
    if len(obj) == 1 and depth < 3:
        ((key, value),) = obj.items()
        is_envelope = isinstance(value, dict) and not set(value) & _FIELD_KEYS
        if is_envelope and key not in names and _norm_name(key) not in names:
            notes.setdefault("wrapper_unwrapped", []).append(key)
            return _locate_fields(value, names, notes, depth + 1)
    notes["bare_mapping"] = []
    return obj


def _fields_from_list(items: list[Any], notes: dict[str, list[str]]) -> dict[str, Any]:
    """Turn ``[{"name": "total", "value": ...}, ...]`` into a mapping, as some models answer."""
    mapping: dict[str, Any] = {}
    for item in items:
        if isinstance(item, dict):
            name = item.get("name", item.get("field"))
            if isinstance(name, str):
                mapping[name] = {k: v for k, v in item.items() if k not in ("name", "field")}
    notes["fields_list"] = []
    return mapping


def _emit(notes: dict[str, list[str]]) -> list[str]:
    return [f"{kind}:{','.join(names)}" if names else kind for kind, names in notes.items()]


def parse_extraction(raw: str, schema: DocumentSchema) -> ParseOutcome:
    """Parse an extraction reply against ``schema`` and return what can be used of it.

    Accept ``{"fields": {...}}``, a bare ``{name: {...}}`` mapping, single-key envelopes and a list of
    ``{"name": ...}`` items; a field given as a bare value becomes ``{"value": v, "confidence": 0}``.
    Drop undeclared fields, list missing ones, and validate each field on its own so a bad one is set
    aside in ``invalid_fields`` while the others survive. Confidences written as words ("high") or
    percentages (87, "87%") are mapped onto 0..1 and noted. When the reply was truncated, the last field
    present is given confidence 0 because its value may have been cut mid-way.
    """
    try:
        obj, repairs = parse_json_object(raw)
    except ParseError as exc:
        return ParseOutcome(
            data=None,
            repaired=bool(exc.repairs),
            repairs=list(exc.repairs),
            error=str(exc),
            missing_fields=[f.name for f in schema.fields],
        )

    names = {f.name for f in schema.fields}
    by_norm = {_norm_name(n): n for n in names}
    notes: dict[str, list[str]] = {}
    mapping = _locate_fields(obj, names, notes)

    answers: dict[str, Any] = {}
    dropped: list[str] = []
    for key, answer in mapping.items():
        name = key if key in names else by_norm.get(_norm_name(str(key)))
        if name is None or name in answers or (name != key and name in mapping):
            dropped.append(str(key))
            continue
        if name != key:
            notes.setdefault("fields_renamed", []).append(f"{key}->{name}")
        answers[name] = answer
    if dropped:
        notes["extra_fields_dropped"] = dropped

    fields: dict[str, dict[str, Any]] = {}
    invalid: dict[str, str] = {}
    for name, answer in answers.items():
        entry = _field_entry(name, answer, notes)
        try:
            fields[name] = ExtractedField.model_validate(entry).model_dump()
            continue
        except ValidationError as exc:
            error = exc
        bad_keys = {str(err["loc"][0]) for err in error.errors() if err["loc"]}
        if bad_keys and bad_keys <= _AUXILIARY_KEYS:
            # Only an optional detail is wrong (e.g. start="p. 2"): keep the value and its confidence.
            salvage = {k: v for k, v in entry.items() if k not in bad_keys}
            try:
                fields[name] = ExtractedField.model_validate(salvage).model_dump()
                notes.setdefault("invalid_keys_dropped", []).extend(f"{name}.{k}" for k in sorted(bad_keys))
                continue
            except ValidationError as exc:
                error = exc
        invalid[name] = _short_error(error)
    if invalid:
        notes["invalid_fields"] = list(invalid)

    if "truncated" in repairs and fields:
        last = next(reversed(fields))
        if fields[last]["confidence"] > 0:
            fields[last]["confidence"] = 0.0
        notes["truncated_field"] = [last]

    ordered = {f.name: fields[f.name] for f in schema.fields if f.name in fields}
    missing = [f.name for f in schema.fields if f.name not in answers]
    all_repairs = repairs + _emit(notes)
    if missing:
        all_repairs.append(f"missing_fields:{','.join(missing)}")
    repaired = any(not r.startswith("missing_fields:") for r in all_repairs)

    outcome = ParseOutcome(
        data={"fields": ordered},
        repaired=repaired,
        repairs=all_repairs,
        dropped_fields=dropped,
        missing_fields=missing,
        invalid_fields=invalid,
    )
    if not ordered and schema.fields:
        outcome.data = None
        outcome.error = "reply holds none of the schema's fields"
    return outcome


def _field_entry(name: str, answer: Any, notes: dict[str, list[str]]) -> dict[str, Any]:
    """Return the dict to validate as ExtractedField for one answer, coercing its confidence."""
    if isinstance(answer, dict) and set(answer) & _FIELD_KEYS:
        entry = dict(answer)
    else:
        notes.setdefault("bare_values", []).append(name)
        return {"value": answer, "confidence": 0.0}
    if "confidence" in entry:
        score, kind = _unit_score(entry["confidence"])
        entry["confidence"] = 0.0 if score is None else score
        if kind is not None:
            notes.setdefault(f"confidence_{kind}", []).append(name)
    return entry


def _short_error(exc: ValidationError) -> str:
    """Return a one-line summary of a pydantic error: "loc: message; ..."."""
    parts = [f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()]
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# Any pydantic model (classify, verify)


def _get_at(obj: Any, loc: tuple[Any, ...]) -> tuple[Any, Any] | None:
    """Return (container, key) addressing ``loc`` inside nested dicts/lists, or None if absent."""
    container = obj
    for part in loc[:-1]:
        try:
            container = container[part]
        except (KeyError, IndexError, TypeError):
            return None
    if not loc:
        return None
    last = loc[-1]
    if isinstance(container, Mapping) and last in container:
        return container, last
    if isinstance(container, list) and isinstance(last, int) and -len(container) <= last < len(container):
        return container, last
    return None


def parse_model(raw: str, model: type[M]) -> tuple[M, list[str]]:
    """Parse a reply into ``model`` and return it with the repairs it needed.

    Beyond the JSON repairs of parse_json_object, unwrap a single-key envelope ({"result": {...}}) and
    read 0..1 scores written as words or percentages, but only where validation failed on them. Raise
    ParseError carrying pydantic's message when the reply still does not validate.
    """
    obj, repairs = parse_json_object(raw)
    candidates: list[tuple[dict[str, Any], list[str]]] = [(obj, [])]
    if len(obj) == 1 and next(iter(obj)) not in model.model_fields:
        ((key, inner),) = obj.items()
        if isinstance(inner, dict):
            candidates.append((inner, [f"wrapper_unwrapped:{key}"]))

    errors: list[ValidationError] = []
    for candidate, notes in candidates:
        try:
            return model.model_validate(candidate), [*repairs, *notes]
        except ValidationError as exc:
            errors.append(exc)
        coerced = _coerce_scores(candidate, errors[-1])
        if not coerced:
            continue
        try:
            return model.model_validate(candidate), [*repairs, *notes, f"scores_coerced:{','.join(coerced)}"]
        except ValidationError as exc:
            errors[-1] = exc
    # Report the candidate that came closest, which is the most useful message for a retry prompt.
    best = min(errors, key=lambda e: e.error_count())
    raise ParseError(
        f"reply does not match {model.__name__}: {_short_error(best)}", raw=raw, repairs=repairs
    ) from best


def _coerce_scores(obj: dict[str, Any], error: ValidationError) -> list[str]:
    """Rewrite, in place, the 0..1 scores ``error`` rejected that read as words or percentages.

    Return the dotted locations changed. Only locations pydantic complained about are touched, so a
    valid number is never reinterpreted.
    """
    coerced: list[str] = []
    for err in error.errors():
        if err["type"] not in _SCORE_ERROR_TYPES:
            continue
        bound = (err.get("ctx") or {}).get("le", (err.get("ctx") or {}).get("ge"))
        if err["type"] in ("less_than_equal", "greater_than_equal") and bound not in (0, 1):
            continue  # a bound other than 0..1 means this is not a unit score
        target = _get_at(obj, tuple(err["loc"]))
        if target is None:
            continue
        container, key = target
        score, kind = _unit_score(container[key])
        if score is not None and kind != "string":
            container[key] = score
            coerced.append(".".join(str(p) for p in err["loc"]))
    return coerced
