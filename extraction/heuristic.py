"""The built-in offline model: labels, typed patterns and layout, no network and no machine learning.

It is the product's default model, so the demo and the tests run offline, and it answers the same three
tasks any model gets (``classify``, ``extract``, ``verify``) with plain JSON-able dicts.

How extraction works
--------------------
The text (at most ``MAX_SCAN_CHARS``) is split into lines. Every line is scanned once for *labels* from
a multilingual lexicon ("Invoice No", "Rechnungsdatum", "Total TTC", "Bill To", ...) plus each field's own
name ("invoice_date" -> "invoice date"). Overlapping labels resolve leftmost-longest, and noise labels
("Total Qty", "GST Reg No", "Cash", "Change", ...) occupy their span so nothing else matches there. Each
field then collects *candidates*:

* labelled: a value of the field's type in the line region after the label (up to the next label), or,
  when that region is empty, in the next line - under the label's column for table headers, or at the
  start of the line for "label on its own line" layouts;
* typed patterns without a label (dates, amounts, e-mails, IBANs...) as a fallback when no labelled
  candidate exists;
* layout rules for names and addresses: header lines, legal suffixes (Sdn Bhd, Ltd, GmbH, B.V. ...),
  street words and postcodes, and a penalty for blocks that follow "Bill To"/"Customer" labels;
* cue phrases for "paid" ("PAID", "payment received" vs "unpaid", "balance due 12.00", "please remit");
* currency symbols and codes for currency fields.

Confidence
----------
Every candidate gets an evidence score

    z = B0 + W_LABEL*label + W_NEAR*proximity + W_CLEAN*clean + W_PRIOR*prior

label      label strength: 1.0 the field's own name, 0.3-0.95 a synonym (by how specific it is), 0 none
proximity  where the value sits: 1.0 same line as the label, 0.8 under it in a table, 0.6 on the next line,
           0 no label (for currency symbols, 1.0: the symbol is attached to an amount)
clean      how well the text reads as the type: a two-decimal amount or an unambiguous date is 1.0, a
           bare integer amount 0.3, a day/month order only guessed 0.7, prose between label and value less
prior      kind-specific context, roughly -3..3.5: position on the page (totals late, names early),
           legal suffixes, "after Bill To" penalties, the largest of several totals, a date that is the
           only one in the document ...

Candidates with the same normalised value are grouped. A group scores g = z_best + W_SUPPORT*ln(n), its
best candidate's score plus a bonus for n agreeing candidates at distinct places. The value of the
highest-scoring group g* is returned with

    confidence = sigmoid(g*) * exp(g*/T) / sum_j exp(g_j/T)      (j over all groups, the chosen one included)

that is, the chance that the best-supported reading is right at all, times its share among the competing
readings (T = T_CONFLICT). A close competitor with another value halves the confidence; far weaker ones
barely matter; several agreeing places raise it. The weights below were set by hand and checked with
``bench/heuristic_calibration.py`` on the samples and on degraded copies of them. A field with no
candidate gets value None and a low confidence (MISSING_CONFIDENCE: lower when required, lowest when a
label was seen but no readable value followed it), so it goes to review.

Safety: only the first ``MAX_SCAN_CHARS`` characters and ``_MAX_LINE`` characters of each line are
scanned, and every pattern is linear (no nested unbounded repetition), so hostile input cannot blow up.
"""

from __future__ import annotations

import bisect
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from .normalize import (
    CURRENCY_CODES,
    MONTHS,
    InvalidValue,
    currency_code,
    display,
    normalize,
    parse_money,
    values_equal,
)
from .schemas import DocumentSchema, FieldSpec, FieldType

__all__ = ["MAX_SCAN_CHARS", "classify", "extract", "verify"]

MAX_SCAN_CHARS = 200_000
_MAX_LINE = 2_000
_MAX_LINES = 20_000  # lines beyond this are not scanned (bounds the work on pathological input)
_MAX_CANDIDATES = 500  # per field, for the same reason

