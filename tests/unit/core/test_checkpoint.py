from __future__ import annotations

import json

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


def test_latest_skips_incomplete_checkpoints_and_says_which(tmp_path, caplog):
    root = tmp_path / "ckpt"
    checkpoint.save(root, 2, {"policy": Group()}, {"step": 2})
    checkpoint.save(root, 4, {"policy": Group()}, {"step": 4})
    (root / ".tmp-step-6" / "policy").mkdir(parents=True)  # a writer killed mid-save
    assert checkpoint.latest(root) == root / "step-4"
    assert ".tmp-step-6" in caplog.text and "never renamed" in caplog.text
    (root / "step-4" / "policy" / "w").write_text("")  # a shard cut short
    caplog.clear()
    assert checkpoint.latest(root) == root / "step-2"
    assert "step-4" in caplog.text and "wrong size" in caplog.text
    (root / "step-2" / "COMPLETE").unlink()
    assert checkpoint.latest(root) is None
    assert "no COMPLETE marker" in caplog.text


def test_set_aside_metrics_keeps_each_step_once(tmp_path):
    rows = [{"step": s, "loss": float(s)} for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert checkpoint.set_aside_metrics(tmp_path, 2) == 2
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    undone = [json.loads(x) for x in (tmp_path / "metrics.undone.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2] and [r["step"] for r in undone] == [3, 4]
    assert checkpoint.set_aside_metrics(tmp_path, 2) == 0


def test_shared_storage_check_is_a_no_op_on_one_node(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.ray, "nodes", lambda: [{"Alive": True}])
    checkpoint.check_shared_storage(tmp_path / "run")
    assert not (tmp_path / "run").exists()
