"""The copies in tests/reference/ are the published files in ../shared/reference/, byte for byte.
(`recordings/` is the project's own: exchanges kept from the azure-ai-ml SDK's recorded Azure traffic.)"""

from __future__ import annotations

import pytest

from tests.conftest import REFERENCE, SOURCE_REFERENCE


def test_copies_match_the_source_reference():
    if not SOURCE_REFERENCE.is_dir():
        pytest.skip("../shared/reference is not beside the project: the copies are all there is")
    source = {p.relative_to(SOURCE_REFERENCE) for p in SOURCE_REFERENCE.rglob("*") if p.is_file() and p.name != "README.md"}
    copies = {p.relative_to(REFERENCE) for p in REFERENCE.rglob("*")
              if p.is_file() and p.name != "README.md" and p.relative_to(REFERENCE).parts[0] != "recordings"}
    assert copies == source
    for rel in source:
        assert (REFERENCE / rel).read_bytes() == (SOURCE_REFERENCE / rel).read_bytes(), rel
