"""Env tests: the nano tokenizer, torch on one thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer

    from rlpost.models import tiny

    return AutoTokenizer.from_pretrained(tiny.ensure("nano"))


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
