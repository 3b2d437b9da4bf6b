"""Reward tests: keep torch on one thread; name user reward functions by path like a user would."""

from pathlib import Path

import pytest

USER = Path(__file__).resolve().parent / "user_rewards.py"


@pytest.fixture
def spec():
    """spec("raises") -> '/abs/path/user_rewards.py:raises'."""
    return lambda name: f"{USER}:{name}"
