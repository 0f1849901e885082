"""Shared test fixtures. Tests run offline: no hub traffic, no telemetry."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from cm2data.formats import FORMATS  # noqa: E402
from cm2data.formats.rows import iter_rows  # noqa: E402
from cm2data.schema import Dialogue  # noqa: E402

TESTS = Path(__file__).parent
REFERENCE = TESTS / "fixtures" / "cm2-reference"
SAMPLE = TESTS.parent / "cm2data" / "data" / "sample" / "dialogues.json"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture()
def reference_record() -> Dialogue:
    """The CM2 reference record, freshly read (tests may mutate it)."""
    (_, row), = list(iter_rows(REFERENCE / "checklist_annotated.json"))
    return FORMATS["cm2"].read(row)


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE
