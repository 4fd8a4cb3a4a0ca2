"""Turning uploads into text: formats, encodings, limits and hostile files."""

from __future__ import annotations

import time
import zlib
from email.message import EmailMessage
from pathlib import Path

import pytest

from extraction.documents import PDF_PAGE_SEPARATOR, DocumentError, ExtractedText, extract_text, html_to_text

DOCS = Path(__file__).resolve().parent.parent / "fixtures" / "docs"


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def make_pdf(pages: list[list[str]], *, streams: dict[int, tuple[bytes, str | None]] | None = None) -> bytes:
    """Build a minimal valid PDF: one Helvetica text line per entry, one content stream per page.

    ``streams`` replaces page i's content stream with raw (data, filter) bytes, e.g. a zlib bomb.
    """
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    kids = []
    for i, lines in enumerate(pages):
        page_no, content_no = 4 + 2 * i, 5 + 2 * i
        kids.append(f"{page_no} 0 R")
        if streams and i in streams:
            data, filter_name = streams[i]
        else:
            ops = [
                "BT",
                "/F1 12 Tf",
                "14 TL",
                "72 720 Td",
                *(f"{_pdf_string(line)} Tj T*" for line in lines),
                "ET",
            ]
            data, filter_name = "\n".join(ops).encode("latin-1"), None
        objects[page_no] = (
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_no} 0 R >>"
        ).encode()
        head = f"<< /Length {len(data)}{f' /Filter {filter_name}' if filter_name else ''} >>".encode()
        objects[content_no] = head + b"\nstream\n" + data + b"\nendstream"
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += f"{number} 0 obj\n".encode() + objects[number] + b"\nendobj\n"
    xref, size = len(out), max(objects) + 1
    out += f"xref\n0 {size}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offsets[n]:010d} 00000 n \n".encode() for n in range(1, size))
    out += f"trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def error_code(data: bytes, filename: str, content_type: str | None = None, **limits: int) -> str:
    with pytest.raises(DocumentError) as info:
        extract_text(data, filename, content_type, **limits)
    assert str(info.value)  # every refusal carries a message for the user
    return info.value.code


# --- plain text ------------------------------------------------------------------------------------


def test_utf8_text_newlines_and_stray_controls_are_normalised() -> None:
    result = extract_text("Grüße\r\nTotal:\t12,50 €\r\n\x07end\rx\x1b".encode(), "note.txt")
    assert result == ExtractedText(text="Grüße\nTotal:\t12,50 €\nend\nx", kind="text", pages=[], warnings=[])


def test_nul_bytes_mean_binary() -> None:
    # Like git and grep: a NUL in the first kilobytes is not text in any 8-bit encoding.
    assert error_code(b"looks like text\x00but is not", "a.txt") == "binary"


def test_text_fixture_file() -> None:
    result = extract_text((DOCS / "invoice.txt").read_bytes(), "invoice.txt")
    assert result.kind == "text"
    assert "Rechnung Nr. 2024-001" in result.text
    assert "\r" not in result.text


def test_markdown_and_csv() -> None:
    assert extract_text((DOCS / "invoice.md").read_bytes(), "invoice.md").kind == "markdown"
    csv = extract_text(b"item,price\npen,1.00\n", "items.csv")
    assert (csv.kind, csv.text) == ("text", "item,price\npen,1.00\n")


def test_utf8_bom_is_dropped() -> None:
    assert extract_text(b"\xef\xbb\xbfHello", "a.txt").text == "Hello"


def test_utf16_with_bom() -> None:
    result = extract_text((DOCS / "invoice_utf16.txt").read_bytes(), "invoice_utf16.txt")
    assert result.text.startswith("Rechnung Nr. 2024-001\nGrüße")
    assert result.warnings == []


def test_utf16_without_bom_is_recognised() -> None:
    result = extract_text("Grüße, Welt".encode("utf-16-le"), "a.txt")
    assert result.text == "Grüße, Welt"
    assert result.warnings == ["decoded as UTF-16-LE without a byte order mark"]


def test_mostly_utf8_with_broken_bytes_is_replaced() -> None:
    result = extract_text("Grüße über alles ".encode() + b"\xff\xfe kaputt", "a.txt")
    assert result.text == "Grüße über alles \ufffd\ufffd kaputt"
    assert result.warnings == ["invalid utf-8 replaced (2 characters)"]


