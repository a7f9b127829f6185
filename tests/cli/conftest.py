"""Fixtures of the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import write_facts


@pytest.fixture
def facts(tmp_path: Path) -> Path:
    return write_facts(tmp_path / "facts.jsonl")
