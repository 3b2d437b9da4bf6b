"""Reward tests: keep torch on one thread; name user reward functions by path like a user would."""

from pathlib import Path

import pytest
import torch

USER = Path(__file__).resolve().parent / "user_rewards.py"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def spec():
    """spec("raises") -> '/abs/path/user_rewards.py:raises'."""
    return lambda name: f"{USER}:{name}"
