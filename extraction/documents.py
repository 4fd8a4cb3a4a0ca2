"""Turn an uploaded file into plain text, safely.

Uploads are untrusted: every format is read with size, page and decompression limits, and any failure is
reported as a DocumentError whose ``code`` the web app can map to a message for the user.

The text returned is what every later step (chunking, prompts, evidence offsets, the review screen) works
on, so it is normalised once here: ``\\n`` newlines only, no NUL or other control characters except tab,
newline and form feed. PDF pages are joined with ``PDF_PAGE_SEPARATOR`` (newline, form feed, newline),
and ``ExtractedText.pages`` gives each page's [start, end) span in the text, separator excluded.
"""

from __future__ import annotations

import codecs
import email
import email.policy
import io
import logging
import re
import time
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from html.parser import HTMLParser
from pathlib import PurePosixPath

import pypdf
from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PyPdfError

__all__ = [
    "PDF_PAGE_SEPARATOR",
    "DocumentError",
    "ExtractedText",
    "extract_text",
    "html_to_text",
]

log = logging.getLogger(__name__)

# A form feed is the traditional page break in plain text; the newlines around it keep the last line of
# one page and the first line of the next from running together for the model.
PDF_PAGE_SEPARATOR = "\n\f\n"

# Limits applied to pypdf while reading one PDF. They are far above what a real page needs and low enough
# that a crafted stream fails in well under a second instead of exhausting memory or CPU.
PDF_MAX_STREAM_BYTES = 16_000_000  # decoded size of any one stream
PDF_MAX_STREAM_WORK = 64_000_000  # accumulated decoding work for any one stream
PDF_MAX_PARSE_OPS = 300_000  # operands and operators per content stream (~15 µs each in pypdf)
PDF_MAX_RECOVERY_BYTES = 500_000  # corrupt zlib data is re-read byte by byte, which is slow
# Wall-clock budget for a PDF's text extraction, checked as text is produced (parsing one content stream,
# bounded by PDF_MAX_PARSE_OPS, can overrun it by a few seconds).
PDF_TIME_BUDGET_SECONDS = 30.0

_SNIFF_BYTES = 8192
_BINARY_CONTROL_RATIO = 0.10

# Control characters that never belong in document text: C0 except tab/newline/form feed, DEL, and C1
# (these last appear when bytes that were not text are decoded as Latin-1).
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
# C0 controls that plain text does not use; C1 is left out because cp1252 text decoded as Latin-1 has it.
_BINARY_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_PDF_HEADER = re.compile(rb"%PDF-\d\.\d")
_WS_RUN = re.compile(r"[ \t\r\n\f\v\u00a0]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)

# Signatures of common binary formats, to tell a renamed image from a text file without decoding it.
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"PK\x03\x04", "ZIP archive (or Office document)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Office document"),
    (b"\x1f\x8b", "gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\x7fELF", "executable"),
)

_PDF_EXT = {".pdf"}
_EMAIL_EXT = {".eml"}
_HTML_EXT = {".html", ".htm", ".xhtml"}
_MARKDOWN_EXT = {".md", ".markdown"}
_TEXT_EXT = {".txt", ".text", ".csv", ".tsv", ".log", ".json", ".xml"}
_UNSUPPORTED_EXT = {
    ".doc",
    ".docx",
    ".odt",
    ".rtf",
    ".xls",
    ".xlsx",
    ".ods",
    ".ppt",
    ".pptx",
    ".odp",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".tif",
    ".tiff",
    ".bmp",
    ".webp",
    ".heic",
    ".zip",
    ".gz",
    ".7z",
    ".rar",
    ".exe",
    ".msg",
}
_SUPPORTED_HINT = "upload a PDF, a text, Markdown, CSV or HTML file, or an .eml e-mail"

_HTML_SKIP = {"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas"}
# Elements that end a paragraph (blank line) or a line; everything else is inline.
_HTML_PARAGRAPH = {
    "address",
    "article",
    "aside",
    "blockquote",
    "dl",
    "fieldset",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "title",
    "ul",
}
_HTML_LINE = {"caption", "dd", "div", "dt", "figcaption", "li", "tbody", "tfoot", "thead", "tr"}
_HTML_CELL = {"td", "th"}

_MAX_EMAIL_DEPTH = 3
_MAX_EMAIL_ATTACHMENTS = 20