# Confidence model (see module docstring).
B0 = -2.5
W_LABEL = 2.5
W_NEAR = 1.5
W_CLEAN = 2.0
W_PRIOR = 1.0
W_SUPPORT = 0.6
T_CONFLICT = 0.5
# No candidate at all: an optional field that is simply absent is a plausible None, a required one is not,
# and a label that was seen without a readable value means the value is there but unread.
MISSING_CONFIDENCE = {"required": 0.08, "optional": 0.4, "label_seen": 0.05}


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def _vocab(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _vocab_phrases(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split("|") if p.strip())


# --------------------------------------------------------------------------------------------------
# Lexicon: kind -> (phrase, weight). Phrases are matched case-insensitively on word boundaries, spaces and
# hyphens inside them are optional ("sub total" matches "Subtotal" and "Sub-Total"). A "re:" prefix marks
# a raw regular expression. Weight says how specific the label is for that kind.

_LEXICON: dict[str, tuple[tuple[str, float], ...]] = {
    "total": (
        ("total", 0.8),
        ("grand total", 0.95),
        ("total amount", 0.9),
        ("amount due", 0.85),
        ("balance due", 0.85),
        ("total due", 0.9),
        ("total payable", 0.9),
        ("amount payable", 0.85),
        ("total to pay", 0.9),
        ("to pay", 0.5),
        ("total ttc", 0.9),
        ("montant total", 0.85),
        ("montant ttc", 0.85),
        ("net à payer", 0.85),
        ("total a pagar", 0.85),
        ("importe total", 0.85),
        ("summe", 0.7),
        ("gesamtbetrag", 0.85),
        ("rechnungsbetrag", 0.85),
        ("endbetrag", 0.85),
        ("gesamtsumme", 0.85),
        ("zu zahlen", 0.7),
        ("gesamt", 0.5),
        ("totaal", 0.75),
        ("te betalen", 0.75),
        ("jumlah", 0.6),
        ("jumlah besar", 0.8),
        ("nett total", 0.8),
        ("total rounded", 0.9),
        ("rounded total", 0.9),
        (r"re:total\s*(?:sales\s*)?\(?\s*incl\w*\.?(?:\s*(?:gst|vat|tax|sst|mwst))?\s*\)?", 0.85),
        (r"re:total\s*after\s*adj\w*\.?(?:\s*incl\w*\.?(?:\s*(?:gst|vat|tax|sst))?)?", 0.9),
    ),
    "subtotal": (
        ("subtotal", 0.9),
        ("sub total", 0.9),
        ("net total", 0.8),
        ("total net", 0.75),
        ("net amount", 0.75),
        ("total before tax", 0.85),
        ("amount before tax", 0.8),
        ("total ht", 0.85),
        ("montant ht", 0.85),
        ("nettobetrag", 0.85),
        ("zwischensumme", 0.85),
        ("summe netto", 0.85),
        ("nettosumme", 0.85),
        ("subtotaal", 0.85),
        ("base imponible", 0.8),
        ("jumlah kecil", 0.7),
        (r"re:total\s*(?:sales\s*)?\(?\s*excl\w*\.?(?:\s*(?:gst|vat|tax|sst|mwst))?\s*\)?", 0.85),
    ),
    "tax": (
        ("tax", 0.8),
        ("sales tax", 0.9),
        ("service tax", 0.9),
        ("tax amount", 0.9),
        ("total tax", 0.9),
        ("vat", 0.85),
        ("vat amount", 0.9),
        ("gst", 0.85),
        ("sst", 0.85),
        ("mwst", 0.85),
        ("ust", 0.8),
        ("umsatzsteuer", 0.85),
        ("mehrwertsteuer", 0.85),
        ("steuer", 0.6),
        ("tva", 0.85),
        ("iva", 0.85),
        ("btw", 0.85),
        ("cukai", 0.7),
    ),
    "date": (
        ("date", 0.7),
        ("invoice date", 0.95),
        ("date of issue", 0.9),
        ("issue date", 0.9),
        ("issued", 0.7),
        ("issued on", 0.75),
        ("dated", 0.7),
        ("bill date", 0.85),
        ("receipt date", 0.9),
        ("transaction date", 0.85),
        ("datum", 0.7),
        ("rechnungsdatum", 0.95),
        ("belegdatum", 0.9),
        ("date de facture", 0.95),
        ("date facture", 0.95),
        ("fecha", 0.7),
        ("fecha de factura", 0.95),
        ("factuurdatum", 0.95),
        ("tarikh", 0.7),
        ("tarikh invois", 0.95),
    ),
    "due_date": (
        ("due date", 0.95),
        ("payment due", 0.9),
        ("due", 0.6),
        ("due by", 0.85),
        ("due on", 0.85),
        ("pay by", 0.8),
        ("payable by", 0.8),
        ("zahlungsziel", 0.85),
        ("fällig", 0.8),
        ("fällig am", 0.9),
        ("fälligkeitsdatum", 0.95),
        ("zahlbar bis", 0.85),
        ("bis zum", 0.45),
        ("échéance", 0.85),
        ("date d'échéance", 0.95),
        ("vencimiento", 0.85),
        ("fecha de vencimiento", 0.95),
        ("vervaldatum", 0.95),
        ("tarikh akhir", 0.8),
    ),
    # Bank details: their digits look like dates and amounts ("sort code 11-22-33").
    "bank": tuple(
        (p, 1.0) for p in ("account", "account no", "account number", "sort code", "bsb", "routing number")
    ),
    # Dates that are neither the issue date nor the due date.
    "other_date": tuple(
        (p, 1.0)
        for p in (
            "leistungszeitraum",
            "lieferdatum",
            "service period",
            "period",
            "delivery date",
            "order date",
            "ship date",
            "valid until",
            "expiry",
            "expires",
            "date of birth",
            "payment received",
        )
    ),
    "doc_number": (
        ("invoice number", 0.95),
        ("invoice no", 0.95),
        ("invoice nr", 0.95),
        ("invoice #", 0.95),
        ("invoice id", 0.9),
        ("inv no", 0.85),
        ("inv #", 0.85),
        ("invoice", 0.45),
        ("bill no", 0.8),
        ("receipt no", 0.8),
        ("receipt #", 0.8),
        ("rcpt #", 0.75),
        ("rcpt no", 0.75),
        ("document no", 0.75),
        ("doc no", 0.7),
        ("ref", 0.4),
        ("reference", 0.45),
        ("no", 0.35),
        ("number", 0.35),
        ("rechnungsnummer", 0.95),
        ("rechnungsnr", 0.95),
        ("rechnung nr", 0.95),
        ("re-nr", 0.85),
        ("rechnung", 0.45),
        ("facture n°", 0.95),
        ("n° de facture", 0.95),
        ("numéro de facture", 0.95),
        ("facture", 0.45),
        ("factura n°", 0.95),
        ("número de factura", 0.95),
        ("factura", 0.45),
        ("factuurnummer", 0.95),
        ("factuur", 0.45),
        ("no. invois", 0.9),
        ("nombor invois", 0.9),
        ("invois", 0.45),
    ),
    "vendor": (
        ("vendor", 0.9),
        ("supplier", 0.9),
        ("seller", 0.9),
        ("merchant", 0.85),
        ("sold by", 0.85),
        ("issued by", 0.8),
        ("company", 0.6),
        ("company name", 0.85),
        ("bill from", 0.85),
        ("payee", 0.7),
        ("lieferant", 0.85),
        ("verkäufer", 0.85),
        ("fournisseur", 0.85),
        ("vendeur", 0.85),
        ("proveedor", 0.85),
        ("leverancier", 0.85),
        ("pembekal", 0.85),
    ),
    "customer": (
        ("bill to", 1.0),
        ("billed to", 1.0),
        ("invoice to", 1.0),
        ("invoiced to", 1.0),
        ("ship to", 1.0),
        ("sold to", 1.0),
        ("deliver to", 1.0),
        ("customer", 0.8),
        ("client", 0.8),
        ("buyer", 0.8),
        ("recipient", 0.8),
        ("attention", 0.6),
        ("attn", 0.6),
        ("rechnungsempfänger", 1.0),
        ("kunde", 0.8),
        ("empfänger", 0.8),
        ("facturé à", 1.0),
        ("cliente", 0.8),
        ("klant", 0.8),
        ("pelanggan", 0.8),
    ),
    "address": (
        ("address", 0.9),
        ("addr", 0.8),
        ("adresse", 0.9),
        ("anschrift", 0.9),
        ("dirección", 0.9),
        ("adres", 0.9),
        ("alamat", 0.9),
    ),
    "currency": (
        ("currency", 0.95),
        ("währung", 0.95),
        ("devise", 0.9),
        ("moneda", 0.9),
        ("valuta", 0.9),
        ("mata wang", 0.9),
    ),
    "email": (("email", 0.9), ("e-mail", 0.9), ("mail", 0.6)),
    "phone": (
        ("tel", 0.85),
        ("phone", 0.9),
        ("telephone", 0.9),
        ("mobile", 0.85),
        ("fax", 0.5),
        ("telefon", 0.9),
        ("tél", 0.9),
        ("hp", 0.5),
    ),
    "iban": (("iban", 1.0),),
    "tax_id": (
        ("vat no", 0.9),
        ("vat reg no", 0.95),
        ("vat reg", 0.9),
        ("vat number", 0.9),
        ("vat id", 0.9),
        ("gst id", 0.9),
        ("gst id no", 0.95),
        ("gst reg no", 0.95),
        ("gst no", 0.9),
        ("sst reg no", 0.95),
        ("tax id", 0.9),
        ("tax no", 0.85),
        ("ust-idnr", 0.95),
        ("ust-id", 0.9),
        ("steuernummer", 0.9),
        ("n° tva", 0.9),
        ("tva intracom", 0.9),
        ("btw-nummer", 0.9),
        ("btw nr", 0.9),
        ("nif", 0.7),
        ("tin", 0.6),
    ),
    # Labels that mean "something else is here": they block other kinds from matching inside them and
    # end the region of the label before them.
    "noise": tuple(
        (p, 1.0)
        for p in (
            "total qty",
            "total quantity",
            "total items",
            "total item",
            "total discount",
            "total savings",
            "you saved",
            "tax invoice",
            "simplified tax invoice",
            "co reg",
            "co. reg",
            "co. no",
            "co no",
            "company no",
            "company reg",
            "reg no",
            "registration no",
            "customer ref",
            "customer no",
            "customer number",
            "customer id",
            "kundennummer",
            "kunden-nr",
            "order no",
            "order number",
            "po number",
            "po no",
            "cash",
            "change",
            "tendered",
            "rounding",
            "rounding adj",
            "rounding adjustment",
            "card",
            "visa",
            "mastercard",
            "amount paid",
            "time",
            "uhrzeit",
            "table",
            "cashier",
            "served by",
            "serveur",
            "kasse",
            "till",
            "bon-nr",
            "trans",
            "auth code",
            "terms",
            "payment terms",
            "geg",
            "gegeben",
            "rückgeld",
            "rendu",
            "qty",
            "quantity",
            "unit price",
            "price",
            "rate",
            "hours",
            "description",
            "item",
            "items",
            "menge",
            "einzelpreis",
            "pos",
            "page",
            "seite",
            "siret",
            "kvk",
            "hrb",
            "bic",
            "swift",
            "iban",
        )
    ),
}

_MONEY_KINDS = frozenset({"total", "subtotal", "tax"})
_GREETING = re.compile(
    r"\b(?:welcome|thank\s+you|thanks|selamat\s+datang|terima\s+kasih|willkommen|bienvenue|bienvenido|"
    r"welkom|merci|danke|gracias|have\s+a\s+nice\s+day)\b",
    re.I,
)
_NOT_NAME_KINDS = frozenset({"phone", "email", "tax_id", "iban", "noise", "date", "due_date", "bank"})
_TITLE_WORDS = re.compile(
    r"\b(?:invoice|receipt|tax\s+invoice|rechnung|quittung|kassenbon|facture|factura|factuur|invois|resit|"
    r"statement|quotation|quote|bill|credit\s+note|delivery\s+note|sale\s+receipt|page)\b",
    re.I,
)


@dataclass(frozen=True, slots=True)
class _Label:
    kind: str
    phrase: str
    weight: float
    start: int  # offsets within the line
    end: int


_TOKEN_RE = re.compile(r"[^\W_]+|[#°]")
_TOKEN_GAP = re.compile(r"[\s\-.']*")
_OCR_DIGITS = str.maketrans("015", "ols")


def _phrase_tokens(phrase: str) -> tuple[str, ...]:
    return tuple(t.casefold() for t in _TOKEN_RE.findall(phrase))


class _LabelIndex:
    """Find lexicon labels in a line: a token lookup (fast on any text) plus a few regex labels.

    Plain phrases match as consecutive word tokens separated by nothing but spaces, hyphens, dots or
    apostrophes, so "sub total" matches "Sub-Total" and "invoice #" matches "Invoice#". Overlaps resolve
    leftmost-longest.
    """

    def __init__(self, entries: Sequence[tuple[str, str, float]]) -> None:
        self.by_first: dict[str, list[tuple[tuple[str, ...], str, str, float]]] = {}
        self.regexes: list[tuple[re.Pattern[str], str, str, float]] = []
        for kind, phrase, weight in entries:
            if phrase.startswith("re:"):
                self.regexes.append((re.compile(phrase[3:], re.I), kind, phrase, weight))
                continue
            toks = _phrase_tokens(phrase)
            if toks:
                self.by_first.setdefault(toks[0], []).append((toks, kind, phrase, weight))
        for options in self.by_first.values():
            options.sort(key=lambda o: -len(o[0]))  # longest phrase first; lexicon before field names

    def _match_at(
        self, line: str, tokens: list[tuple[str, str, int, int]], i: int, first: str
    ) -> tuple[str, str, float, int] | None:
        """Return (kind, phrase, weight, end) of the longest phrase starting at token i, or None."""
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        for toks, kind, phrase, weight in self.by_first.get(first, ()):
            n = len(toks)
            if i + n > len(tokens):
                continue
            if n > 1 and following is not None and toks[1] != following[0] and toks[1] != following[1]:
                continue  # cheap reject on the second word before the full comparison
            words = tokens[i : i + n]
            if not all(w[0] == t or w[1] == t for w, t in zip(words, toks, strict=True)):
                continue
            if not all(_TOKEN_GAP.fullmatch(line, words[k - 1][3], words[k][2]) for k in range(1, n)):
                continue
            exact = all(w[0] == t for w, t in zip(words, toks, strict=True))
            return kind, phrase, weight if exact else 0.8 * weight, words[-1][3]
        return None

    def scan(self, line: str) -> list[_Label]:
        tokens = []
        for m in _TOKEN_RE.finditer(line):
            tok = m.group(0).casefold()
            # OCR confuses O/0, l/1 and S/5 ("T0TAL", "GST N0"); a token mixing letters and digits is
            # also tried with the letters, at a lower weight.
            ocr = tok.translate(_OCR_DIGITS) if not tok.isalpha() and not tok.isdigit() else tok
            tokens.append((tok, ocr, m.start(), m.end()))
        found: list[_Label] = []
        for i, (tok, ocr, start, _) in enumerate(tokens):
            for first in (tok, ocr) if ocr != tok else (tok,):
                match = self._match_at(line, tokens, i, first)
                if match is not None:
                    kind, phrase, weight, end = match
                    found.append(_Label(kind, phrase, weight, start, end))
                    break
        if self.regexes and "total" in line.casefold():
            for pattern, kind, phrase, weight in self.regexes:
                for m in pattern.finditer(line):
                    if m.end() > m.start() and (m.start() == 0 or not line[m.start() - 1].isalnum()):
                        found.append(_Label(kind, phrase, weight, m.start(), m.end()))
        found.sort(key=lambda lab: (lab.start, -(lab.end - lab.start)))
        out: list[_Label] = []
        for lab in found:
            if out and lab.start < out[-1].end:
                continue
            out.append(lab)
        return out


@lru_cache(maxsize=64)
def _label_index(extra: tuple[tuple[str, str], ...]) -> _LabelIndex:
    """Return the label index of the lexicon plus `extra` (kind, phrase) labels (the fields' own names)."""
    entries = [(kind, phrase, weight) for kind, items in _LEXICON.items() for phrase, weight in items]
    entries += [(kind, phrase, 1.0) for kind, phrase in extra]
    return _LabelIndex(entries)


# --------------------------------------------------------------------------------------------------
# Typed value patterns (all linear: bounded repetition or unambiguous delimiters)

# Codes that are also words or abbreviations ("TRY", "PEN", "MAD", and "BHD" for Berhad on Malaysian
# receipts) are left out: in running text they are far more often not a currency.
_TEXT_CODES = sorted(
    CURRENCY_CODES - {"TRY", "PEN", "MAD", "BHD", "COP", "RON", "ARS", "ILS", "ALL", "OMR", "UAH"}
)
_CUR_TOKEN = (
    r"(?:US\$|NZ\$|HK\$|S\$|A\$|C\$|R\$|[$€£¥₹]|(?<![^\W\d_])(?:RM|Rp|"
    + "|".join(_TEXT_CODES)
    + r")(?![^\W\d_]))"
)
_CUR_RE = re.compile(_CUR_TOKEN)
_AMOUNT_RE = re.compile(
    r"(?<![\d.,/:_])[-\u2212]?(?:\d{1,3}(?:[,.'\u00a0\u202f]\d{3})+(?:[.,]\d{1,2})?|\d+[.,]\d{1,3}|\d+)"
    r"(?![\d/:]|[.,]\d|\s?%|[^\W\d_])"
)
_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,6}")
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,5}\)[\s.-]?)?\d{2,5}(?:[\s.-]\d{2,5}){1,4}(?!\w)"
)
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}(?:\s?[A-Z0-9]{1,3})?\b")
_TAXID_RE = re.compile(r"\b(?:[A-Z]{2}\s?)?\d[\dA-Z\s-]{5,18}[\dA-Z]\b")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-/_.]{0,39}")
_NUMERIC_DATE = re.compile(r"(?<![\d.,/-])(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})(?![\d/-]|\.\d)")
_MONTH_ALT = "|".join(sorted((re.escape(m) for m in MONTHS), key=len, reverse=True))
_DATE_RE = re.compile(
    r"(?<![\w.-])(?:"
    r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?![\d])"
    r"|\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})(?![\d/-]|\.\d)"
    rf"|\d{{1,2}}(?:st|nd|rd|th|er)?\.?(?:\s+de|\s+of)?[\s-]+(?:{_MONTH_ALT})\.?,?(?:\s+de)?[\s-]+\d{{4}}(?!\d)"
    rf"|\d{{1,2}}(?:st|nd|rd|th|er)?\.?(?:\s+de|\s+of)?[\s-]+(?:{_MONTH_ALT})\.?[\s-]+\d{{2}}(?![\d:])"
    rf"|(?:{_MONTH_ALT})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}(?!\d)"
    r")",
    re.I,
)
_US_STATE_ZIP = re.compile(
    r"\b(?:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|"
    r"NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC)\s+\d{5}(?:-\d{4})?\b"
)

