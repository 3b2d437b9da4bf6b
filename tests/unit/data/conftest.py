"""Shared fixtures: the nano tokenizer (byte-level BPE + chat template) and a config factory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlpost.config import load_config


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer

    from rlpost.models import tiny

    return AutoTokenizer.from_pretrained(tiny.ensure("nano"))


@pytest.fixture
def make_cfg():
    def make(*overrides: str):
        return load_config(None, ["model.path=unused", *overrides], validate_paths=False)

    return make


@pytest.fixture
def write_jsonl():
    def write(path: Path, rows: list[dict]) -> Path:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write
