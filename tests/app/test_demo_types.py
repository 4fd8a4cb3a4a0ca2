"""The demo's types are defined once (extraction.demo_types): the app seeds them, the offline model's tests
and bench read them without a database, and both views agree."""

from __future__ import annotations

import pytest

from extraction import demo_types
from reviewapp import demo
from reviewapp.models import DocumentType


@pytest.mark.django_db
def test_the_seeded_demo_types_are_the_shared_demo_schemas(
    receipt_type: DocumentType, invoice_type: DocumentType
) -> None:
    assert demo.TYPES is demo_types.TYPES
    assert list(demo_types.SCHEMAS) == ["receipt", "invoice"]
    for doc_type in (receipt_type, invoice_type):
        assert doc_type.to_schema() == demo_types.SCHEMAS[doc_type.slug]