_SUFFIX_LONG = re.compile(
    r"(?<![^\W_])(?:sdn\.?\s*bhd\.?|s/b|berhad|bhd\.?|ltd\.?|limited|llc|l\.l\.c\.|inc\.?|incorporated|"
    r"corp\.?|corporation|co\.,?\s*ltd\.?|gmbh(?:\s*&\s*co\.?\s*kg)?|pty\.?\s*ltd\.?|pte\.?\s*ltd\.?|plc|llp|"
    r"s\.a\.s\.?|s\.a\.|s\.à\s*r\.l\.?|sarl|s\.r\.l\.|srl|s\.l\.|s\.p\.a\.|b\.v\.|n\.v\.|e\.k\.|"
    r"sp\.\s*z\s*o\.o\.)(?![^\W_])\.?",
    re.I,
)
# Short forms only in capitals and at the end of a name: "sa", "ab" are ordinary words in lower case.
_SUFFIX_SHORT = re.compile(
    r"(?<![^\W_])(?:AG|KG|SA|SAS|BV|NV|AB|A/S|ApS|Oy|UG|OHG)(?=\s*(?:$|[,;(·|]|\s{2,}))"
)
_WEAK_SUFFIX = re.compile(r"(?<![^\W_])(?:enterprises?|trading|holdings|group)(?![^\W_])", re.I)


def _legal_suffix(text: str) -> re.Match[str] | None:
    """Return the first legal-form suffix ("Sdn Bhd", "Ltd", "GmbH", "B.V.", "AG" ...) in a line."""
    found = [m for m in (_SUFFIX_LONG.search(text), _SUFFIX_SHORT.search(text)) if m]
    return min(found, key=lambda m: m.start()) if found else None


_STREET = re.compile(
    r"(?<![^\W_])(?:jalan|jln|lorong|lrg|taman|tmn|persiaran|lebuh|lebuhraya|seksyen|dataran|bandar|kampung|"
    r"street|st\.|st(?=,|\s*$)|road|rd\.?|avenue|ave\.?|boulevard|blvd\.?|lane|drive|way|court|place|square|row|quay|"
    r"terrace|highway|hwy|parkway|suite|unit|floor|level|lot|building|bldg|plaza|"
    r"straße|strasse|str\.|weg|platz|allee|gasse|rue|chemin|calle|avenida|carrer|straat|laan|plein|gracht|"
    r"via|piazza|corso)(?![^\W_])"
    r"|[^\W\d_]{3,}(?:straße|strasse|str\.|weg|platz|allee|gasse|straat|laan|gracht)(?![^\W_])",
    re.I,
)
_POSTCODE = re.compile(
    r"(?<![\w-])\d{5}(?![\w-])"
    r"|\b[A-Z]{2}\s+\d{5}(?:-\d{4})?\b"
    r"|\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b"
    r"|\b\d{4}\s?[A-Z]{2}\b"
    r"|(?<![\w-])\d{4}\s+[A-Z][a-z]{2,}"
)
_HOUSE_NUMBER = re.compile(
    r"^\s*(?:no\.?\s*)?\d{1,5}[A-Za-z]?(?:[-/]\d{1,4}[A-Za-z]?)?,?\s+[^\W\d_]"
    r"|[^\W\d_]{3,}\s+\d{1,5}[a-z]?\s*$"
    r"|(?<![^\W_])(?:no|lot|unit)\.?\s*\d",
    re.I,
)
_ADDRESS_STOP = re.compile(
    r"(?<![^\W_])(?:tel|phone|fax|mobile|hp|e-?mail|www|http|gst|vat|sst|reg|tax|ust|siret|tva|kvk|invoice|"
    r"receipt|date|datum|iban|bic|co\.?\s*no|cashier|table|store|till)(?![^\W_])|@|\(\d{3}\)\s*\d{3}",
    re.I,
)
_HEADERISH = re.compile(
    r"^(?:from|to|cc|bcc|subject|date|reply-to|message-id|mime-version|content-[\w-]+|sent|received)\s*:",
    re.I,
)


# --------------------------------------------------------------------------------------------------
# Document model


@dataclass(slots=True)
class _Line:
    index: int
    start: int  # offset of the line in the text
    text: str  # at most _MAX_LINE characters


