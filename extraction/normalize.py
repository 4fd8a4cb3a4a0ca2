"""Canonical values per field type.

One place decides what a value *is*: model output, human corrections and evaluation all go through
``normalize``, so "$1,234.50", "1.234,50 USD" and 1234.5 are the same answer everywhere.

Canonical forms (all JSON-able):

    text     str, whitespace collapsed and stripped
    number   int when integral, else float
    money    "1234.50 EUR" (two decimals unless more were given, ISO 4217 code) or "1234.50" without one
    date     "YYYY-MM-DD"
    boolean  True / False
    enum     the exact spelling of one of the field's choices

None, "" and whitespace-only input mean "no value" for every type. Anything that cannot be read raises
``InvalidValue`` whose message is shown to reviewers as is.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .schemas import FieldSpec, FieldType

__all__ = [
    "CURRENCY_CODES",
    "CURRENCY_SYMBOLS",
    "MONTHS",
    "InvalidValue",
    "currency_code",
    "display",
    "normalize",
    "parse_date",
    "parse_decimal",
    "parse_money",
    "values_equal",
]


class InvalidValue(ValueError):
    """A value that cannot be read as its field's type; ``message`` is meant for a human reviewer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------------------------------
# Currencies


# A deliberately bounded list: a three-letter word is only a currency when it is a code people actually
# write on receipts and invoices; otherwise "12 PCS" or "5 BOX" would turn into currencies.
def _words(text: str) -> list[str]:
    return text.split()


CURRENCY_CODES: frozenset[str] = frozenset(
    _words("""
    USD EUR GBP JPY MYR SGD AUD CAD NZD CHF CNY HKD INR IDR THB PHP VND KRW TWD SEK NOK DKK PLN CZK HUF
    RON BGN TRY ZAR BRL MXN ARS CLP COP PEN AED SAR QAR KWD BHD OMR ILS EGP NGN KES MAD RUB UAH ISK BND
    PKR BDT LKR
    """)
)

# Longest first, so "US$" is read before "$". "$" alone means USD: the most common reading, and the
# explicit code wins whenever a document gives one (see parse_money).
CURRENCY_SYMBOLS: dict[str, str] = {
    "US$": "USD",
    "NZ$": "NZD",
    "HK$": "HKD",
    "S$": "SGD",
    "A$": "AUD",
    "C$": "CAD",
    "R$": "BRL",
    "$": "USD",
    "€": "EUR",
    "£": "GBP",
    "¥": "JPY",
    "₹": "INR",
    "₩": "KRW",
    "₱": "PHP",
    "฿": "THB",
    "₺": "TRY",
}

# Letter tokens that name a currency without being its ISO code.
_CURRENCY_WORDS: dict[str, str] = {
    "RM": "MYR",
    "RP": "IDR",
    "RS": "INR",
    "EURO": "EUR",
    "EUROS": "EUR",
    "ZŁ": "PLN",
    "KČ": "CZK",
    "RINGGIT": "MYR",
}

_SYMBOL_RE = re.compile("|".join(re.escape(s) for s in CURRENCY_SYMBOLS))
_LETTERS_RE = re.compile(r"[^\W\d_]+")


def currency_code(token: str) -> str | None:
    """Return the ISO 4217 code a currency symbol, word or code stands for, or None."""
    t = token.strip()
    if t in CURRENCY_SYMBOLS:
        return CURRENCY_SYMBOLS[t]
    up = t.upper()
    if up in CURRENCY_CODES:
        return up
    return _CURRENCY_WORDS.get(up)


# --------------------------------------------------------------------------------------------------
# Numbers


def _fail_number(raw: Any) -> InvalidValue:
    return InvalidValue(f"Not a number: {_quote(raw)}")


def _quote(raw: Any) -> str:
    text = raw if isinstance(raw, str) else str(raw)
    if len(text) > 60:  # messages are shown inline next to a field; keep them short
        text = text[:57] + "..."
    return repr(text)


_GROUPED = {
    ",": re.compile(r"\d{1,3}(?:,\d{3})+"),
    ".": re.compile(r"\d{1,3}(?:\.\d{3})+"),
}


def parse_decimal(text: str) -> Decimal:
    """Return the Decimal written in `text` ("1,234.50", "1.234,50", "(12.00)", "-3", "1 234,5").

    Raise InvalidValue when it is not a plain number. With a single separator, "," followed by exactly
    three digits is a thousands separator ("1,234") and otherwise a decimal comma ("12,50"); a single "."
    is always a decimal point.
    """
    s = text.strip().replace("\u2212", "-")
    negative = False
    if s.startswith("(") and s.endswith(")"):  # accounting notation for negatives
        negative, s = True, s[1:-1].strip()
    if s.endswith("-") and not s.startswith("-"):  # some tills print refunds as "3.50-"
        negative, s = True, s[:-1].strip()
    if s[:1] in ("-", "+"):
        negative, s = (s[0] == "-") != negative, s[1:].strip()
    s = re.sub(r"[\s'\u00a0\u202f\u2009_]", "", s)  # spaces, apostrophes: thousands separators
    if not s or not re.fullmatch(r"[\d.,]+", s) or not any(c.isdigit() for c in s):
        raise _fail_number(text)
    dots, commas = s.count("."), s.count(",")
    if dots and commas:
        dec = "." if s.rfind(".") > s.rfind(",") else ","
        thousands = "," if dec == "." else "."
        if s.count(dec) > 1:
            raise _fail_number(text)
        whole, frac = s.split(dec)
        if not _GROUPED[thousands].fullmatch(whole):
            raise _fail_number(text)
        s = whole.replace(thousands, "") + "." + frac
    elif commas:
        whole, _, frac = s.partition(",")
        if commas > 1:
            if not _GROUPED[","].fullmatch(s):
                raise _fail_number(text)
            s = s.replace(",", "")
        elif len(frac) == 3 and whole not in ("", "0") and len(whole) <= 3:
            s = whole + frac
        else:
            s = whole + "." + frac
    elif dots > 1:
        if not _GROUPED["."].fullmatch(s):
            raise _fail_number(text)
        s = s.replace(".", "")
    try:
        value = Decimal(s)
    except InvalidOperation:
        raise _fail_number(text) from None
    return _in_range(-value if negative else value, text)


# From 10^25 on, a number is not a count, a quantity or an amount on any document we read, and it would cost:
# int() of a million-digit Decimal takes half a minute, a float of 10^400 is Infinity (which PostgreSQL's JSON
# refuses), and money's cents need the magnitude within Decimal's 28 digits.
MAX_DIGITS = 25


def _out_of_range(raw: Any) -> InvalidValue:
    return InvalidValue(f"Out of range (1e{MAX_DIGITS} or more): {_quote(raw)}")


def _in_range(value: Decimal, raw: Any) -> Decimal:
    if value.is_finite() and value.adjusted() >= MAX_DIGITS:  # adjusted(): the exponent, in O(1)
        raise _out_of_range(raw)
    return value