def test_legacy_cp1252_text_is_decoded() -> None:
    result = extract_text((DOCS / "invoice_cp1252.txt").read_bytes(), "invoice_cp1252.txt")
    assert "Grüße \u2013 Summe 12,50 €" in result.text  # en dash, 0x96 in cp1252
    assert result.warnings == ["not valid UTF-8; decoded as Windows-1252"]


def test_declared_charset_is_used_when_not_utf8() -> None:
    result = extract_text("Grüße".encode("iso-8859-15"), "a.txt", "text/plain; charset=ISO-8859-15")
    assert result.text == "Grüße"


def test_empty_and_whitespace_only() -> None:
    assert error_code(b"", "a.txt") == "empty"
    assert error_code(b" \r\n\t\n ", "a.txt") == "empty"
    assert error_code(b"<html><script>x()</script></html>", "a.html") == "empty"


def test_png_renamed_to_txt_is_binary() -> None:
    assert error_code((DOCS / "photo_renamed.txt").read_bytes(), "photo.txt") == "binary"


def test_random_junk_named_txt_is_binary() -> None:
    junk = bytes((i * 7919) % 256 for i in range(4096))
    assert error_code(junk, "data.txt") == "binary"


def test_control_characters_without_nul_are_binary() -> None:
    assert error_code(bytes(range(1, 32)) * 20, "data.txt") == "binary"


def test_oversized_upload_is_refused_before_parsing() -> None:
    # Not even a valid PDF: the size check must come first.
    assert error_code(b"%PDF-1.4 " + b"x" * 200, "big.pdf", max_bytes=100) == "too_large"
    assert error_code(b"a" * 101, "big.txt", max_bytes=100) == "too_large"


def test_text_is_truncated_to_max_chars() -> None:
    result = extract_text(b"abcdefghij" * 10, "a.txt", max_chars=25)
    assert result.text == ("abcdefghij" * 3)[:25]
    assert result.warnings == ["text truncated to 25 characters"]


def test_unsupported_types() -> None:
    assert error_code(b"PK\x03\x04rest-of-a-docx", "letter.docx") == "unsupported_type"
    assert error_code(b"\x89PNG\r\n\x1a\n\x00\x00", "scan.png") == "unsupported_type"
    assert error_code(b"GIF89a....", "upload", "image/gif") == "unsupported_type"
    assert error_code(b"\x00\x01\x02binary", "upload") == "unsupported_type"


def test_unknown_extension_text_is_sniffed() -> None:
    assert extract_text(b"plain words", "upload").kind == "text"
    assert extract_text(b"<!DOCTYPE html><p>Hi</p>", "upload").kind == "html"
    assert extract_text(b"<p>Hi</p>", "upload.bin", "text/html; charset=utf-8").text == "Hi"


def test_text_mentioning_the_pdf_header_is_not_a_pdf() -> None:
    assert extract_text(b"%PDF- starts every PDF file", "notes.txt").kind == "text"


# --- HTML -------------------------------------------------------------------------------------------


def test_html_fixture_drops_script_and_style() -> None:
    result = extract_text((DOCS / "invoice.html").read_bytes(), "invoice.html")
    assert result.kind == "html"
    text = result.text
    assert "alert" not in text and "color:" not in text and "tracking" not in text
    assert "<" not in text
    assert "Rechnung 2024-001" in text
    assert "Summe: 12,50 € & keine Skonto" in text
    assert "- Beratung\n- Reisekosten" in text
    assert "Posten\tBetrag\nBeratung\t10,00" in text


def test_html_to_text_blocks_entities_and_pre() -> None:
    html = (
        "<h1>Title</h1><p>a&nbsp;&lt;b&gt;   c</p><div>x</div><div>y</div><pre>  keep\n    this</pre>z<br>w"
    )
    assert html_to_text(html) == "Title\n\na <b> c\n\nx\ny\n\n  keep\n    this\n\nz\nw"


def test_html_unclosed_script_hides_the_rest() -> None:
    assert extract_text(b"<p>visible</p><script>var a = '<p>hidden</p>'", "a.html").text == "visible"


