from __future__ import annotations

import pytest

from rlpost import checkpoint


class Group:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.loaded = None

    def save(self, path: str, client_state: dict) -> None:
        if self.fail:
            raise OSError("disk full")
        from pathlib import Path

        Path(path).mkdir()
        (Path(path) / "w").write_text(str(client_state["step"]))

    def load(self, path: str) -> dict:
        from pathlib import Path

        self.loaded = (Path(path) / "w").read_text()
        return {}


def test_save_is_atomic_and_latest_moves_only_on_success(tmp_path):
    root = tmp_path / "ckpt"
    checkpoint.save(root, 1, {"policy": Group()}, {"step": 1})
    assert checkpoint.latest(root).name == "step-1"
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(root, 2, {"policy": Group(fail=True)}, {"step": 2})
    assert checkpoint.latest(root).name == "step-1"  # the failed save left nothing behind
    assert not (root / "step-2").exists()
    checkpoint.save(root, 2, {"policy": Group()}, {"step": 2})
    checkpoint.save(root, 3, {"policy": Group()}, {"step": 3}, keep=2)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-2", "step-3"]
    g = Group()
    state = checkpoint.load(checkpoint.latest(root), {"policy": g})
    assert state["step"] == 3 and g.loaded == "3"