class _Doc:
    """The scanned text: lines with offsets, labels per line, date order and currency context."""

    def __init__(self, text: str, extra_labels: Iterable[tuple[str, str]] = ()) -> None:
        self.text = text[:MAX_SCAN_CHARS]
        self.lines: list[_Line] = []
        pos = 0
        for i, raw in enumerate(self.text.split("\n", _MAX_LINES)[:_MAX_LINES]):
            body = raw[:_MAX_LINE]
            self.lines.append(_Line(i, pos, body.rstrip("\r")))
            pos += len(raw) + 1
        self.starts = [line.start for line in self.lines]
        self.label_index = _label_index(tuple(sorted(set(extra_labels))))
        self.labels: list[list[_Label]] = [self._scan_labels(line.text) for line in self.lines]
        # Content rank: the n-th non-empty line that is not an e-mail header or a rule, for header priors.
        self.rank: dict[int, int] = {}
        for line in self.lines:
            stripped = line.text.strip()
            if stripped and not _HEADERISH.match(stripped) and re.search(r"[^\W\d_]", stripped):
                self.rank[line.index] = len(self.rank)
        self.dayfirst, self.date_order = self._date_order()
        self.currencies = self._currencies()
        self.customer_lines = self._customer_lines()

    def _scan_labels(self, line: str) -> list[_Label]:
        if not line.strip():
            return []
        out = self.label_index.scan(line)
        # On one line, only the first amount label owns the amount after it: in "Total Sales Incl GST
        # RM 19.89" the GST is part of the total's label, not a tax label.
        kept: list[_Label] = []
        for lab in out:
            prev = next((k for k in reversed(kept) if k.kind in _MONEY_KINDS), None)
            if (
                lab.kind in _MONEY_KINDS
                and prev is not None
                and not _AMOUNT_RE.search(line, prev.end, lab.start)
            ):
                continue
            kept.append(lab)
        return kept

    def _date_order(self) -> tuple[bool, str]:
        """Return (dayfirst, how it was decided) from unambiguous dates and locale signals in the text."""
        day_first = month_first = 0
        for m in _NUMERIC_DATE.finditer(self.text, 0, 50_000):
            a, b = int(m.group(1)), int(m.group(2))
            if 12 < a <= 31 and b <= 12:
                day_first += 1
            elif 12 < b <= 31 and a <= 12:
                month_first += 1
        if day_first != month_first:
            return day_first > month_first, "resolved"
        if _US_STATE_ZIP.search(self.text, 0, 50_000):
            return False, "locale"
        return True, "default"

    def _currencies(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in _CUR_RE.finditer(self.text, 0, 50_000):
            code = currency_code(m.group(0))
            if code:
                counts[code] = counts.get(code, 0) + 1
        return counts

    @property
    def doc_currency(self) -> str | None:
        """Return the currency the document's symbols and codes name, if they all name the same one."""
        codes = set(self.currencies)
        if len(codes) == 1:
            return next(iter(codes))
        return None

    def _customer_lines(self) -> set[int]:
        """Return indexes of lines in blocks introduced by "Bill To", "Customer", "Invoice to" ..."""
        out: set[int] = set()
        for line in self.lines:
            for lab in self.labels[line.index]:
                if lab.kind != "customer" or lab.start > 40:
                    continue
                out.add(line.index)
                j = line.index + 1
                while j < len(self.lines) and j <= line.index + 5 and self.lines[j].text.strip():
                    out.add(j)
                    j += 1
        # German letters start with a one-line sender ("Firma GmbH · Straße 1 · 12345 Ort") right above
        # the recipient's address block.
        for line in self.lines[:60]:
            t = line.text
            if len(re.findall(r"\s[·•|]\s", t)) >= 2 and _legal_suffix(t) and _POSTCODE.search(t):
                j = line.index + 1
                while j < len(self.lines) and j <= line.index + 6 and self.lines[j].text.strip():
                    out.add(j)
                    j += 1
        return out

    def line_of(self, offset: int) -> _Line:
        """Return the line holding a text offset."""
        return self.lines[max(0, bisect.bisect_right(self.starts, offset) - 1)]

    def labels_of(self, kinds: set[str]) -> Iterable[tuple[_Line, _Label]]:
        for line in self.lines:
            for lab in self.labels[line.index]:
                if lab.kind in kinds:
                    yield line, lab

    def region_end(self, line: _Line, lab: _Label) -> int:
        """Return where the value region of a label ends: the next label on the line, or the line end."""
        nxt = [other.start for other in self.labels[line.index] if other.start >= lab.end]
        return min(nxt) if nxt else len(line.text)

    def next_content_line(self, index: int) -> _Line | None:
        for j in range(index + 1, min(index + 3, len(self.lines))):
            if self.lines[j].text.strip():
                return self.lines[j]
        return None


# --------------------------------------------------------------------------------------------------
# Candidates


@dataclass(slots=True)
class _Cand:
    value: Any
    start: int  # absolute evidence span
    end: int
    label: float = 0.0
    near: float = 0.0
    clean: float = 1.0
    prior: float = 0.0
    note: str = ""

    @property
    def z(self) -> float:
        return B0 + W_LABEL * self.label + W_NEAR * self.near + W_CLEAN * self.clean + W_PRIOR * self.prior


@dataclass(slots=True)
class _Found:
    """A typed value found in a piece of line text (offsets within the line)."""

    start: int
    end: int
    value: Any
    clean: float
    amount: Decimal | None = None


_NEAR = {"same": 1.0, "column": 0.8, "next": 0.6}


def _money_in(doc: _Doc, line: _Line, lo: int, hi: int) -> list[_Found]:
    """Return the amounts in line.text[lo:hi] with their attached currency (and the line's/document's)."""
    text = line.text
    out: list[_Found] = []
    line_cur = {currency_code(m.group(0)) for m in _CUR_RE.finditer(text)} - {None}
    for m in _AMOUNT_RE.finditer(text, lo, hi):
        s, e = m.start(), m.end()
        before = text[max(lo, s - 8) : s]
        if re.search(r"[@x\u00d7]\s*$", before, re.I) or re.match(r"\s*/", text[e : e + 2]):
            continue  # "2 @ 1.20", "x 1,50 EUR/kg", "0.69/lb": unit prices, not amounts
        cur = None
        left = re.search(_CUR_TOKEN + r"\s{0,3}[-\u2212(]?$", text[max(lo, s - 12) : s])
        if left:
            s2 = max(lo, s - 12) + left.start()
            cur, s = currency_code(left.group(0).strip(" -\u2212(")), s2
        right = re.match(r"\s?" + _CUR_TOKEN, text[e : min(hi, e + 5)])
        if right and cur is None:
            cur, e = currency_code(right.group(0).strip()), e + right.end()
        try:
            amount, _ = parse_money(m.group(0))
        except InvalidValue:
            continue
        decimals = re.search(r"[.,]\d{2}$", m.group(0)) is not None
        clean = 1.0 if decimals else (0.7 if cur else 0.3)
        if cur is None:
            cur = next(iter(line_cur)) if len(line_cur) == 1 else doc.doc_currency
        value = normalize(_MONEY_SPEC, f"{amount} {cur}" if cur else str(amount))
        out.append(_Found(s, e, value, clean, amount))
    return out


def _dates_in(doc: _Doc, text: str, lo: int, hi: int) -> list[_Found]:
    out = []
    for m in _DATE_RE.finditer(text, lo, hi):
        raw = m.group(0)
        try:
            value = normalize(_DATE_SPEC, raw, dayfirst=doc.dayfirst)
        except InvalidValue:
            continue
        clean = 1.0
        num = _NUMERIC_DATE.fullmatch(raw)
        if num and int(num.group(1)) <= 12 and int(num.group(2)) <= 12 and num.group(1) != num.group(2):
            clean = {"resolved": 0.95, "locale": 0.8, "default": 0.7}[doc.date_order]
        if num and len(num.group(3)) == 2:
            clean -= 0.1  # two-digit years are guessed
        out.append(_Found(m.start(), m.end(), value, clean))
    return out


_NUMBER_RE = re.compile(r"(?<![\w.,/:-])[-\u2212]?(?:\d[\d,.']{0,20}\d|\d)(?![\w/:]|[.,]\d)")


def _numbers_in(text: str, lo: int, hi: int) -> list[_Found]:
    out = []
    for m in _NUMBER_RE.finditer(text, lo, hi):
        try:
            value = normalize(_NUMBER_SPEC, m.group(0).strip())
        except InvalidValue:
            continue
        out.append(_Found(m.start(), m.end(), value, 1.0))
    return out


def _ids_in(text: str, lo: int, hi: int) -> list[_Found]:
    """Return the identifier that starts the region (after separators and "No."/"#"), if any."""
    seg = text[lo:hi]
    m = re.match(r"[\s:\uff1a#.\-\u2013|=]*(?:(?:no|nr|n°|num|number|#)(?![^\W_])[\s.:#]*)?", seg, re.I)
    start = m.end() if m else 0
    idm = _ID_RE.match(seg, start)
    if not idm:
        return []
    token = idm.group(0).rstrip(".,;:-/")
    if not re.search(r"\d", token) or len(token) < 3:
        return []
    if _NUMERIC_DATE.fullmatch(token) or re.fullmatch(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}", token):
        return []
    if re.fullmatch(r"[\d.,]+", token) and re.search(r"[.,]\d{2}$", token):
        return []  # an amount
    clean = 1.0 if re.search(r"[A-Za-z]", token) or re.search(r"[-/]", token) else 0.8
    return [_Found(lo + idm.start(), lo + idm.start() + len(token), token, clean)]


def _text_in(text: str, lo: int, hi: int) -> list[_Found]:
    """Return the text value of a region: after separators, up to a wide column gap."""
    seg = text[lo:hi]
    m = re.match(r"[\s:\uff1a#.\-\u2013|=>]*", seg)
    s = m.end() if m else 0
    if lo > 0 and not re.search(r"[:\uff1a#\-\u2013|=>\t]|\s{2}", seg[:s]):
        return []  # "Company registered in ..." is prose; a label-value pair has a delimiter
    gap = re.search(r"\s{3,}|\t", seg[s:])
    e = s + gap.start() if gap else len(seg.rstrip())
    while e > s and seg[e - 1] in " ,;:|":
        e -= 1
    if e <= s or not re.search(r"[^\W_]", seg[s:e]):
        return []
    return [_Found(lo + s, lo + e, normalize(_TEXT_SPEC, seg[s:e]), 1.0)]


_TEXT_SPEC = FieldSpec(name="t", type=FieldType.TEXT)
_MONEY_SPEC = FieldSpec(name="m", type=FieldType.MONEY)
_DATE_SPEC = FieldSpec(name="d", type=FieldType.DATE)
_NUMBER_SPEC = FieldSpec(name="n", type=FieldType.NUMBER)


# --------------------------------------------------------------------------------------------------
# Field kinds


def _name_phrase(spec: FieldSpec) -> str:
    return " ".join(spec.name.split("_"))


def _field_kind(spec: FieldSpec) -> str:
    """Return the kind of a field: which lexicon labels and which value rules apply to it."""
    toks = set(spec.name.split("_"))
    desc = set(re.findall(r"[a-z]+", spec.description.lower()))
    t = spec.type
    if t == FieldType.DATE:
        if toks & {"due", "deadline", "payable"}:
            return "due_date"
        if toks <= {
            "date",
            "invoice",
            "issue",
            "issued",
            "receipt",
            "document",
            "bill",
            "transaction",
            "purchase",
        }:
            return "date"
        return "generic"
    if t in (FieldType.MONEY, FieldType.NUMBER):
        if "subtotal" in toks or "sub" in toks or ("net" in toks and toks & {"total", "amount"}):
            return "subtotal"
        if toks & {"tax", "vat", "gst", "sst"}:
            return "tax"
        if toks & {"total", "grand"} or spec.name in {"amount", "amount_due", "balance_due", "total_amount"}:
            return "total"
        return "generic"
    if t == FieldType.BOOLEAN:
        return "paid" if "paid" in toks or spec.name in {"is_paid", "payment_status"} else "generic"
    if t == FieldType.ENUM:
        return "currency" if "currency" in toks else "generic"
    if toks & {
        "company",
        "vendor",
        "seller",
        "merchant",
        "supplier",
        "shop",
        "store",
        "issuer",
        "business",
        "payee",
    }:
        return "vendor"
    if "address" in toks:
        return "address"
    if toks & {"email", "mail"}:
        return "email"
    if toks & {"phone", "tel", "telephone", "mobile", "fax"}:
        return "phone"
    if "iban" in toks:
        return "iban"
    if toks & {"vat", "tax", "gst"} and toks & {"id", "number", "no", "reg"}:
        return "tax_id"
    if "currency" in toks:
        return "currency"
    if toks & {"number", "no", "id", "ref", "reference", "nr"} and (
        toks & {"invoice", "receipt", "bill", "document", "doc"}
        or len(toks) == 1
        or desc & {"invoice", "receipt"}
    ):
        return "doc_number"
    return "generic"


# --------------------------------------------------------------------------------------------------
# Candidate generators


_FinderFn = Callable[[_Line, int, int], list[_Found]]


def _finder(doc: _Doc, spec: FieldSpec, kind: str) -> _FinderFn:
    """Return a function(line, lo, hi) -> [_Found] reading values of this field's type."""
    if spec.type == FieldType.MONEY:
        return lambda line, lo, hi: _money_in(doc, line, lo, hi)
    if spec.type == FieldType.DATE:
        return lambda line, lo, hi: _dates_in(doc, line.text, lo, hi)
    if spec.type == FieldType.NUMBER:
        if kind in _MONEY_KINDS:
            return lambda line, lo, hi: [
                _Found(f.start, f.end, normalize(_NUMBER_SPEC, str(f.amount)), f.clean, f.amount)
                for f in _money_in(doc, line, lo, hi)
            ]
        return lambda line, lo, hi: _numbers_in(line.text, lo, hi)
    if spec.type == FieldType.BOOLEAN:
        return lambda line, lo, hi: _bools_in(line.text, lo, hi)
    if spec.type == FieldType.ENUM:
        return lambda line, lo, hi: _choices_in(spec, line.text, lo, hi)
    if kind == "doc_number":
        return lambda line, lo, hi: _ids_in(line.text, lo, hi)
    pattern = {"email": _EMAIL_RE, "phone": _PHONE_RE, "iban": _IBAN_RE, "tax_id": _TAXID_RE}.get(kind)
    if pattern is not None:
        return lambda line, lo, hi: [
            _Found(m.start(), m.end(), normalize(_TEXT_SPEC, m.group(0)), 1.0)
            for m in pattern.finditer(line.text, lo, hi)
        ]
    return lambda line, lo, hi: _text_in(line.text, lo, hi)


def _bools_in(text: str, lo: int, hi: int) -> list[_Found]:
    m = re.match(
        r"[\s:=\-]*(\[\s*[xX✓✔]\s*\]|\[\s*\]|[☑☒✓✔☐]|yes|no|true|false|y|n|ja|nein|oui|non|ya|tidak)(?![^\W_])",
        text[lo:hi],
        re.I,
    )
    if not m:
        return []
    token = m.group(1).lower().replace(" ", "")
    value = token in {"[x]", "[✓]", "[✔]", "☑", "☒", "✓", "✔", "yes", "true", "y", "ja", "oui", "ya"}
    return [_Found(lo + m.start(1), lo + m.end(1), value, 1.0)]


def _choices_in(spec: FieldSpec, text: str, lo: int, hi: int) -> list[_Found]:
    out = []
    for choice in spec.choices:
        for m in re.finditer(r"(?<![^\W_])" + re.escape(choice) + r"(?![^\W_])", text[lo:hi], re.I):
            out.append(_Found(lo + m.start(), lo + m.end(), choice, 1.0))
    out.sort(key=lambda f: f.start)
    return out


def _labelled(
    doc: _Doc, spec: FieldSpec, kind: str, phrase: str, finder: _FinderFn
) -> tuple[list[_Cand], bool]:
    """Return candidates read after labels of this field (same line, table column or next line)."""
    kinds = {kind} if kind != "generic" else set()
    kinds.add("field:" + spec.name)
    out: list[_Cand] = []
    seen_label = False
    for line in doc.lines:
        for lab in doc.labels[line.index]:
            if (lab.kind in kinds or lab.phrase == phrase) and len(out) < _MAX_CANDIDATES:
                out.extend(_read_label(doc, spec, kind, phrase, finder, line, lab))
                seen_label = True
    return out, seen_label


def _read_label(
    doc: _Doc, spec: FieldSpec, kind: str, phrase: str, finder: _FinderFn, line: _Line, lab: _Label
) -> list[_Cand]:
    """Return the candidate read after one label occurrence: same line, table column or next line."""
    weight = 1.0 if lab.phrase == phrase else lab.weight
    hi = doc.region_end(line, lab)
    found = finder(line, lab.end, hi)
    label_text = line.text[lab.start : lab.end].strip()
    if found:
        if kind == "total":
            pick = max(found, key=lambda f: (f.amount or 0, f.start))
        elif kind in _MONEY_KINDS:
            pick = found[-1]  # amounts are right-aligned: the last one on the line is the column value
        else:
            pick = found[0]
        gap = line.text[lab.end : pick.start]
        words = [w for w in re.findall(r"[^\W\d_]{3,}", gap) if currency_code(w) is None]
        if len(words) > 3:
            return []  # prose between label and value: not a label-value pair
        return [
            _Cand(
                pick.value,
                line.start + lab.start,
                line.start + pick.end,
                label=weight,
                near=_NEAR["same"],
                clean=pick.clean
                - 0.15 * len(words)
                - (_ocr_penalty(str(pick.value)) if spec.type == FieldType.TEXT else 0),
                note=f"label '{label_text}' with the value on the same line",
            )
        ]
    rest = line.text[lab.end : hi]
    nxt = doc.next_content_line(line.index)
    if nxt is None or len(re.findall(r"[^\W\d_]{3,}", rest)) > 1:
        return []
    # A label inside a sentence ("please transfer the invoice amount by ...") heads no column.
    before = line.text[: lab.start]
    for other in doc.labels[line.index]:
        if other.end <= lab.start:
            before = before[: other.start] + " " * (other.end - other.start) + before[other.end :]
    if len(re.findall(r"[^\W\d_]{3,}", before)) > 1:
        return []
    found = [f for f in finder(nxt, 0, len(nxt.text)) if f.clean >= 0.7]
    lo_col, hi_col = lab.start - 2, lab.end + 2
    column = [f for f in found if f.start < hi_col and f.end > lo_col]
    if column:
        pick = max(column, key=lambda f: min(f.end, hi_col) - max(f.start, lo_col))
        near, note = _NEAR["column"], f"value under the column label '{label_text}'"
        after = doc.lines[nxt.index + 1] if nxt.index + 1 < len(doc.lines) else None
        if after is not None and any(
            f.start < hi_col and f.end > lo_col for f in finder(after, 0, len(after.text))
        ):
            # The label heads a column of several rows (line items): no row is "the" value.
            if kind in _MONEY_KINDS:
                return []
            pick = _Found(pick.start, pick.end, pick.value, pick.clean - 0.4, pick.amount)
    elif found and not nxt.text[: found[0].start].strip() and not rest.strip(" :.#-\t"):
        pick, near, note = found[0], _NEAR["next"], f"label '{label_text}' with the value on the next line"
    else:
        return []
    return [
        _Cand(
            pick.value,
            nxt.start + pick.start,
            nxt.start + pick.end,
            label=weight,
            near=near,
            clean=pick.clean,
            note=note,
        )
    ]


def _position(doc: _Doc, offset: int) -> float:
    return offset / max(1, len(doc.text))


def _total_priors(doc: _Doc, cands: list[_Cand]) -> None:
    """Totals come late on a page and are the largest of the labelled amounts."""
    if not cands:
        return
    amounts = []
    for c in cands:
        try:
            amounts.append(parse_money(c.value)[0] if isinstance(c.value, str) else Decimal(str(c.value)))
        except (InvalidValue, ValueError, ArithmeticError):
            amounts.append(Decimal(0))
    top = max(amounts)
    order = sorted(range(len(cands)), key=lambda i: cands[i].start)
    for rank, i in enumerate(order):
        c = cands[i]
        c.prior += 0.5 * (rank / max(1, len(cands) - 1) if len(cands) > 1 else 1.0)
        if amounts[i] == top:
            c.prior += 0.3
        if amounts[i] <= 0:
            c.prior -= 1.0


def _unlabelled_dates(doc: _Doc) -> list[_Cand]:
    out: list[_Cand] = []
    blocked = {"due_date", "other_date", "bank", "phone", "tax_id", "iban"}
    for line in doc.lines:
        if any(lab.kind in blocked for lab in doc.labels[line.index]):
            continue
        for f in _dates_in(doc, line.text, 0, len(line.text)):
            out.append(
                _Cand(
                    f.value,
                    line.start + f.start,
                    line.start + f.end,
                    clean=f.clean,
                    note="a date without a label",
                )
            )
    distinct = {c.value for c in out}
    for c in out:
        c.prior += 0.5 * (1 - _position(doc, c.start))  # issue dates sit near the top
        if len(distinct) == 1:
            c.prior += 1.5  # the only date on a receipt is its date
    return out


def _unlabelled_totals(doc: _Doc) -> list[_Cand]:
    out: list[_Cand] = []
    for line in doc.lines:
        if any(lab.kind in {"noise", "subtotal", "tax"} for lab in doc.labels[line.index]):
            continue
        for f in _money_in(doc, line, 0, len(line.text)):
            if f.clean >= 0.7:
                out.append(
                    _Cand(
                        f.value,
                        line.start + f.start,
                        line.start + f.end,
                        clean=f.clean * 0.8,
                        note="an amount without a total label",
                    )
                )
    if out:
        amounts = [parse_money(c.value)[0] for c in out]
        top = max(amounts)
        for c, a in zip(out, amounts, strict=True):
            c.prior += 0.8 if a == top else -0.3
    return out


# ---- names and addresses


# Words that end a name when reading backwards from a legal suffix in capitalised or all-caps prose
# ("THANKS AGAIN FOR CHOOSING ACME INC.").
_PROSE_WORDS = _vocab(
    "for from to by with at via thanks thank you choosing chose again please is are was our your we "
    "pay payable paid made make contact call visit dear hi hello regards"
)


def _company_name(text: str) -> tuple[int, int] | None:
    """Return the span of a company name in a line: the capitalised run ending in a legal suffix, or
    the first column of a header line."""
    m = _legal_suffix(text)
    if m:
        end = m.end()
        tokens = list(re.finditer(r"\S+", text[: m.start()]))
        start = m.start()
        count = 0
        for tok in reversed(tokens):
            word = tok.group(0)
            if word in {"-", "\u2013", "\u2014", "·", "|", "•"} or word.endswith(":") or count >= 8:
                break
            bare = word.strip("(),")
            connector = bare.lower() in {"&", "and", "und", "et", "y", "of", "de", "der", "la", "van", "+"}
            if not (bare[:1].isupper() or bare[:1].isdigit() or connector) or bare.lower() in _PROSE_WORDS:
                break
            start = tok.start()
            count += 1
            if word.startswith("(") and ")" not in word:
                break  # "(Teknologi Cahaya Mas Sdn Bhd)": the name starts inside the parenthesis
        while start < end and text[start] in " (":
            start += 1
        return (start, end) if start < m.start() or count else None
    seg = re.split(r"\s{3,}|\t|\s[·•|]\s", text.strip())[0]
    s = text.find(seg)
    seg2 = re.sub(r"\s*\((?=[^)]*\d)[^)]*\)\s*$", "", seg)  # "(Co. No. 654321-W)": a registration number
    if not re.search(r"[^\W\d_].*[^\W\d_]", seg2):
        return None
    return s, s + len(seg2.rstrip(" ,;"))


_PRICE_END = re.compile(r"\d[.,]\d{2}(?:\s*[A-Z]{1,3})?\s*$")  # "1 Caesar Salad  11.00": a line item


_OCR_SUSPECT = re.compile(r"[^\W\d_][0158][^\W\d_]|(?<![\w])[0158][^\W\d_]{3,}")


def _ocr_penalty(text: str) -> float:
    """Return how much to doubt a text value for OCR digit/letter confusions ("R0TI", "FRI5CHMARKT")."""
    return min(0.7, 0.35 * len(_OCR_SUSPECT.findall(text)))


def _address_score(text: str) -> float:
    t = text.strip()
    if not t or _ADDRESS_STOP.search(t) or _PRICE_END.search(t):
        return -1.0
    score = 0.0
    if _STREET.search(t):
        score += 1.0
    if _POSTCODE.search(t):
        score += 1.0
    if _HOUSE_NUMBER.search(t):
        score += 0.6
    if score == 0 and len(t) <= 35 and len(t.split()) <= 4 and not re.search(r"\d|:", t):
        return 0.3  # a bare town or state line continuing an address ("Falmouth", "JOHOR.")
    return score


def _vendor_candidates(doc: _Doc, spec: FieldSpec, phrase: str) -> tuple[list[_Cand], bool]:
    cands, seen = _labelled(doc, spec, "vendor", phrase, lambda line, lo, hi: _text_in(line.text, lo, hi))
    for c in cands:
        if doc.line_of(c.start).index in doc.customer_lines:
            c.prior -= 2.5
    # Names stand in the letterhead or the footer: scan the first and last lines only.
    for line in doc.lines[:300] + doc.lines[max(300, len(doc.lines) - 60) :]:
        text = line.text
        rank = doc.rank.get(line.index)
        if rank is None:
            continue
        suffix = _legal_suffix(text)
        weak = _WEAK_SUFFIX.search(text)
        if rank > 5 and not suffix:
            continue
        if not suffix and (_TITLE_WORDS.search(text) or _GREETING.search(text) or ":" in text):
            continue
        span = _company_name(text)
        if span is None:
            continue
        s, e = span
        name = text[s:e].strip()
        letters = sum(ch.isalpha() for ch in name)
        if letters < 3 or len(name) > 80:
            continue
        if not suffix and any(lab.kind in _NOT_NAME_KINDS for lab in doc.labels[line.index]):
            continue  # "Tel 512-555-0110", "SIRET 812 ...": a labelled detail, not a name
        prior = {0: 2.0, 1: 1.0, 2: 0.5, 3: 0.2}.get(rank, 0.0)
        notes = []
        if suffix:
            prior += 1.5
            notes.append("legal suffix")
        elif weak:
            prior += 0.4
        if rank <= 3:
            notes.append(f"header line {rank + 1}")
        if line.index in doc.customer_lines:
            prior -= 2.5
            notes.append("but in the customer block")
        if not suffix and _address_score(text) >= 1.0:
            prior -= 1.5
        if sum(ch.isdigit() for ch in name) > 0.25 * len(name):
            prior -= 1.0
        if len(name) < len(text.strip()) * 0.6 and suffix:
            prior -= 0.3  # cut out of a longer line (prose, a footer)
        if ":" in text[:s]:
            prior -= 0.5
        clean = (1.0 if 3 <= len(name) <= 60 else 0.6) - _ocr_penalty(name)
        if sum(not (ch.isalnum() or ch.isspace()) for ch in name) > 0.3 * len(name):
            clean -= 0.4  # "*** SALE ***": decoration rather than a name
        cands.append(
            _Cand(
                normalize(_TEXT_SPEC, name),
                line.start + s,
                line.start + e,
                clean=clean,
                prior=prior,
                note="company name (" + ", ".join(notes or ["top of the document"]) + ")",
            )
        )
    return cands, seen


def _address_candidates(doc: _Doc, spec: FieldSpec, phrase: str) -> tuple[list[_Cand], bool]:
    cands: list[_Cand] = []
    labelled, seen = _labelled(doc, spec, "address", phrase, lambda line, lo, hi: _text_in(line.text, lo, hi))
    starts: list[tuple[int, float, str]] = []  # (line index, label weight, note)
    for line, lab in doc.labels_of({"address", "field:" + spec.name}):
        starts.append((line.index, 1.0 if lab.phrase == phrase else lab.weight, "address label"))
    company_lines = [
        line.index
        for line in doc.lines[:80]
        if doc.rank.get(line.index, 99) <= 1
        or (_legal_suffix(line.text) and doc.rank.get(line.index, 99) < 8)
    ]
    i = 0
    lines = doc.lines
    while i < len(lines):
        line = lines[i]
        rank = doc.rank.get(i)
        labelled_start = next((s for s in starts if s[0] == i), None)
        if rank is None or (rank > 12 and labelled_start is None):
            i += 1
            continue
        score = _address_score(line.text)
        if score < 0.6 and labelled_start is None:
            i += 1
            continue
        block = [i]
        total = max(score, 0.0)
        j = i + 1
        while j < len(lines) and len(block) < 5:
            s = _address_score(lines[j].text)
            if s < 0.3:
                break
            block.append(j)
            total += s
            j += 1
        if labelled_start is not None:
            # "Address: 12 Main St" - the address starts after the label on this line
            lab = next(lab for lab in doc.labels[i] if lab.kind in {"address", "field:" + spec.name})
            first = _text_in(line.text, lab.end, len(line.text))
            a_start = line.start + first[0].start if first else lines[block[-1]].start
        else:
            a_start = line.start + len(line.text) - len(line.text.lstrip())
        last = lines[block[-1]]
        a_end = last.start + len(last.text.rstrip())
        if a_end <= a_start or (total < 1.6 and labelled_start is None):
            i = j
            continue
        prior = 0.0
        notes = []
        if any(0 < i - c <= 3 for c in company_lines):
            prior += 1.5
            notes.append("right below the company name")
        if rank is not None and rank <= 6:
            prior += 0.5
        if i in doc.customer_lines:
            prior -= 2.5
            notes.append("but in the customer block")
        if 2 <= len(block) <= 4:
            prior += 0.3
        clean = min(1.0, total / 2.0) - _ocr_penalty(doc.text[a_start:a_end])
        cands.append(
            _Cand(
                normalize(_TEXT_SPEC, doc.text[a_start:a_end]),
                a_start,
                a_end,
                label=labelled_start[1] if labelled_start else 0.0,
                near=_NEAR["same"] if labelled_start else 0.0,
                clean=clean,
                prior=prior,
                note="address block: street/postcode lines" + (" " + ", ".join(notes) if notes else ""),
            )
        )
        i = j
    if not cands:
        cands = labelled
    return cands, seen


# ---- currency and "paid"


def _currency_candidates(doc: _Doc, spec: FieldSpec, phrase: str) -> tuple[list[_Cand], bool]:
    choices = spec.choices or tuple(sorted(CURRENCY_CODES))
    cands, seen = _labelled(
        doc, spec, "currency", phrase, lambda line, lo, hi: _choices_in(spec, line.text, lo, hi)
    )
    for line in doc.lines:
        if len(cands) >= _MAX_CANDIDATES:
            break
        total_line = any(lab.kind == "total" for lab in doc.labels[line.index])
        for m in _CUR_RE.finditer(line.text):
            sign = m.group(0)
            code = currency_code(sign)
            if code is None or code not in choices:
                continue
            clean = 1.0 if sign.upper() == code else (0.6 if sign == "$" else 0.85)
            cands.append(
                _Cand(
                    code,
                    line.start + m.start(),
                    line.start + m.end(),
                    near=1.0,
                    clean=clean,
                    prior=0.5 if total_line else 0.0,
                    note=f"currency sign '{sign}'" + (" on the total line" if total_line else ""),
                )
            )
    return cands, seen


_PAID_CUES: tuple[tuple[re.Pattern[str], bool, float, str], ...] = tuple(
    (re.compile(p, re.I), v, w, n)
    for p, v, w, n in (
        (r"\bun-?paid\b", False, 1.0, "marked unpaid"),
        (r"\bnot\s+(?:yet\s+)?(?:been\s+)?paid\b", False, 1.0, "says not paid"),
        (r"\boverdue\b", False, 0.8, "marked overdue"),
        (r"\boutstanding\b", False, 0.6, "amount outstanding"),
        (r"\bplease\s+(?:remit|pay)\b", False, 0.6, "asks for payment"),
        (r"\b(?:bitte\s+überweisen|zahlbar\s+(?:bis|innerhalb))\b", False, 0.6, "asks for payment"),
        (r"\bpayment\s+(?:is\s+)?due\b", False, 0.5, "payment due"),
        (r"\bnicht\s+bezahlt\b|\boffen\b", False, 0.8, "marked open"),
        (r"\bpaid\s+in\s+full\b", True, 1.0, "paid in full"),
        (r"\bpayment\s+received\b|\bthank\s+you\s+for\s+your\s+payment\b", True, 0.8, "payment received"),
        (r"\bstatus\s*[:\-]?\s*paid\b", True, 1.0, "status paid"),
        (
            r"(?<!amount )(?<!un)(?<!not )(?<!yet )(?<!been )(?<!be )(?<!total )\bPAID\b",
            True,
            0.9,
            "PAID stamp",
        ),
        (r"(?<![\w-])(?:bezahlt|payée?|pagad[oa]|betaald|lunas)\b", True, 0.8, "marked paid"),
    )
)


# Every cue contains one of these; a text without any is not scanned with the cue patterns at all.
_PAID_NEEDLES = (
    "paid",
    "due",
    "overdue",
    "outstanding",
    "please",
    "überweisen",
    "zahlbar",
    "offen",
    "payment",
    "bezahlt",
    "payé",
    "pagad",
    "betaald",
    "lunas",
)


def _paid_candidates(doc: _Doc, spec: FieldSpec, phrase: str) -> tuple[list[_Cand], bool]:
    cands: list[_Cand] = []
    taken: list[tuple[int, int]] = []
    low = doc.text.casefold()
    cues = _PAID_CUES if any(needle in low for needle in _PAID_NEEDLES) else ()
    for pattern, value, weight, note in cues:
        for m in pattern.finditer(doc.text):
            s, e = m.start(), m.end()
            if len(cands) >= _MAX_CANDIDATES:
                break
            if any(s < te and e > ts for ts, te in taken):
                continue  # "not yet paid" must not also count as a bare "paid"
            if note == "PAID stamp" and not (
                m.group(0).isupper() or re.fullmatch(r"\W*paid\W*", doc.line_of(s).text, re.I)
            ):
                continue  # a lower-case "paid" in a sentence is not a stamp
            taken.append((s, e))
            cands.append(_Cand(value, s, e, label=weight, near=1.0, note=note))
    # Amount lines: "Balance due 0.00" means settled, "Amount paid 0.00" or a positive balance means not.
    for line in doc.lines:
        for lab in doc.labels[line.index]:
            low = line.text[lab.start : lab.end].lower()
            if not ("balance" in low or "amount due" in low or "amount paid" in low or "outstanding" in low):
                continue
            found = _money_in(doc, line, lab.end, doc.region_end(line, lab))
            if not found:
                continue
            amount = found[-1].amount or Decimal(0)
            if "paid" in low:
                value, note = amount > 0, f"amount paid {found[-1].value}"
            else:
                value, note = amount <= 0, f"balance due {found[-1].value}"
            cands.append(
                _Cand(
                    value, line.start + lab.start, line.start + found[-1].end, label=0.7, near=1.0, note=note
                )
            )
    if not cands and doc.text.strip():
        # Invoices are issued unpaid; nothing saying otherwise is weak evidence that this one still is.
        cands.append(_Cand(False, 0, 0, clean=0.6, prior=1.8, note="no paid marker in the document"))
    return cands, True


# --------------------------------------------------------------------------------------------------
# Extraction


def _group_key(spec: FieldSpec, value: Any) -> str:
    if spec.type == FieldType.TEXT:
        text = unicodedata.normalize("NFKD", str(value).casefold())
        return "".join(ch for ch in text if ch.isalnum())
    if spec.type == FieldType.MONEY:
        return str(parse_money(value)[0].normalize())
    return repr(value)


def _decide(spec: FieldSpec, cands: list[_Cand]) -> tuple[_Cand, float, int, int]:
    """Return the best candidate, its confidence, its number of agreeing and of disagreeing candidates."""
    groups: dict[str, list[_Cand]] = {}
    for c in cands:
        groups.setdefault(_group_key(spec, c.value), []).append(c)
    scored = []
    for key, members in groups.items():
        best = max(members, key=lambda c: (c.z, -c.start))
        distinct = len({(c.start, c.end) for c in members})
        scored.append((best.z + W_SUPPORT * math.log(distinct), best.z, key, best, distinct))
    scored.sort(key=lambda s: (-s[0], s[3].start))
    g_best, _, _, best, n = scored[0]
    # Share of the chosen value among the competing values (a softmax over group scores).
    share = 1.0 / sum(math.exp(max(-30.0, (g - g_best) / T_CONFLICT)) for g, *_ in scored)
    return best, _sigmoid(g_best) * share, n, len(scored) - 1


def _field_candidates(doc: _Doc, spec: FieldSpec) -> tuple[list[_Cand], bool]:
    kind = _field_kind(spec)
    phrase = _name_phrase(spec)
    if kind == "vendor" and spec.type == FieldType.TEXT:
        return _vendor_candidates(doc, spec, phrase)
    if kind == "address" and spec.type == FieldType.TEXT:
        return _address_candidates(doc, spec, phrase)
    if kind == "currency":
        return _currency_candidates(doc, spec, phrase)
    if kind == "paid":
        return _paid_candidates(doc, spec, phrase)
    cands, seen = _labelled(doc, spec, kind, phrase, _finder(doc, spec, kind))
    if spec.type == FieldType.DATE:
        for c in cands:
            if _HEADERISH.match(doc.line_of(c.start).text):
                c.prior -= 1.5  # an e-mail's "Date:" header is when it was sent, not the document's date
    if kind == "total":
        _total_priors(doc, cands)
    for c in cands:
        if kind == "doc_number" and _address_score(doc.line_of(c.start).text) >= 1.0:
            c.prior -= 1.0  # "No. 12, Jalan ..." is a house number
    if not cands:
        if spec.type == FieldType.DATE and kind == "date":
            cands = _unlabelled_dates(doc)
        elif kind == "total":
            cands = _unlabelled_totals(doc)
        elif kind in {"email", "iban", "phone"}:
            finder = _finder(doc, spec, kind)
            for line in doc.lines:
                for f in finder(line, 0, len(line.text)):
                    cands.append(
                        _Cand(
                            f.value,
                            line.start + f.start,
                            line.start + f.end,
                            clean=f.clean,
                            prior=0.8 if kind != "phone" else 0.0,
                            note=f"{kind} pattern without a label",
                        )
                    )
        elif spec.type == FieldType.ENUM and spec.choices:
            for line in doc.lines:
                for f in _choices_in(spec, line.text, 0, len(line.text)):
                    cands.append(
                        _Cand(
                            f.value,
                            line.start + f.start,
                            line.start + f.end,
                            clean=0.8,
                            note="choice mentioned in the text",
                        )
                    )
    return cands, seen


def _explain(best: _Cand, n_agree: int, n_rivals: int) -> str:
    parts = [best.note[:1].upper() + best.note[1:] if best.note else "Pattern match"]
    if n_agree > 1:
        parts.append(f"{n_agree - 1} more place(s) agree")
    if n_rivals:
        parts.append(f"{n_rivals} other candidate value(s)")
    return "; ".join(parts) + "."


def extract(text: str, fields: Sequence[FieldSpec]) -> dict[str, dict]:
    """Extract every field from `text`: value, confidence, reasoning and verbatim evidence with its offset.

    Values are canonical (normalize.normalize). When evidence is not None,
    ``text[start:start + len(evidence)] == evidence``.
    """
    extra = [("field:" + f.name, _name_phrase(f)) for f in fields]
    doc = _Doc(text or "", extra)
    return {spec.name: _extract_field(doc, spec) for spec in fields}


def _extract_field(doc: _Doc, spec: FieldSpec) -> dict[str, Any]:
    cands, seen_label = _field_candidates(doc, spec)
    usable = []
    for c in cands[:_MAX_CANDIDATES]:
        try:
            c.value = normalize(spec, c.value, dayfirst=doc.dayfirst)
        except InvalidValue:
            continue
        if c.value is not None:
            usable.append(c)
    if not usable:
        if seen_label:
            conf, why = (
                MISSING_CONFIDENCE["label_seen"],
                "A label for this field is present but no readable value follows it.",
            )
        elif spec.required:
            conf, why = (
                MISSING_CONFIDENCE["required"],
                "No label or value of this kind found in the document.",
            )
        else:
            conf, why = (
                MISSING_CONFIDENCE["optional"],
                "No label or value of this kind found; the field may be absent.",
            )
        return {"value": None, "confidence": conf, "reasoning": why, "evidence": None, "start": None}
    best, confidence, n_agree, n_rivals = _decide(spec, usable)
    evidence = doc.text[best.start : best.end] if best.end > best.start else None
    return {
        "value": best.value,
        "confidence": round(confidence, 3),
        "reasoning": _explain(best, n_agree, n_rivals),
        "evidence": evidence,
        "start": best.start if evidence is not None else None,
    }


# --------------------------------------------------------------------------------------------------
# Classification


# Built-in knowledge of common document types, keyed by a word of the type's slug or name. The first
# group of each entry is the type's name in other languages (weighted like the type's own name), the
# second its typical vocabulary.
_TYPE_NAMES: dict[str, tuple[str, ...]] = {
    "invoice": ("rechnung", "facture", "factura", "factuur", "fattura", "invois", "faktura"),
    "receipt": (
        "kassenbon",
        "quittung",
        "kassenbeleg",
        "reçu",
        "ticket de caisse",
        "recibo",
        "resit",
        "kassabon",
    ),
    "purchase_order": ("bestellung", "bon de commande", "orden de compra"),
    "quote": ("quotation", "angebot", "devis", "presupuesto", "sebut harga"),
    "contract": ("vertrag", "contrat", "contrato"),
    "bank_statement": ("kontoauszug", "relevé", "penyata"),
    "payslip": ("lohnabrechnung", "gehaltsabrechnung", "bulletin de paie", "slip gaji"),
}
_TYPE_HINTS: dict[str, tuple[str, ...]] = {
    "invoice": _vocab_phrases(
        "bill to|billed to|invoice to|due date|payment due|payment terms|terms|remit|balance due|invoice number|"
        "invoice no|invoice date|rechnungsnummer|rechnungsdatum|zahlungsziel|überweisen|leistungszeitraum|"
        "kundennummer|iban|bic|bank transfer|net 30|payable|vat reg|customer|échéance|vencimiento"
    ),
    "receipt": _vocab_phrases(
        "cash|change|cashier|thank you|come again|till|visa|mastercard|qty|items|tendered|rounding|kasse|bon|"
        "rückgeld|summe|bar|merci|carte bancaire|ttc|serveur|table|served by|server|store|reg|trans|auth code|"
        "card|contactless|goods sold|ticket|tip|guests|pax|pump|fuel|tunai|baki|terima kasih|datang lagi|"
        "gst summary|member|points"
    ),
    "purchase_order": _vocab_phrases("purchase order|po number|ship to|delivery date|order date|supplier"),
    "quote": _vocab_phrases("quote|valid until|estimate|validity|offer"),
    "contract": _vocab_phrases("agreement|contract|party|parties|hereby|term|signature|witness"),
    "bank_statement": _vocab_phrases("statement|opening balance|closing balance|account number|transactions"),
    "payslip": _vocab_phrases("payslip|gross pay|net pay|employee|salary|deductions"),
}


_STOP = _vocab(
    "the a an and or of to for in on at by with from this that is are be as it its any all each per name "
    "value field document documents type text data shop company issued paid including include amount"
)
_LANG_WORDS: dict[str, frozenset[str]] = {
    "en": _vocab(
        "the and of to for you your with is this please thank total invoice date from are be by on at "
        "amount due paid payment our we will items"
    ),
    "de": _vocab(
        "der die das und für mit sie ist den dem zu bitte vielen dank ihr ihren von bis auf nicht rechnung "
        "datum summe betrag steuer zahlung gesamt uhrzeit einkauf"
    ),
    "fr": _vocab(
        "le la les de des et pour vous votre merci du au est avec sur facture une un total ttc tva montant "
        "à date serveur"
    ),
    "es": _vocab(
        "el la los las de y para con por gracias su factura fecha del una es en total importe pagar iva"
    ),
    "ms": _vocab(
        "dan yang untuk dengan ini terima kasih sila tidak di ke dari jumlah tarikh harga bayar cukai "
        "barang dijual tunai baki"
    ),
    "nl": _vocab(
        "de het een en van voor met is op te betalen bedankt factuur uw niet dat bij totaal bedrag btw datum"
    ),
}


def _words_of(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.casefold())


def _detect_language(words: list[str]) -> tuple[str, float]:
    scores: dict[str, float] = dict.fromkeys(_LANG_WORDS, 0.0)
    for w in words[:20_000]:
        holders = [lang for lang, vocab in _LANG_WORDS.items() if w in vocab]
        for lang in holders:
            scores[lang] += 1.0 / len(holders)  # shared words ("de", "total") count less
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    (best, s1), (_, s2) = ranked[0], ranked[1]
    if s1 < 2.0 or s1 < 1.3 * s2:
        return "und", s1
    return best, s1


def _hint_phrases(schema: DocumentSchema) -> list[tuple[str, float]]:
    """Return (phrase, weight) keywords for a document type: its own words plus built-in hints."""
    out: dict[str, float] = {}
    own = _words_of(f"{schema.slug.replace('_', ' ').replace('-', ' ')} {schema.name}")
    for w in own:
        if w not in _STOP and len(w) > 2:
            out[w] = max(out.get(w, 0), 3.0)
    for w in _words_of(schema.description):
        if w not in _STOP and len(w) > 3:
            out.setdefault(w, 1.0)
    for f in schema.fields:
        for w in [*f.name.split("_"), *_words_of(f.description)]:
            if w not in _STOP and len(w) > 3:
                out.setdefault(w, 0.5)
    joined = " ".join(own)
    for key, phrases in _TYPE_HINTS.items():
        if key in own or key.replace("_", " ") in joined:
            for p in _TYPE_NAMES.get(key, ()):
                out[p] = 3.0
            for p in phrases:
                out.setdefault(p, 1.0)
    return list(out.items())


def _ngram_counts(text: str, longest: int = 4) -> dict[str, int]:
    """Return how often each run of 1..`longest` word tokens occurs in `text` (tokens casefolded)."""
    tokens = [t.casefold() for t in _TOKEN_RE.findall(text)]
    counts: dict[str, int] = {}
    for n in range(1, longest + 1):
        for i in range(len(tokens) - n + 1):
            key = " ".join(tokens[i : i + n])
            counts[key] = counts.get(key, 0) + 1
    return counts


def classify(text: str, candidates: Sequence[DocumentSchema], declared: str) -> dict:
    """Decide whether `text` is a document and which candidate type it is, by keyword evidence."""
    body = (text or "")[:MAX_SCAN_CHARS]
    stripped = body.strip()
    printable = sum(ch.isprintable() or ch in "\n\t\r" for ch in stripped)
    letters = sum(ch.isalpha() for ch in stripped)
    words = _words_of(stripped)
    if not stripped or printable < 0.85 * len(stripped) or letters < 0.2 * len(stripped) or len(words) < 3:
        why = "empty" if not stripped else "mostly non-printable or non-letter characters"
        return {
            "is_document": False,
            "document_type": None,
            "matches_declared_type": False,
            "language": "und",
            "confidence": 0.95 if not stripped else 0.85,
            "reasoning": f"Not a document: the text is {why}.",
        }
    language, _ = _detect_language(words)
    counts = _ngram_counts(stripped[:50_000])
    head = _ngram_counts("\n".join(stripped.split("\n", 6)[:6]))
    phrase_sets = {c.slug: _hint_phrases(c) for c in candidates}
    holders: dict[str, int] = {}
    for phrases in phrase_sets.values():
        for p, _ in phrases:
            holders[p] = holders.get(p, 0) + 1
    scores: dict[str, float] = {}
    hits: dict[str, list[str]] = {}
    for c in candidates:
        score = 0.0
        for p, weight in phrase_sets[c.slug]:
            key = " ".join(_phrase_tokens(p))
            count = counts.get(key, 0)
            if not count:
                continue
            # Phrases shared by several candidates say little about which one this is.
            gain = weight / holders[p] * (1 + math.log(count))
            if weight >= 3.0 and key in head:
                gain += 2.0  # the type's own name in the title
            score += gain
            hits.setdefault(c.slug, []).append(p)
        scores[c.slug] = score
    if not candidates or max(scores.values(), default=0) <= 0:
        doc_type = declared if any(c.slug == declared for c in candidates) else None
        return {
            "is_document": True,
            "document_type": doc_type,
            "matches_declared_type": doc_type is not None and doc_type == declared,
            "language": language,
            "confidence": 0.3,
            "reasoning": "No keywords of any candidate type found"
            + ("; keeping the declared type." if doc_type else "."),
        }
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    best, s1 = ranked[0]
    s2 = ranked[1][1] if len(ranked) > 1 else 0.0
    share = math.exp(s1 / 2) / sum(math.exp(s / 2) for _, s in ranked)
    confidence = share * (1 - math.exp(-s1 / 3))
    return {
        "is_document": True,
        "document_type": best,
        "matches_declared_type": best == declared,
        "language": language,
        "confidence": round(min(0.99, confidence), 3),
        "reasoning": f"Best keyword match '{best}' (score {s1:.1f} vs {s2:.1f}): "
        + ", ".join(hits.get(best, [])[:8])
        + ".",
    }


# --------------------------------------------------------------------------------------------------
# Verification


def _locate(doc: _Doc, quote: str, hint: Any) -> tuple[int, str] | None:
    """Return (offset, text) of the evidence quote in the document, tolerating case and whitespace."""
    text = doc.text
    if isinstance(hint, int) and 0 <= hint <= len(text) and text.startswith(quote, hint):
        return hint, quote
    i = text.find(quote)
    if i >= 0:
        return i, quote
    words = re.findall(r"\w+|[^\w\s]", quote)
    if not words or len(words) > 200:
        return None
    m = re.search(r"\s*".join(re.escape(w) for w in words), text, re.I)
    return (m.start(), m.group(0)) if m else None


def _typed_values(doc: _Doc, spec: FieldSpec, snippet: str) -> list[Any]:
    """Return the values of the field's type written in a snippet of text."""
    line = _Line(0, 0, snippet.replace("\n", " "))
    if spec.type == FieldType.MONEY:
        return [f.value for f in _money_in(doc, line, 0, len(line.text))]
    if spec.type == FieldType.NUMBER:
        return [f.value for f in _numbers_in(line.text, 0, len(line.text))]
    if spec.type == FieldType.DATE:
        return [m.group(0) for m in _DATE_RE.finditer(line.text)]
    if spec.type == FieldType.ENUM:
        found = [f.value for f in _choices_in(spec, line.text, 0, len(line.text))]
        found += [currency_code(m.group(0)) for m in _CUR_RE.finditer(line.text)]
        return [v for v in found if v in spec.choices]
    if spec.type == FieldType.BOOLEAN:
        if _field_kind(spec) == "paid":
            cands, _ = _paid_candidates(_Doc(snippet), spec, "")
            return [c.value for c in cands if c.end > c.start]
        return [f.value for f in _bools_in(line.text, 0, len(line.text))]
    return []


def _supports(doc: _Doc, spec: FieldSpec, value: Any, quote: str) -> tuple[bool | None, Any]:
    """Return (True/False/None = says nothing, what the quote says instead) for a value and its quote."""
    if spec.type == FieldType.TEXT:
        key = _group_key(spec, value)
        return (bool(key) and key in _group_key(spec, quote)), quote
    found = _typed_values(doc, spec, quote)
    if not found:
        return None, None
    for f in found:
        if values_equal(spec, f, value):
            return True, f
    return False, found[-1]


def verify(text: str, fields: Sequence[FieldSpec], extraction: dict[str, dict]) -> dict:
    """Check an extraction against the text: a verdict per field plus document-level scores.

    Verdicts: "unsupported" when the evidence quote is not in the text or nothing supports the value,
    "incorrect" when the quote (or an independent reading) shows another value or the value does not fit
    the type, "missing" when a required field is empty or the document clearly states an empty field's
    value, else "correct". accuracy is the mean score of the fields given a value, counting only correct
    ones; completeness the share of fields not missing; schema_fit the share of given values that are
    valid for their type, reduced by fields the schema does not have.
    """
    answers: dict[str, Any] = extraction if isinstance(extraction, dict) else {}
    doc = _Doc(text or "", [("field:" + f.name, _name_phrase(f)) for f in fields])
    known = {f.name for f in fields}
    unknown = sorted(k for k in answers if k not in known)
    verdicts: dict[str, dict[str, Any]] = {}
    provided = fits = 0
    for spec in fields:
        answer = answers.get(spec.name)
        if not isinstance(answer, dict):
            answer = {"value": answer}
        raw, quote, hint = answer.get("value"), answer.get("evidence"), answer.get("start")
        if isinstance(quote, dict):
            quote = quote.get("text") or quote.get("quote")
        given = _has_value(answers, spec.name)
        provided += given
        try:
            value = normalize(spec, raw, dayfirst=doc.dayfirst)
        except InvalidValue as exc:
            verdicts[spec.name] = {
                "verdict": "incorrect",
                "score": 0.05,
                "feedback": f"Not a valid {spec.type.value}: {exc.message}",
            }
            continue
        fits += given
        verdicts[spec.name] = _verdict(doc, spec, value, quote, hint, _extract_field(doc, spec))
    valued = [v for name, v in verdicts.items() if _has_value(answers, name)]
    accuracy = sum(v["score"] for v in valued if v["verdict"] == "correct") / len(valued) if valued else 0.0
    completeness = 1 - sum(v["verdict"] == "missing" for v in verdicts.values()) / max(1, len(fields))
    schema_fit = (fits / provided if provided else 1.0) * (len(fields) / max(1, len(fields) + len(unknown)))
    problems = [f"{name}: {v['feedback']}" for name, v in verdicts.items() if v["verdict"] != "correct"]
    if unknown:
        problems.append("unknown fields: " + ", ".join(unknown[:5]) + ".")
    summary = f"{sum(v['verdict'] == 'correct' for v in verdicts.values())} of {len(fields)} fields check out"
    return {
        "fields": verdicts,
        "accuracy": round(accuracy, 4),
        "completeness": round(max(0.0, completeness), 4),
        "schema_fit": round(schema_fit, 4),
        "feedback": summary + (". " + " ".join(problems[:6]) if problems else "."),
    }


def _has_value(extraction: dict[str, Any] | None, name: str) -> bool:
    answer = (extraction or {}).get(name)
    raw = answer.get("value") if isinstance(answer, dict) else answer
    return raw is not None and raw != ""


def _verdict(
    doc: _Doc, spec: FieldSpec, value: Any, quote: Any, hint: Any, mine: dict[str, Any]
) -> dict[str, Any]:
    mine_value, mine_conf = mine["value"], float(mine["confidence"])
    if value is None:
        if mine_value is not None and mine_conf >= 0.5:
            shown = display(spec, mine_value)
            return {
                "verdict": "missing",
                "score": 0.1,
                "feedback": f"Left empty, but the document seems to show {shown!r}.",
            }
        if spec.required:
            return {"verdict": "missing", "score": 0.0, "feedback": "Required field has no value."}
        return {
            "verdict": "correct",
            "score": 0.6,
            "feedback": "Empty, and no value for it was found in the document.",
        }
    agrees = mine_value is not None and values_equal(spec, mine_value, value)
    doubt = mine_value is not None and not agrees and mine_conf >= 0.7
    if quote:
        located = _locate(doc, str(quote), hint)
        if located is None:
            return {
                "verdict": "unsupported",
                "score": 0.1,
                "feedback": "The evidence quote is not in the document.",
            }
        says, other = _supports(doc, spec, value, located[1])
        if says is True:
            score = 0.75 if doubt else 0.95
            note = f" (the document may rather show {display(spec, mine_value)!r})" if doubt else ""
            return {
                "verdict": "correct",
                "score": score,
                "feedback": "The evidence shows this value" + note + ".",
            }
        if says is False:
            shown = display(spec, other) if other is not None else "something else"
            return {
                "verdict": "incorrect",
                "score": 0.05,
                "feedback": f"The evidence says {shown!r}, not {display(spec, value)!r}.",
            }
    # No quote, or a quote that says nothing about the value: look for the value itself.
    if agrees:
        return {
            "verdict": "correct",
            "score": 0.85,
            "feedback": "An independent reading of the document finds the same value.",
        }
    if (
        spec.type in (FieldType.TEXT,)
        and _group_key(spec, value)
        and _group_key(spec, value) in _group_key(spec, doc.text)
    ):
        return {"verdict": "correct", "score": 0.7, "feedback": "The value appears in the document."}
    if spec.type in (FieldType.MONEY, FieldType.NUMBER, FieldType.DATE, FieldType.ENUM):
        for line in doc.lines:
            if any(values_equal(spec, v, value) for v in _typed_values(doc, spec, line.text)):
                note = f" but the document more likely shows {display(spec, mine_value)!r}" if doubt else ""
                return {
                    "verdict": "correct",
                    "score": 0.5 if doubt else 0.7,
                    "feedback": "The value appears in the document" + note + ".",
                }
    if doubt:
        return {
            "verdict": "incorrect",
            "score": 0.15,
            "feedback": f"Not supported; the document seems to show {display(spec, mine_value)!r}.",
        }
    return {
        "verdict": "unsupported",
        "score": 0.2,
        "feedback": "Nothing in the document supports this value.",
    }
