"""Algorithm unit tests: hand-made batches, one torch thread, configs without model files."""

from __future__ import annotations

import pytest

from rlpost.config import load_config


@pytest.fixture
def make_cfg():
    def make(*overrides: str):
        return load_config(None, ["model.path=unused", *overrides], validate_paths=False)

    return make
