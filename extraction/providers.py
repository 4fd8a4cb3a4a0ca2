"""The built-in offline model, registered as the litellm custom provider `reviewapp`.

`reviewapp/heuristic-v1` reads the same prompts any model gets (the task line, the JSON fields block and
the <document> text; see prompts.py) and answers the same JSON, computed by `extraction.heuristic`.
Going through litellm keeps one code path for every model: tracing, retries and fallbacks included.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import litellm
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse, Usage

from . import heuristic
from .schemas import DocumentSchema, FieldSpec

PROVIDER = "reviewapp"
MODEL_VERSION = "reviewapp/heuristic-v1"

_TASK = re.compile(r"^task: (\w+)$", re.M)
_FENCE = re.compile(r"```json\n(.*?)\n```", re.S)
_DOC = re.compile(r"<document>\n(.*)\n</document>", re.S)
_EXTRACTION = re.compile(r"<extraction>\n(.*)\n</extraction>", re.S)
_DECLARED = re.compile(r"^Declared type: (\S+)$", re.M)


class OfflineModelError(ValueError):
    """The request is not one the offline model understands (it only speaks reviewapp's prompts)."""


def _document_text(user: str) -> str:
    m = _DOC.search(user)
    if not m:
        raise OfflineModelError("no <document> in the request")
    return m.group(1).replace("<\\/document>", "</document>")


def answer(messages: list[dict[str, Any]]) -> str:
    """Return the offline model's JSON answer to one of reviewapp's prompts."""
    system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
    user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
    task = _TASK.search(system)
    fence = _FENCE.search(system)
    if not task or not fence:
        raise OfflineModelError("the offline model only answers reviewapp's classify/extract/verify prompts")
    block = json.loads(fence.group(1))
    text = _document_text(user)
    if task.group(1) == "classify":
        candidates = [
            DocumentSchema(slug=c["slug"], name=c["name"], description=c.get("description", ""), fields=())
            for c in block
        ]
        declared = _DECLARED.search(system)
        return json.dumps(heuristic.classify(text, candidates, declared.group(1) if declared else ""))
    fields = [FieldSpec(**{**f, "choices": tuple(f.get("choices", ()))}) for f in block]
    if task.group(1) == "extract":
        return json.dumps({"fields": heuristic.extract(text, fields)})
    if task.group(1) == "verify":
        m = _EXTRACTION.search(user)
        extraction = json.loads(m.group(1)) if m else {}
        return json.dumps(heuristic.verify(text, fields, extraction.get("fields", extraction)))
    raise OfflineModelError(f"unknown task {task.group(1)!r}")


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class HeuristicLLM(CustomLLM):
    def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[override]
        model_response: ModelResponse = kwargs.get("model_response") or (
            args[2] if len(args) > 2 else ModelResponse()
        )
        try:
            content = answer(messages)
        except (OfflineModelError, json.JSONDecodeError, ValueError) as exc:
            raise litellm.BadRequestError(
                message=str(exc), model=MODEL_VERSION, llm_provider=PROVIDER
            ) from exc
        model_response.choices[0].message.content = content  # type: ignore[union-attr]
        model_response.choices[0].finish_reason = "stop"
        model_response.model = MODEL_VERSION
        prompt = sum(_tokens(str(m.get("content", ""))) for m in messages)
        model_response.usage = Usage(  # type: ignore[attr-defined]
            prompt_tokens=prompt, completion_tokens=_tokens(content), total_tokens=prompt + _tokens(content)
        )
        return model_response

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> ModelResponse:  # type: ignore[override]
        return self.completion(model, messages, *args, **kwargs)

    def streaming(
        self, model: str, messages: list, *args: Any, **kwargs: Any
    ) -> Iterator[GenericStreamingChunk]:  # type: ignore[override]
        content = answer(messages)
        prompt = sum(_tokens(str(m.get("content", ""))) for m in messages)
        yield {
            "text": content,
            "is_finished": True,
            "finish_reason": "stop",
            "index": 0,
            "tool_use": None,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": _tokens(content),
                "total_tokens": prompt + _tokens(content),
            },
        }

    async def astreaming(
        self, model: str, messages: list, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:  # type: ignore[override]
        for chunk in self.streaming(model, messages, *args, **kwargs):
            yield chunk


_handler = HeuristicLLM()


def register() -> None:
    """Register the offline provider with litellm (idempotent)."""
    if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": PROVIDER, "custom_handler": _handler},
        ]
