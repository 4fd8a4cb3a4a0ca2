"""PII redaction for stored prompts (never for what is sent: the model needs the text to extract from it).

Patterns: e-mail addresses, phone numbers, payment card numbers (Luhn-checked, so invoice numbers and
amounts survive), IBANs and long account numbers, US SSNs and similar national ids.
"""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_NATIONAL = re.compile(r"\b\d{6}-\d{2}-\d{4}\b")  # e.g. Malaysian MyKad
_PHONE = re.compile(
    r"(?<![\w/.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}[ .-]\d{3,4}[ .-]?\d{0,4}(?![\w/.-])"
)
_ACCOUNT = re.compile(r"(?i)\b(?:account|acct|a/c)(?: no\.?| number| #)?[: ]*\d[\d -]{6,20}\d\b")


def _luhn(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn(digits) else m.group(0)


def redact(text: str) -> str:
    """Return `text` with personal data replaced by [EMAIL], [PHONE], [CARD], [IBAN], [ACCOUNT], [ID]."""
    text = _EMAIL.sub("[EMAIL]", text)
    text = _IBAN.sub("[IBAN]", text)
    text = _CARD.sub(_card, text)
    text = _ACCOUNT.sub("[ACCOUNT]", text)
    text = _SSN.sub("[ID]", text)
    text = _NATIONAL.sub("[ID]", text)
    return _PHONE.sub(lambda m: "[PHONE]" if sum(c.isdigit() for c in m.group(0)) >= 8 else m.group(0), text)
