"""The two document types the demo seeds (receipt and invoice), defined once, without Django.

`reviewapp.demo` seeds them into the database (`TYPES`, the rows `demo.ensure_type` reads); code that runs
without the app's database uses them as the pipeline sees them (`SCHEMAS`, `RECEIPT`, `INVOICE`): the
offline model's tests (tests/core/test_heuristic.py) and its calibration bench
(bench/heuristic_calibration.py), scored against samples/truth.json.
"""

from __future__ import annotations

from typing import Any

from .schemas import DocumentSchema, FieldSpec, FieldType

# Per type: name, description and its fields as (name, type, description, required, threshold, choices).
TYPES: dict[str, dict[str, Any]] = {
    "receipt": {
        "name": "Receipt",
        "description": "A till receipt from a shop or restaurant.",
        "fields": [
            ("company", "text", "Name of the shop or company that issued the receipt", True, 0.85, []),
            ("date", "date", "Date of the purchase", True, 0.85, []),
            ("address", "text", "Postal address of the shop", False, 0.8, []),
            ("total", "money", "Total amount paid, including tax", True, 0.9, []),
        ],
    },
    "invoice": {
        "name": "Invoice",
        "description": "A supplier invoice asking for payment.",
        "fields": [
            ("invoice_number", "text", "The invoice number or reference", True, 0.85, []),
            ("vendor", "text", "Name of the company that issued the invoice", True, 0.85, []),
            ("invoice_date", "date", "Date the invoice was issued", True, 0.85, []),
            ("due_date", "date", "Date payment is due", False, 0.8, []),
            ("currency", "enum", "Currency of the amounts", False, 0.8, ["USD", "EUR", "GBP", "MYR"]),
            ("subtotal", "money", "Total before tax", False, 0.85, []),
            ("tax", "money", "Tax amount (VAT, GST, sales tax)", False, 0.85, []),
            ("total", "money", "Total amount due, including tax", True, 0.9, []),
            ("paid", "boolean", "Whether the invoice is marked as paid", False, 0.9, []),
        ],
    },
}


def schema(slug: str) -> DocumentSchema:
    """Return a demo type as the pipeline sees it (what DocumentType.to_schema gives once it is seeded)."""
    spec = TYPES[slug]
    fields = tuple(
        FieldSpec(name=n, type=FieldType(t), description=d, required=r, threshold=th, choices=tuple(c))
        for n, t, d, r, th, c in spec["fields"]
    )
    return DocumentSchema(slug=slug, name=spec["name"], description=spec["description"], fields=fields)


SCHEMAS = {slug: schema(slug) for slug in TYPES}
RECEIPT, INVOICE = SCHEMAS["receipt"], SCHEMAS["invoice"]