def _decimal_of(raw: Any) -> Decimal:
    """Return raw (int, float, Decimal or text) as a finite Decimal."""
    if isinstance(raw, bool):  # bool is an int subclass, but True is not the number 1 to a reviewer
        raise _fail_number(raw)
    if isinstance(raw, int):
        if abs(raw) >= 10**MAX_DIGITS:  # before Decimal(raw), slow for a huge int
            raise _out_of_range(raw)
        return Decimal(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise _fail_number(raw)
        return _in_range(Decimal(repr(raw)), raw)
    if isinstance(raw, Decimal):
        if not raw.is_finite():
            raise _fail_number(raw)
        return _in_range(raw, raw)
    if isinstance(raw, str):
        return parse_decimal(raw)
    raise _fail_number(raw)


def _number_out(d: Decimal) -> int | float:
    if d == d.to_integral_value():
        return int(d)
    return float(d)


def _normalize_number(raw: Any) -> int | float:
    if isinstance(raw, str):
        s = raw.strip()
        if s.endswith("%"):  # "12%" is the number 12: the field's description says what it measures
            s = s[:-1].strip()
        try:
            d = parse_decimal(s)
        except InvalidValue:
            # "$12.50" in a number field: the amount is still a number; only a foreign word is an error.
            try:
                d, _ = parse_money(s)
            except InvalidValue:
                raise _fail_number(raw) from None
    else:
        d = _decimal_of(raw)
    if not d.is_finite():
        raise _fail_number(raw)
    return _number_out(d)


# --------------------------------------------------------------------------------------------------
# Money


def parse_money(raw: Any) -> tuple[Decimal, str | None]:
    """Return (amount, ISO currency or None) for a money value such as "RM 9.90" or "1.234,50 €".

    An explicit code beats a symbol ("$ 12 CAD" is CAD); two different codes are an error.
    """
    if isinstance(raw, dict):  # {"amount": 12.5, "currency": "EUR"}, as some models answer
        amount = raw.get("amount", raw.get("value"))
        cur = raw.get("currency")
        d = _decimal_of(amount) if not isinstance(amount, str) else parse_money(amount)[0]
        code = currency_code(str(cur)) if cur else None
        if cur and code is None:
            raise InvalidValue(f"Unknown currency: {_quote(cur)}")
        return d, code
    if not isinstance(raw, str):
        return _decimal_of(raw), None
    s = " ".join(raw.split())
    if len(s) > 80:
        raise InvalidValue(f"Not an amount: {_quote(raw)}")
    symbols: set[str] = set()
    codes: set[str] = set()
    for m in _SYMBOL_RE.finditer(s):
        symbols.add(CURRENCY_SYMBOLS[m.group(0)])
    rest = _SYMBOL_RE.sub(" ", s)
    for m in _LETTERS_RE.finditer(rest):
        code = currency_code(m.group(0))
        if code is None:
            raise InvalidValue(f"Not an amount: {_quote(raw)}")
        codes.add(code)
    rest = _LETTERS_RE.sub(" ", rest)
    if len(codes) > 1 or (not codes and len(symbols) > 1):
        raise InvalidValue(f"More than one currency in {_quote(raw)}")
    currency = next(iter(codes or symbols), None)
    try:
        amount = parse_decimal(rest)
    except InvalidValue:
        raise InvalidValue(f"Not an amount: {_quote(raw)}") from None
    return amount, currency


def _money_amount_text(amount: Decimal, from_float: bool = False) -> str:
    if from_float:
        # 0.1 + 0.2 style noise from JSON floats is not "more decimals given"
        q = amount.quantize(Decimal("0.01"))
        if abs(q - amount) < Decimal("1e-9"):
            amount = q
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        out = amount.normalize()
        exp2 = out.as_tuple().exponent
        if isinstance(exp2, int) and exp2 >= -2:
            out = out.quantize(Decimal("0.01"))
    else:
        out = amount.quantize(Decimal("0.01"))
    if out == 0:
        out = abs(out)  # no "-0.00"
    return format(out, "f")


def _normalize_money(raw: Any) -> str:
    amount, currency = parse_money(raw)
    if not amount.is_finite():
        raise InvalidValue(f"Not an amount: {_quote(raw)}")
    text = _money_amount_text(amount, from_float=isinstance(raw, float))
    return f"{text} {currency}" if currency else text


# --------------------------------------------------------------------------------------------------
# Dates

_MONTH_NAMES: dict[int, tuple[str, ...]] = {
    # en, de, fr, es, ms, nl (only spellings that differ are listed once)
    1: ("january", "januar", "janvier", "enero", "januari", "jänner"),
    2: ("february", "februar", "février", "fevrier", "febrero", "februari"),
    3: ("march", "märz", "maerz", "marz", "mars", "marzo", "mac", "maart"),
    4: ("april", "avril", "abril"),
    5: ("may", "mai", "mayo", "mei"),
    6: ("june", "juni", "juin", "junio", "jun"),
    7: ("july", "juli", "juillet", "julio", "julai"),
    8: ("august", "août", "aout", "agosto", "ogos", "augustus"),
    9: ("september", "septembre", "septiembre", "setiembre", "sept"),
    10: ("october", "oktober", "octobre", "octubre"),
    11: ("november", "novembre", "noviembre"),
    12: ("december", "dezember", "décembre", "decembre", "diciembre", "disember"),
}
MONTHS: dict[str, int] = {}
for _num, _names in _MONTH_NAMES.items():
    for _name in _names:
        MONTHS[_name] = _num
    # English three-letter abbreviations ("Mar", "Sep") are what receipts print most
    MONTHS.setdefault(_names[0][:3], _num)
MONTHS.update({"okt": 10, "dez": 12, "mrz": 3, "janv": 1, "févr": 2, "fevr": 2, "déc": 12, "dic": 12})

_WEEKDAYS = frozenset(
    _words("""
    monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun
    montag dienstag mittwoch donnerstag freitag samstag sonntag mo di mi do fr sa so
    lundi mardi mercredi jeudi vendredi samedi dimanche lunes martes miércoles jueves viernes sábado domingo
    isnin selasa rabu khamis jumaat sabtu ahad maandag dinsdag woensdag donderdag vrijdag zaterdag zondag
    """)
)
# Filler words around dates: "12th of March", "le 12 mars", "12 de marzo de 2024", "am 12. März"
_DATE_FILLER = frozenset({"st", "nd", "rd", "th", "er", "of", "the", "de", "del", "le", "am", "den", "on"})

_TIME_TAIL = re.compile(
    r"(?:[T\s,]+|^)\d{1,2}[:.]\d{2}(?:[:.]\d{2}(?:\.\d{1,6})?)?\s*(?:[ap]\.?m\.?)?"
    r"(?:\s*(?:z|utc|gmt|[+-]\d{2}:?\d{2}))?\s*$",
    re.I,
)
_TIME_HEAD = re.compile(r"^\d{1,2}:\d{2}(?::\d{2})?\s*(?:[ap]\.?m\.?)?\s+", re.I)
_YMD = re.compile(r"(\d{4})\s*([-/.])\s*(\d{1,2})\s*\2\s*(\d{1,2})\.?")
_DMY = re.compile(r"(\d{1,2})\s*([-/.])\s*(\d{1,2})\s*\2\s*(\d{4}|\d{2})")
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DATE_TOKENS = re.compile(r"[^\W\d_]+|\d+")


def _fail_date(raw: Any) -> InvalidValue:
    return InvalidValue(f"Not a date: {_quote(raw)}")


def _year(y: int) -> int:
    if y < 100:  # two-digit years on receipts are recent: 24 -> 2024, 98 -> 1998
        return 2000 + y if y < 70 else 1900 + y
    return y


def _make_date(y: int, m: int, d: int, raw: Any) -> date:
    y = _year(y)
    if not 1900 <= y <= 2100:
        raise _fail_date(raw)
    try:
        return date(y, m, d)
    except ValueError:
        raise _fail_date(raw) from None


def _date_readings(raw: str, dayfirst: bool) -> list[date]:
    """Return the dates `raw` can mean, the preferred reading first (two only for ambiguous d/m/y)."""
    s = " ".join(raw.split()).strip(" ,")
    if len(s) > 64:
        raise _fail_date(raw)
    s = _TIME_HEAD.sub("", s)
    s = _TIME_TAIL.sub("", s).strip(" ,")
    if m := _YMD.fullmatch(s):
        return [_make_date(int(m.group(1)), int(m.group(3)), int(m.group(4)), raw)]
    if m := _COMPACT.fullmatch(s):
        return [_make_date(int(m.group(1)), int(m.group(2)), int(m.group(3)), raw)]
    if m := _DMY.fullmatch(s):
        a, b, y = int(m.group(1)), int(m.group(3)), int(m.group(4))
        if a > 12:
            return [_make_date(y, b, a, raw)]
        if b > 12:
            return [_make_date(y, a, b, raw)]
        first = _make_date(y, b, a, raw) if dayfirst else _make_date(y, a, b, raw)
        second = _make_date(y, a, b, raw) if dayfirst else _make_date(y, b, a, raw)
        return [first] if first == second else [first, second]
    return [_textual_date(s, raw)]


def _textual_date(s: str, raw: Any) -> date:
    """Read "March 12, 2024", "12 Mar 2024", "Tue, 12th of March 2024", "12. März 2024"."""
    month = None
    numbers: list[str] = []
    for tok in _DATE_TOKENS.findall(s.casefold()):
        if tok.isdigit():
            numbers.append(tok)
        elif tok in MONTHS and month is None:
            month = MONTHS[tok]
        elif tok in _WEEKDAYS or tok in _DATE_FILLER:
            continue
        else:
            raise _fail_date(raw)
    if month is None or len(numbers) != 2:
        raise _fail_date(raw)
    long_ = [n for n in numbers if len(n) == 4]
    if len(long_) > 1 or any(len(n) > 4 or len(n) == 3 for n in numbers):
        raise _fail_date(raw)
    if long_:
        year = long_[0]
        day = numbers[1] if numbers[0] == year else numbers[0]
    else:
        day, year = numbers  # "12 Mar 24" and "Mar 12 24": the year comes last
    return _make_date(int(year), month, int(day), raw)


def parse_date(raw: Any, *, dayfirst: bool = True) -> date:
    """Return the date `raw` stands for (a date, datetime or text in any common format)."""
    if isinstance(raw, datetime):
        return raw.date()
    if isinstance(raw, date):
        return raw
    if not isinstance(raw, str):
        raise _fail_date(raw)
    return _date_readings(raw, dayfirst)[0]


# --------------------------------------------------------------------------------------------------
# Booleans and enums

_TRUE = frozenset(
    {
        "true",
        "yes",
        "y",
        "1",
        "x",
        "checked",
        "on",
        "t",
        "ja",
        "oui",
        "si",
        "sí",
        "ya",
        "[x]",
        "☑",
        "✓",
        "✔",
        "✅",
    }
)
_FALSE = frozenset(
    {"false", "no", "n", "0", "unchecked", "off", "f", "nein", "non", "tidak", "[ ]", "[]", "☐", "✗"}
)


def _normalize_boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float | Decimal) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        key = " ".join(raw.split()).casefold()
        if key in _TRUE:
            return True
        if key in _FALSE:
            return False
    raise InvalidValue(f"Not yes/no: {_quote(raw)}")


