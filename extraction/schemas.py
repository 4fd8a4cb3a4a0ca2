"""Types shared by every step of the pipeline.

The document type's schema (its FieldSpecs) is the contract: every model answer is validated against
models built here, so the model never chooses which fields exist.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator


class FieldType(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    MONEY = "money"
    DATE = "date"
    ENUM = "enum"
    BOOLEAN = "boolean"


class FieldSpec(BaseModel):
    """One named field of a document type's target schema."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    type: FieldType = FieldType.TEXT
    description: str = ""
    required: bool = False
    threshold: float = Field(default=0.85, ge=0.0, le=1.0)
    choices: tuple[str, ...] = ()


class DocumentSchema(BaseModel):
    """A document type as the pipeline sees it."""

    model_config = ConfigDict(frozen=True)

    slug: str
    name: str
    description: str = ""
    fields: tuple[FieldSpec, ...]

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)


class Evidence(BaseModel):
    """A span of the document text: [start, end) character offsets, and the text found there."""

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str
    chunk: int | None = None


class ExtractedField(BaseModel):
    """One field as a model reported it, after parsing (value not yet normalised)."""

    model_config = ConfigDict(extra="ignore")

    value: Any = None
    confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    reasoning: str = ""
    evidence: str | None = None  # a verbatim quote of the source, as the model gave it
    start: int | None = None  # optional offset hint (the offline model knows exact offsets)

    @field_validator("confidence", mode="before")
    @classmethod
    def _clamp_confidence(cls, v: Any) -> float:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return 0.0
        if not math.isfinite(f):  # "Infinity" is not a very sure model: it is junk
            return 0.0
        if f > 1.0 and f <= 100.0:  # some models answer in percent
            f = f / 100.0
        return min(max(f, 0.0), 1.0)

    @field_validator("reasoning", mode="before")
    @classmethod
    def _reasoning_text(cls, v: Any) -> str:
        return "" if v is None else str(v)

    @field_validator("evidence", mode="before")
    @classmethod
    def _evidence_text(cls, v: Any) -> str | None:
        if v is None or v == "":
            return None
        if isinstance(v, dict):  # {"text": ..., "start": ...}
            v = v.get("text") or v.get("quote")
        return None if v is None else str(v)


class ClassifyResult(BaseModel):
    """Output of the classify step."""

    is_document: bool
    document_type: str | None = None
    matches_declared_type: bool
    language: str = "und"
    confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    reasoning: str = ""

    # What the pipeline acts on; the rest may be dropped from an answer that does not validate otherwise.
    ESSENTIAL: ClassVar[tuple[str, ...]] = ("is_document", "document_type", "matches_declared_type")


class FieldVerdict(BaseModel):
    model_config = ConfigDict(extra="ignore")

    verdict: Literal["correct", "incorrect", "unsupported", "missing"]
    score: float = Field(ge=0.0, le=1.0)
    feedback: str = ""

    @field_validator("verdict", mode="before")
    @classmethod
    def _verdict_word(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v  # "Correct", " CORRECT "


class VerifyResult(BaseModel):
    """Output of the verify step: a per-field verdict plus document-level scores."""

    model_config = ConfigDict(extra="ignore")

    fields: dict[str, FieldVerdict]
    accuracy: float = Field(ge=0.0, le=1.0)
    completeness: float = Field(ge=0.0, le=1.0)
    schema_fit: float = Field(ge=0.0, le=1.0)
    feedback: str = ""

    @property
    def overall(self) -> float:
        return round((self.accuracy + self.completeness + self.schema_fit) / 3, 4)


_JSON_TYPES: dict[FieldType, dict[str, Any]] = {
    FieldType.TEXT: {"type": ["string", "null"]},
    FieldType.NUMBER: {"type": ["number", "null"]},
    FieldType.MONEY: {
        "type": ["string", "null"],
        "description": "decimal amount, optional ISO currency, e.g. '12.50 EUR'",
    },
    FieldType.DATE: {"type": ["string", "null"], "description": "ISO date YYYY-MM-DD"},
    FieldType.BOOLEAN: {"type": ["boolean", "null"]},
}


def field_json_schema(spec: FieldSpec) -> dict[str, Any]:
    """Return the JSON Schema of one field's answer object (value + confidence + reasoning + evidence)."""
    if spec.type == FieldType.ENUM:
        value: dict[str, Any] = {"enum": [*spec.choices, None]}
    else:
        value = dict(_JSON_TYPES[spec.type])
    if spec.description:
        value["description"] = (spec.description + ". " + value.get("description", "")).strip(". ")
    return {
        "type": "object",
        "properties": {
            "value": value,
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "reasoning": {"type": "string"},
            "evidence": {"type": ["string", "null"], "description": "verbatim quote from the document"},
        },
        "required": ["value", "confidence", "reasoning", "evidence"],
        "additionalProperties": False,
    }


def extraction_json_schema(schema: DocumentSchema) -> dict[str, Any]:
    """Return the JSON Schema a model's extraction answer must follow (sent as structured output)."""
    return {
        "type": "object",
        "properties": {
            "fields": {
                "type": "object",
                "properties": {f.name: field_json_schema(f) for f in schema.fields},
                "required": [f.name for f in schema.fields],
                "additionalProperties": False,
            }
        },
        "required": ["fields"],
        "additionalProperties": False,
    }


def extraction_model(schema: DocumentSchema) -> type[BaseModel]:
    """Return a pydantic model for the extraction answer, one ExtractedField per declared field.

    Every field is optional here on purpose: a missing required field is not a parse failure but a field
    that goes to review with confidence 0 (see gating).
    """
    fields_model = create_model(  # type: ignore[call-overload]
        f"{schema.slug.title().replace('-', '')}Fields",
        __config__=ConfigDict(extra="ignore"),
        **{f.name: (ExtractedField | None, None) for f in schema.fields},
    )
    return create_model(
        f"{schema.slug.title().replace('-', '')}Extraction",
        __config__=ConfigDict(extra="ignore"),
        fields=(fields_model, ...),
    )
