"""Locating a model's evidence quote in the source text (gating.locate)."""

from __future__ import annotations

import re

import pytest

from extraction import gating
from extraction.gating import locate


def test_a_verbatim_quote_is_found_nearest_the_hint() -> None:
    text = "TOTAL 5.00\n" * 3
    evidence = locate(text, "TOTAL 5.00", hint=12)
    assert evidence is not None and (evidence.start, evidence.end) == (11, 21)


@pytest.mark.parametrize("hint", [-8, -100, 10**12])
def test_a_hint_outside_the_text_is_ignored(hint: int) -> None:
    # -8 made str.startswith look 8 characters from the end, and Evidence(start=-8) then failed the run.
    evidence = locate("Total: 5.00 EUR", "5.00 EUR", hint=hint)
    assert evidence is not None and (evidence.start, evidence.end) == (7, 15)


@pytest.mark.parametrize(
    ("text", "quote", "found"),
    [
        (
            "x " * 100 + "Total   Due:\n 12.50 EUR" + " y" * 100,
            "total due: 12.50 eur",
            "Total   Due:\n 12.50 EUR",
        ),
        # its longest token is everywhere, but "end" is rare: the match far into the text is still found
        ("word " * 1000 + "word word word end here", "WORD  word\nword end", "word word word end"),
        # every token common: the whole text is searched
        ("Word " * 1000, "word word", "Word Word"),
    ],
)
def test_a_quote_differing_in_case_and_whitespace_is_found(text: str, quote: str, found: str) -> None:
    evidence = locate(text, quote)
    assert evidence is not None and evidence.text == found
    assert text[evidence.start : evidence.end] == found


def test_a_long_quote_that_is_not_there_is_not_searched_for_at_every_word(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Searching the whole text took 1.2 s here (every "word" restarts the pattern), with the event loop blocked.
    searched: list[tuple[int, int]] = []
    compile_ = re.compile

    class Spy:
        def __init__(self, pattern: re.Pattern[str]) -> None:
            self.pattern = pattern

        def search(self, text: str, pos: int = 0, endpos: int = 2**62) -> re.Match[str] | None:
            searched.append((pos, min(endpos, len(text))))
            return self.pattern.search(text, pos, endpos)

    monkeypatch.setattr(
        gating.re, "compile", lambda p, *f: Spy(compile_(p, *f)) if r"\s*" in p else compile_(p, *f)
    )
    text = "word " * 200_000
    assert locate(text, "word " * 198 + "nomatch") is None
    assert searched == []  # "nomatch" is nowhere: no pattern search at all
    text += "word word here"
    assert locate(text, "Word word HERE") is not None
    assert all(end - start < 1000 for start, end in searched)  # only a window around the rare "here"
