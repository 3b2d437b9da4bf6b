"""Algorithm unit tests: hand-made batches, one torch thread, configs without model files."""

from __future__ import annotations

import pytest
import torch

from rlpost.config import load_config


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def make_cfg():
    def make(*overrides: str):
        return load_config(None, ["model.path=unused", *overrides], validate_paths=False)

    return make