class DocumentError(ValueError):
    """An upload that cannot be turned into text; ``code`` is machine-readable, the message is for users.

    Codes: "empty", "too_large", "binary", "unsupported_type", "pdf_unreadable", "pdf_too_many_pages",
    "decompression_bomb", "encrypted".
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ExtractedText:
    """The text of a document and how it was obtained.

    ``kind`` is "text", "markdown", "html", "pdf" or "email". ``pages`` holds the [start, end) character
    span of each PDF page in ``text`` (page 1 first; empty for other kinds, and pages after a truncation
    point are absent). ``warnings`` are short human-readable notes such as "text truncated ...".
    """

    text: str
    kind: str
    pages: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Limits:
    max_chars: int
    max_pdf_pages: int


# --------------------------------------------------------------------------------------------------
# Entry point


def extract_text(
    data: bytes,
    filename: str,
    content_type: str | None = None,
    *,
    max_bytes: int = 10_000_000,
    max_chars: int = 1_000_000,
    max_pdf_pages: int = 500,
) -> ExtractedText:
    """Return the text of an uploaded file, or raise DocumentError saying why there is none.

    Choose the reader from the PDF signature first, then the file extension, then the content type, and
    finally by sniffing the bytes. Refuse oversized uploads before parsing anything; cut the text at
    ``max_chars`` with a warning; refuse PDFs of more than ``max_pdf_pages`` pages.
    """
    if not data:
        raise DocumentError("empty", "The file is empty.")
    if len(data) > max_bytes:
        raise DocumentError(
            "too_large", f"The file is too large ({_size(len(data))}; the limit is {_size(max_bytes)})."
        )
    limits = _Limits(max_chars=max_chars, max_pdf_pages=max_pdf_pages)
    ext = PurePosixPath((filename or "").replace("\\", "/")).suffix.lower()
    mime, charset = _parse_content_type(content_type)
    kind = _detect_kind(data, ext, mime)

    warnings: list[str] = []
    pages: list[tuple[int, int]] = []
    if kind == "pdf":
        text, pages = _pdf_text(data, limits, warnings)
    elif kind == "email":
        # Only the header block is checked: a (rare) 8-bit attachment may legitimately carry NUL bytes.
        _refuse_binary(data[:1024], ext)
        text = _email_text(email.message_from_bytes(data, policy=email.policy.default), limits, warnings)
    else:
        _refuse_binary(data, ext)
        if kind == "html":
            charset = charset or _html_meta_charset(data)
        decoded = _decode(data, charset, warnings)
        text = decoded
        if kind == "html":
            text, stopped = _html_text(decoded, max_chars)
            if stopped and len(text) <= max_chars:
                # Blank-line folding shrank the text under the limit, but the rest of the page was skipped.
                warnings.append(f"text truncated to {max_chars} characters")
    return _finish(text, kind, pages, warnings, limits.max_chars)


def _detect_kind(data: bytes, ext: str, mime: str) -> str:
    """Return which reader handles the upload, or raise DocumentError for formats that have none."""
    # Content beats the file name. Readers accept junk before the header when the name says PDF; otherwise
    # only a leading header counts, so a text file that merely mentions "%PDF-" stays text.
    named_pdf = ext in _PDF_EXT or mime == "application/pdf"
    if _PDF_HEADER.match(data.lstrip()[:16]) or (named_pdf and _PDF_HEADER.search(data[:1024])):
        return "pdf"
    if named_pdf:
        raise DocumentError("pdf_unreadable", "The file is named as a PDF but is not a PDF document.")
    if ext in _EMAIL_EXT or mime == "message/rfc822":
        return "email"
    if ext in _HTML_EXT or mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if ext in _MARKDOWN_EXT or mime in ("text/markdown", "text/x-markdown"):
        return "markdown"
    if ext in _TEXT_EXT or mime.startswith("text/") or mime in ("application/json", "application/xml"):
        return "text"
    described = _magic(data)
    if ext in _UNSUPPORTED_EXT or described or (mime and mime != "application/octet-stream"):
        what = described or ext or mime
        raise DocumentError(
            "unsupported_type", f"This file type is not supported ({what}); {_SUPPORTED_HINT}."
        )
    # No usable name or type: sniff. Text that reads as text is accepted as such.
    head = data[:_SNIFF_BYTES].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "html"
    if _is_binary(data):
        raise DocumentError("unsupported_type", f"This file type is not supported; {_SUPPORTED_HINT}.")
    return "text"


def _finish(
    text: str, kind: str, pages: list[tuple[int, int]], warnings: list[str], max_chars: int
) -> ExtractedText:
    """Normalise, truncate and check the final text; PDF text arrives already normalised per page."""
    if kind != "pdf":
        text = _normalise(text)
    if len(text) > max_chars:
        text = text[:max_chars]
        warnings.append(f"text truncated to {max_chars} characters")
        pages = [(s, min(e, max_chars)) for s, e in pages if s < max_chars]
    if not text.strip():
        raise DocumentError("empty", "The document contains no text.")
    return ExtractedText(text=text, kind=kind, pages=pages, warnings=warnings)


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_CHARS.sub("", text)


def _size(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n} bytes"


def _parse_content_type(content_type: str | None) -> tuple[str, str | None]:
    """Return (mime type, charset) of a Content-Type header value; both lower-case, charset optional."""
    if not content_type:
        return "", None
    msg = Message()
    msg["Content-Type"] = content_type
    mime = msg.get_content_type().lower()
    if not content_type.strip().lower().startswith(mime.split("/")[0]):
        mime = ""  # Message falls back to text/plain for garbage; an unparsable type says nothing
    charset = msg.get_content_charset()
    return mime, (charset.lower() if charset else None)


# --------------------------------------------------------------------------------------------------
# Text decoding and binary detection


def _magic(data: bytes) -> str | None:
    return next((what for magic, what in _BINARY_MAGIC if data.startswith(magic)), None)


def _bom_codec(data: bytes) -> str | None:
    # UTF-32-LE's BOM starts with UTF-16-LE's, so the longer one is checked first.
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _utf16_without_bom(sample: bytes) -> str | None:
    """Return "utf-16-le"/"utf-16-be" when NUL bytes alternate the way BOM-less UTF-16 text does."""
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    even_nul, odd_nul = even.count(0) / len(even), odd.count(0) / len(odd)
    if odd_nul > 0.3 and even_nul < 0.05:
        return "utf-16-le"
    if even_nul > 0.3 and odd_nul < 0.05:
        return "utf-16-be"
    return None


def _control_ratio(text: str) -> float:
    if not text:
        return 0.0
    return len(_BINARY_CONTROLS.findall(text)) / len(text)


def _is_binary(data: bytes) -> bool:
    """Return True when the bytes are not text in any encoding this module reads."""
    if _magic(data):
        return True
    sample = data[:_SNIFF_BYTES]
    if _bom_codec(sample) or _utf16_without_bom(sample):
        return False
    # Like git and grep: a NUL byte in the first few kilobytes means binary.
    if b"\x00" in sample:
        return True
    return _control_ratio(sample.decode("latin-1")) > _BINARY_CONTROL_RATIO


def _refuse_binary(data: bytes, ext: str) -> None:
    if _is_binary(data):
        what = _magic(data) or "binary data"
        raise DocumentError(
            "binary", f"The file{f' ({ext})' if ext else ''} contains {what}, not text; {_SUPPORTED_HINT}."
        )


def _decode(data: bytes, declared: str | None, warnings: list[str]) -> str:
    """Decode text bytes: BOM, then strict UTF-8, then the declared charset, then cp1252/Latin-1."""
    bom = _bom_codec(data)
    if bom:
        text = data.decode(bom, errors="replace")
        if "\ufffd" in text:
            warnings.append(f"invalid {bom.upper()} replaced")
        return text
    utf16 = _utf16_without_bom(data[:_SNIFF_BYTES])
    if utf16:
        warnings.append(f"decoded as {utf16.upper()} without a byte order mark")
        return data.decode(utf16, errors="replace")
    try:
        # Strict UTF-8 first even over a declared charset: random legacy text is almost never valid UTF-8,
        # while "charset=iso-8859-1" on a UTF-8 file is a common mislabel.
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if declared and declared.replace("_", "-") not in ("utf-8", "utf8"):
        try:
            return data.decode(declared, errors="replace")
        except LookupError:
            warnings.append(f"unknown charset {declared!r} ignored")
    lenient = data.decode("utf-8", errors="replace")
    bad = lenient.count("\ufffd")
    good_non_ascii = len(lenient) - len(lenient.encode("ascii", "ignore")) - bad
    if good_non_ascii >= bad:
        # Mostly UTF-8 with a few broken bytes (a bad copy, a cut multi-byte character): keep UTF-8.
        warnings.append(f"invalid utf-8 replaced ({bad} character{'s' if bad != 1 else ''})")
        return lenient
    try:
        text = data.decode("cp1252")
        warnings.append("not valid UTF-8; decoded as Windows-1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
        warnings.append("not valid UTF-8; decoded as Latin-1")
    return text


def _html_meta_charset(data: bytes) -> str | None:
    match = _META_CHARSET.search(data[:4096])
    return match.group(1).decode("ascii").lower() if match else None


# --------------------------------------------------------------------------------------------------
# HTML


_LINE, _PARAGRAPH = "\n", "\n\n"


class _HTMLTextParser(HTMLParser):
    """Collect the readable text of an HTML document (the stdlib parser copes with broken markup)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.size = 0  # characters of text collected, to stop early on huge pages
        self._skip = 0
        self._pre = 0

    def _at_line_start(self) -> bool:
        return not self.parts or self.parts[-1].endswith(("\n", "\t"))

    def _break(self, newlines: str) -> None:
        """End the current line or paragraph; consecutive breaks merge instead of piling up."""
        if not self._pre:
            # Trailing spaces before a break are layout, not content.
            while self.parts and not self.parts[-1].rstrip(" "):
                self.parts.pop()
            if self.parts:
                self.parts[-1] = self.parts[-1].rstrip(" ")
        if not self.parts:
            return  # no blank lines at the top
        last = self.parts[-1]
        have = len(last) - len(last.rstrip("\n"))
        if have < len(newlines):
            self.parts.append("\n" * (len(newlines) - have))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP:
            self._skip += 1
        elif tag == "br":
            self._break(_LINE)
        elif tag in _HTML_CELL:
            if not self._at_line_start():
                self.parts.append("\t")
        elif tag in _HTML_PARAGRAPH:
            self._break(_PARAGRAPH)
            self._pre += tag == "pre"
        elif tag in _HTML_LINE:
            self._break(_LINE)
        if tag == "li":
            self.parts.append("- ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <script/> or <div/> opens nothing: only the line breaks of self-closing tags matter.
        if tag in ("br", "hr"):
            self._break(_LINE)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _HTML_PARAGRAPH:
            if tag == "pre":
                self._pre = max(0, self._pre - 1)
            self._break(_PARAGRAPH)
        elif tag in _HTML_LINE:
            self._break(_LINE)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            self.parts.append(data)
            self.size += len(data)
            return
        text = _WS_RUN.sub(" ", data)
        if self._at_line_start():
            text = text.lstrip(" ")
        if text:
            self.parts.append(text)
            self.size += len(text)


def html_to_text(html: str) -> str:
    """Return the readable text of an HTML document: no scripts or styles, blocks on their own lines."""
    return _html_text(html, None)[0]


def _html_text(html: str, max_chars: int | None) -> tuple[str, bool]:
    """Return the text of ``html`` and whether parsing stopped early, past ``max_chars`` of text.

    Parsing is the slow part of a large page, so it stops once more text than can be kept was collected.
    """
    parser = _HTMLTextParser()
    step = 65_536
    stopped = False
    for offset in range(0, len(html), step):
        parser.feed(html[offset : offset + step])
        if max_chars is not None and parser.size > max_chars and offset + step < len(html):
            stopped = True
            break
    parser.close()
    text = "".join(parser.parts).replace("\u00a0", " ")
    return _MANY_NEWLINES.sub("\n\n", text).strip(), stopped


# --------------------------------------------------------------------------------------------------
# PDF


def _pdf_text(data: bytes, limits: _Limits, warnings: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Return the text of a PDF and each page's span in it, within the module's resource limits."""
    # apply_configuration sets a context variable, so these limits apply to this call only (thread-safe).
    with pypdf.apply_configuration(
        zlib_maximum_output_length=PDF_MAX_STREAM_BYTES,
        lzw_maximum_output_length=PDF_MAX_STREAM_BYTES,
        run_length_maximum_output_length=PDF_MAX_STREAM_BYTES,
        array_based_stream_maximum_output_length=PDF_MAX_STREAM_BYTES,
        stream_decoding_work_maximum_length=PDF_MAX_STREAM_WORK,
        stream_parsing_work_maximum_count=PDF_MAX_PARSE_OPS,
        zlib_maximum_recovery_input_length=PDF_MAX_RECOVERY_BYTES,
    ):
        try:
            return _read_pdf(data, limits, warnings)
        except DocumentError:
            raise
        except LimitReachedError as exc:
            log.info("PDF refused by pypdf limits: %s", exc)
            raise DocumentError(
                "decompression_bomb",
                "The PDF expands to far more data, or is far more complex, than a document should be; refused.",
            ) from exc
        except (FileNotDecryptedError, DependencyError) as exc:
            raise DocumentError(
                "encrypted", "The PDF is password-protected; upload an unlocked copy."
            ) from exc
        except (
            PyPdfError,
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            AttributeError,
            RecursionError,
        ) as exc:
            # pypdf surfaces malformed input as many exception types, not only its own.
            log.info("PDF unreadable: %r", exc)
            raise DocumentError(
                "pdf_unreadable", "The PDF could not be read (damaged or malformed)."
            ) from exc


def _read_pdf(data: bytes, limits: _Limits, warnings: list[str]) -> tuple[str, list[tuple[int, int]]]:
    reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted and not _try_empty_password(reader):
        raise DocumentError("encrypted", "The PDF is password-protected; upload an unlocked copy.")
    n_pages = len(reader.pages)
    if n_pages > limits.max_pdf_pages:
        raise DocumentError(
            "pdf_too_many_pages", f"The PDF has {n_pages} pages; the limit is {limits.max_pdf_pages}."
        )
    if n_pages == 0:
        raise DocumentError("pdf_unreadable", "The PDF has no pages.")

    parts: list[str] = []
    pages: list[tuple[int, int]] = []
    length = 0
    deadline = time.monotonic() + PDF_TIME_BUDGET_SECONDS
    for number, page in enumerate(reader.pages, start=1):
        start = length + (len(PDF_PAGE_SEPARATOR) if parts else 0)
        room = limits.max_chars - start
        if room <= 0:
            warnings.append(
                f"text truncated to {limits.max_chars} characters (at page {number} of {n_pages})"
            )
            break
        page_text, stop = _page_text(page, number, room, deadline, warnings)
        if stop is None and len(page_text) > room:
            stop = "chars"
        page_text = page_text[:room]
        parts.append(page_text)
        pages.append((start, start + len(page_text)))
        length = start + len(page_text)
        if stop == "chars":
            warnings.append(
                f"text truncated to {limits.max_chars} characters (at page {number} of {n_pages})"
            )
            break
        if stop == "time":
            warnings.append(f"PDF text extraction stopped at page {number} of {n_pages} (time limit)")
            break
    text = PDF_PAGE_SEPARATOR.join(parts)
    if not text.strip():
        raise DocumentError(
            "pdf_unreadable", "The PDF has no text layer (scanned PDF?); OCR is not supported."
        )
    return text, pages


class _StopPage(Exception):
    """Raised from inside pypdf's text visitor to abandon a page that is too long or too slow."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _page_text(
    page: pypdf.PageObject, number: int, room: int, deadline: float, warnings: list[str]
) -> tuple[str, str | None]:
    """Return one page's normalised text and why it was cut short ("chars", "time") or None.

    pypdf's extraction slows down more than linearly with the amount of text on a page, so the text
    visitor, which sees every piece as it is produced, stops it once the page outgrows the remaining
    character budget or the document's deadline passes. A damaged page is skipped with a warning; a
    decompression bomb (LimitReachedError) propagates and fails the document.
    """
    pieces: list[str] = []
    size = 0

    def visit(text: str, *_args: object) -> None:
        nonlocal size
        pieces.append(text)
        size += len(text)
        if size > room:
            raise _StopPage("chars")
        if time.monotonic() > deadline:
            raise _StopPage("time")

    stop: str | None = None
    try:
        raw = page.extract_text(visitor_text=visit) or ""
    except _StopPage as exc:
        # The visitor receives exactly the pieces pypdf concatenates, so this is the text so far.
        raw, stop = "".join(pieces), exc.reason
    except LimitReachedError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        log.info("PDF page %d unreadable: %r", number, exc)
        warnings.append(f"page {number} could not be read")
        return "", None
    return _normalise(raw).rstrip(), stop


def _try_empty_password(reader: pypdf.PdfReader) -> bool:
    """Return True when the PDF opens with the empty user password, as permission-only locks do."""
    try:
        return bool(reader.decrypt(""))
    except (PyPdfError, DependencyError, NotImplementedError):
        return False


# --------------------------------------------------------------------------------------------------
# E-mail


def _email_text(msg: EmailMessage, limits: _Limits, warnings: list[str], depth: int = 0) -> str:
    """Return headers, body and text attachments of an e-mail as one text."""
    lines: list[str] = []
    for name in ("From", "To", "Cc", "Subject", "Date"):
        try:
            value = msg.get(name)
        except Exception:  # header parsing in policy.default raises on some malformed headers
            value = None
        if value:
            lines.append(f"{name}: {' '.join(str(value).split())}")
    sections = ["\n".join(lines)] if lines else []

    body = _email_body(msg)
    if body is not None:
        sections.append(_part_text(body))

    used = sum(len(s) for s in sections)
    for index, part in enumerate(_email_attachments(msg, body)):
        label = part.get_filename() or part.get_content_type()
        room = limits.max_chars - used
        if index >= _MAX_EMAIL_ATTACHMENTS or room <= 0:
            # Every attachment may be a PDF with its own budget: bound the total work, not just the text.
            warnings.append(f"attachment skipped: {label} (too many attachments or text limit reached)")
            continue
        budget = _Limits(max_chars=room, max_pdf_pages=limits.max_pdf_pages)
        try:
            text = _attachment_text(part, label, budget, warnings, depth)
        except Exception:  # a malformed part must not cost the reader the rest of the message
            log.info("e-mail attachment %r unreadable", label, exc_info=True)
            warnings.append(f"attachment {label} could not be read")
            continue
        if text is not None and text.strip():
            sections.append(f"--- Attachment: {label} ---\n{text.strip()}")
            used += len(sections[-1]) + 2
    return "\n\n".join(s.strip("\n") for s in sections if s.strip())


def _email_body(msg: EmailMessage) -> EmailMessage | None:
    """Return the part holding the message body: text/plain unless empty, else text/html."""
    plain = msg.get_body(preferencelist=("plain",))
    if plain is not None and _safe_content(plain).strip():
        return plain  # type: ignore[return-value]
    html = msg.get_body(preferencelist=("html",))
    return html if html is not None else plain  # type: ignore[return-value]


def _email_attachments(msg: EmailMessage, body: Message | None) -> list[EmailMessage]:
    """Return the leaf parts other than the body and its alternative renderings."""
    found: list[EmailMessage] = []

    def walk(part: EmailMessage, parent_type: str) -> None:
        if part is body:
            return
        if part.get_content_type() == "message/rfc822":
            found.append(part)  # a forwarded e-mail: read as a whole, headers included
            return
        if part.is_multipart():
            for sub in part.iter_parts():
                walk(sub, part.get_content_type())  # type: ignore[arg-type]
            return
        if parent_type == "multipart/alternative" and not part.is_attachment():
            return  # another rendering of the body (e.g. the HTML twin of the plain text)
        if part.get_content_maintype() == "image" and not part.is_attachment():
            return  # inline pictures of an HTML body
        found.append(part)

    walk(msg, "")
    return found


def _safe_content(part: Message) -> str:
    """Return a text part's content, decoding it ourselves when its declared charset is unknown."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, ValueError, AttributeError):
        payload = part.get_payload(decode=True)
        return _decode(payload, None, []) if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def _part_text(part: Message) -> str:
    text = _safe_content(part)
    return html_to_text(text) if part.get_content_subtype() == "html" else text


def _attachment_text(
    part: EmailMessage, label: str, limits: _Limits, warnings: list[str], depth: int
) -> str | None:
    """Return the text of one attachment, or None (with a warning) when it has none worth reading."""
    ctype = part.get_content_type()
    name = (part.get_filename() or "").lower()
    if ctype == "message/rfc822" or name.endswith(".eml"):
        if depth >= _MAX_EMAIL_DEPTH:
            warnings.append(f"attachment skipped: {label} (e-mails nested too deeply)")
            return None
        inner = part.get_content() if ctype == "message/rfc822" else None
        if not isinstance(inner, EmailMessage):
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                return None
            inner = email.message_from_bytes(payload, policy=email.policy.default)
        return _email_text(inner, limits, warnings, depth + 1)  # type: ignore[arg-type]
    if ctype == "application/pdf" or name.endswith(".pdf"):
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            return None
        try:
            text, _pages = _pdf_text(payload, limits, warnings)
        except DocumentError as exc:
            warnings.append(f"attachment {label}: {exc.message}")
            return None
        return text
    if part.get_content_maintype() == "text":
        return _part_text(part)
    warnings.append(f"attachment skipped: {label} ({ctype})")
    return None
