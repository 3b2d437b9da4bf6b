"""Env tests: the nano tokenizer, torch on one thread."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer

    from rlpost.models import tiny

    return AutoTokenizer.from_pretrained(tiny.ensure("nano"))