def test_large_html_stops_parsing_at_the_text_limit() -> None:
    result = extract_text(b"<p>abc</p>" * 100_000, "big.html", max_chars=50)
    assert len(result.text) == 50
    assert result.warnings == ["text truncated to 50 characters"]


def test_html_meta_charset() -> None:
    data = b'<html><head><meta charset="windows-1252"></head><body>Gr\xfc\xdfe \x80</body></html>'
    assert extract_text(data, "a.htm").text == "Grüße €"


# --- PDF --------------------------------------------------------------------------------------------


def test_pdf_pages_and_spans() -> None:
    pdf = make_pdf([["Invoice INV-1", "Total: 12.50 EUR (net)"], ["Page two"]])
    result = extract_text(pdf, "invoice.pdf", "application/pdf")
    assert result.kind == "pdf"
    assert result.text == "Invoice INV-1\nTotal: 12.50 EUR (net)" + PDF_PAGE_SEPARATOR + "Page two"
    assert [result.text[s:e] for s, e in result.pages] == [
        "Invoice INV-1\nTotal: 12.50 EUR (net)",
        "Page two",
    ]
    assert result.warnings == []


def test_pdf_fixture_file() -> None:
    result = extract_text((DOCS / "invoice.pdf").read_bytes(), "invoice.pdf")
    assert len(result.pages) == 2
    first = result.text[slice(*result.pages[0])]
    assert "ACME GmbH" in first and "Total: 1,234.50 EUR" in first


def test_pdf_is_recognised_by_content_whatever_its_name() -> None:
    assert extract_text(make_pdf([["Hello"]]), "upload.txt").kind == "pdf"


def test_compressed_pdf_stream() -> None:
    data = zlib.compress(b"BT /F1 12 Tf 72 720 Td (Compressed hello) Tj ET")
    result = extract_text(make_pdf([[]], streams={0: (data, "/FlateDecode")}), "c.pdf")
    assert result.text == "Compressed hello"


def test_pdf_without_text_layer() -> None:
    with pytest.raises(DocumentError) as info:
        extract_text(make_pdf([[], []]), "scan.pdf")
    assert info.value.code == "pdf_unreadable"
    assert "no text layer" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        make_pdf([["Hello"]])[:150],  # cut short
        b"%PDF-1.4\nthis is not really a PDF\n%%EOF\n",
        make_pdf([["Hello"]]).replace(b"/Pages 2 0 R", b"/Pages 99 0 R"),  # dangling page tree
    ],
)
def test_corrupted_pdf(data: bytes) -> None:
    assert error_code(data, "broken.pdf") == "pdf_unreadable"


def test_named_pdf_that_is_not_a_pdf() -> None:
    assert error_code(b"hello", "invoice.pdf") == "pdf_unreadable"


def test_pdf_too_many_pages() -> None:
    pdf = make_pdf([["one"], ["two"], ["three"]])
    assert error_code(pdf, "long.pdf", max_pdf_pages=2) == "pdf_too_many_pages"
    assert len(extract_text(pdf, "long.pdf", max_pdf_pages=3).pages) == 3


def test_pdf_text_is_truncated_at_max_chars() -> None:
    pdf = make_pdf([["Hello world"], ["Second page"], ["Third page"]])
    result = extract_text(pdf, "p.pdf", max_chars=16)
    assert result.text == "Hello world" + PDF_PAGE_SEPARATOR + "Se"
    assert result.pages == [(0, 11), (14, 16)]
    assert result.warnings == ["text truncated to 16 characters (at page 2 of 3)"]


def test_pdf_decompression_bomb_is_refused_quickly() -> None:
    # ~60 KB of zlib that would inflate to 64 MB, four times the per-stream limit.
    bomb = zlib.compress(b" " * 64_000_000, 9)
    pdf = make_pdf([["x"]], streams={0: (bomb, "/FlateDecode")})
    started = time.monotonic()
    assert error_code(pdf, "bomb.pdf") == "decompression_bomb"
    assert time.monotonic() - started < 30  # a hang guard: inflating all 64 MB would take minutes


