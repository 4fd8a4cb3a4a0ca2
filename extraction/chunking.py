"""Split a document that does not fit a model's context into overlapping chunks, and merge the answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # offset of the chunk in the full text
    end: int
    text: str


def split(text: str, *, max_tokens: int, overlap_tokens: int, count: Callable[[str], int]) -> list[Chunk]:
    """Split `text` into chunks of at most about `max_tokens`, each overlapping the previous one.

    Token counts are estimated from the whole text's chars-per-token ratio (one tokenizer call, not one per
    candidate cut), with a 10 % safety margin; cuts prefer a line break near the target.
    """
    total = max(1, count(text))
    if total <= max_tokens:
        return [Chunk(0, 0, len(text), text)]
    chars_per_token = len(text) / total
    size = max(200, int(max_tokens * chars_per_token * 0.9))
    overlap = min(size // 2, int(overlap_tokens * chars_per_token))
    chunks: list[Chunk] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = text.rfind("\n", start + size // 2, end)
            if cut > start:
                end = cut + 1
        chunks.append(Chunk(len(chunks), start, end, text[start:end]))
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return chunks