def _choice_key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text.casefold())


def _normalize_enum(spec: FieldSpec, raw: Any) -> str | None:
    text = _normalize_text(raw)
    if text is None:
        return None
    if not spec.choices:  # an enum without choices accepts any text rather than rejecting everything
        return text
    key = _choice_key(text)
    for choice in spec.choices:
        if _choice_key(choice) == key:
            return choice
    # A currency symbol typed into a currency list ("€" for EUR) is unambiguous.
    code = currency_code(text)
    if code is not None and code in spec.choices:
        return code
    raise InvalidValue(f"Not one of {', '.join(spec.choices)}: {_quote(raw)}")


def _normalize_text(raw: Any) -> str | None:
    if isinstance(raw, (list, dict)):
        # A structure where text was asked for: the model misread the field. Its Python repr ("['ACME', None]")
        # must not pass as the value, least of all auto-accepted; the raw value stays for the reviewer.
        raise InvalidValue(f"Not text: a JSON {'array' if isinstance(raw, list) else 'object'}")
    if isinstance(raw, bool):
        return "true" if raw else "false"  # as the model wrote it, not Python's "True"
    text = raw if isinstance(raw, str) else str(raw)
    text = " ".join(text.split())
    return text or None


# --------------------------------------------------------------------------------------------------
# Public API