def test_pdf_with_a_huge_text_stream_stays_within_limits() -> None:
    # Within the decompression limit, but far more text than allowed: extraction stops at max_chars
    # instead of grinding through pypdf's super-linear text assembly.
    line = b"(" + b"A" * 95 + b") Tj T*\n"
    ops = b"BT /F1 12 Tf 14 TL 72 720 Td\n" + line * 40_000 + b"ET"
    pdf = make_pdf([["x"]], streams={0: (zlib.compress(ops, 9), "/FlateDecode")})
    started = time.monotonic()
    result = extract_text(pdf, "wordy.pdf", max_chars=20_000)
    assert len(result.text) == 20_000
    assert result.warnings == ["text truncated to 20000 characters (at page 1 of 1)"]
    assert time.monotonic() - started < 60  # a hang guard: unbounded, pypdf takes minutes on this stream


def test_pdf_with_too_many_operators_is_refused() -> None:
    ops = b"BT /F1 12 Tf 14 TL 72 720 Td\n" + b"(A) Tj T*\n" * 200_000 + b"ET"
    pdf = make_pdf([["x"]], streams={0: (zlib.compress(ops, 9), "/FlateDecode")})
    assert error_code(pdf, "ops.pdf") == "decompression_bomb"


def test_encrypted_pdf() -> None:
    import io

    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf([["Secret"]]))))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    locked = io.BytesIO()
    writer.write(locked)
    assert error_code(locked.getvalue(), "locked.pdf") == "encrypted"

    # A permissions-only lock (empty user password) opens fine.
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf([["Open"]]))))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    unlocked = io.BytesIO()
    writer.write(unlocked)
    assert extract_text(unlocked.getvalue(), "open.pdf").text == "Open"


# --- e-mail -----------------------------------------------------------------------------------------


def test_eml_fixture_with_html_body() -> None:
    result = extract_text((DOCS / "invoice.eml").read_bytes(), "invoice.eml")
    assert result.kind == "email"
    assert result.pages == []
    lines = result.text.splitlines()
    assert lines[:4] == [
        "From: ACME Billing <billing@acme.example>",
        "To: ap@customer.example",
        "Subject: Rechnung 2024-001",
        "Date: Fri, 01 Mar 2024 10:00:00 +0100",
    ]
    assert "Summe: 12,50 €" in result.text
    assert "track()" not in result.text and "<p>" not in result.text


def test_eml_plain_body_attachments_and_forward() -> None:
    msg = EmailMessage()
    msg["From"] = "billing@acme.example"
    msg["Subject"] = "Invoice attached"
    msg.set_content("Please find the invoice attached.")
    msg.add_alternative("<p>Please find the <b>HTML</b> invoice attached.</p>", subtype="html")
    msg.add_attachment(make_pdf([["Invoice INV-9", "Total 99.00"]]), "application", "pdf", filename="inv.pdf")
    msg.add_attachment("item,price\npen,1.00\n", filename="items.csv")
    msg.add_attachment(b"\x89PNG\r\n\x1a\n\x00", "image", "png", filename="logo.png")
    forwarded = EmailMessage()
    forwarded["Subject"] = "Original"
    forwarded.set_content("forwarded body")
    msg.add_attachment(forwarded)

    result = extract_text(msg.as_bytes(), "mail.eml", "message/rfc822")
    text = result.text
    assert text.startswith("From: billing@acme.example\nSubject: Invoice attached\n\nPlease find the invoice")
    assert "HTML" not in text  # the HTML twin of the plain body is not repeated
    assert "--- Attachment: inv.pdf ---\nInvoice INV-9\nTotal 99.00" in text
    assert "--- Attachment: items.csv ---\nitem,price\npen,1.00" in text
    assert "Subject: Original\n\nforwarded body" in text
    assert result.warnings == ["attachment skipped: logo.png (image/png)"]


def test_eml_with_broken_pdf_attachment_warns() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Broken"
    msg.set_content("body")
    msg.add_attachment(b"%PDF-1.4 garbage", "application", "pdf", filename="bad.pdf")
    result = extract_text(msg.as_bytes(), "mail.eml")
    assert result.text == "Subject: Broken\n\nbody"
    assert result.warnings == ["attachment bad.pdf: The PDF could not be read (damaged or malformed)."]


def test_eml_unknown_charset_falls_back() -> None:
    raw = b"Subject: x\nContent-Type: text/plain; charset=x-unknown\n\nGr\xc3\xbc\xc3\x9fe"
    assert extract_text(raw, "m.eml").text == "Subject: x\n\nGrüße"