def _is_empty(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def normalize(spec: FieldSpec, raw: Any, *, dayfirst: bool = True) -> Any:
    """Return the canonical JSON-able value of `raw` for the field, or raise InvalidValue.

    `dayfirst` decides ambiguous numeric dates such as 03/04/2024 (3 April when True).
    """
    if _is_empty(raw):
        return None
    kind = spec.type
    if kind == FieldType.TEXT:
        return _normalize_text(raw)
    if kind == FieldType.NUMBER:
        return _normalize_number(raw)
    if kind == FieldType.MONEY:
        return _normalize_money(raw)
    if kind == FieldType.DATE:
        return parse_date(raw, dayfirst=dayfirst).isoformat()
    if kind == FieldType.BOOLEAN:
        return _normalize_boolean(raw)
    if kind == FieldType.ENUM:
        return _normalize_enum(spec, raw)
    raise InvalidValue(f"Unknown field type {kind!r}")


def _text_key(value: Any) -> str:
    """Return `value` as text without case, accents, whitespace or punctuation ("Acme Sdn. Bhd." -> "acmesdnbhd")."""
    if value is None:
        return ""
    text = unicodedata.normalize("NFKD", str(value).casefold())
    return "".join(ch for ch in text if ch.isalnum())


def _dates_of(raw: Any) -> set[date] | None:
    """Return every date `raw` can mean (two for an ambiguous 03/04/2024), or None if it is not a date."""
    if _is_empty(raw):
        return set()
    try:
        if isinstance(raw, str):
            return set(_date_readings(raw, True))
        return {parse_date(raw)}
    except InvalidValue:
        return None


def values_equal(spec: FieldSpec, a: Any, b: Any) -> bool:
    """Return whether `a` and `b` are the same value for this field.

    Compare after normalisation: text ignoring case, accents, whitespace and punctuation; numbers and money
    by value (money currencies must agree when both are given); dates by date, where an ambiguous
    day/month text such as "03/04/2024" equals either reading. A value that does not normalise compares
    by its raw text form.
    """
    if spec.type == FieldType.DATE:
        da, db = _dates_of(a), _dates_of(b)
        if da is not None and db is not None:
            return da == db if not da or not db else bool(da & db)
        return _text_key(a) == _text_key(b)
    try:
        na, nb = normalize(spec, a), normalize(spec, b)
    except InvalidValue:
        return _text_key(a) == _text_key(b)
    if na is None or nb is None:
        return na is None and nb is None
    if spec.type == FieldType.TEXT:
        return _text_key(na) == _text_key(nb)
    if spec.type == FieldType.NUMBER:
        return Decimal(str(na)) == Decimal(str(nb))
    if spec.type == FieldType.MONEY:
        (amount_a, cur_a), (amount_b, cur_b) = parse_money(na), parse_money(nb)
        return amount_a == amount_b and (cur_a is None or cur_b is None or cur_a == cur_b)
    return bool(na == nb)


def _grouped(amount: Decimal) -> str:
    text = format(amount, "f")
    sign = "-" if text.startswith("-") else ""
    whole, _, frac = text.lstrip("-").partition(".")
    return sign + f"{int(whole):,}" + (f".{frac}" if frac else "")


def display(spec: FieldSpec, value: Any) -> str:
    """Return the value as reviewers read it ("" for None); the text normalises back to the same value."""
    if _is_empty(value):
        return ""
    try:
        canonical = normalize(spec, value)
    except InvalidValue:
        return str(value)
    if canonical is None:
        return ""
    if spec.type == FieldType.BOOLEAN:
        return "Yes" if canonical else "No"
    if spec.type == FieldType.MONEY:
        amount, currency = parse_money(canonical)
        text = _grouped(amount)
        return f"{text} {currency}" if currency else text
    if spec.type == FieldType.NUMBER:
        return _grouped(Decimal(str(canonical)))
    return str(canonical)
