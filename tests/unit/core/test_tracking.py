from __future__ import annotations

import pytest

from rlpost.config import config_from_dict
from rlpost.tracking import Tracker, read_metrics, read_wandb_history


def test_metrics_jsonl_and_config(tmp_path):
    cfg = config_from_dict({"model": {"path": "x"}})
    t = Tracker(cfg, tmp_path / "run", total_steps=2)
    t.log(1, {"reward/mean": 0.5, "timing_s/generate": 1.0})
    t.log(2, {"reward/mean": float("nan")})
    t.close()
    rows = read_metrics(tmp_path / "run/metrics.jsonl")
    assert rows[0] == {"step": 1, "reward/mean": 0.5, "timing_s/generate": 1.0}
    assert rows[1]["reward/mean"] is None
    assert "path: x" in (tmp_path / "run/config.yaml").read_text()


def test_log_line_shows_sft_loss_and_eval_accuracy(tmp_path, caplog):
    cfg = config_from_dict({"model": {"path": "x"}})
    t = Tracker(cfg, tmp_path / "run", total_steps=1)
    with caplog.at_level("INFO", logger="rlpost"):
        t.log(1, {"loss/sft": 0.25, "eval/accuracy": 0.5, "timing_s/step": 2.0, "other": 1.0})
    t.close()
    assert "step 1 loss=0.25 eval_acc=0.5 s/step=2" in caplog.text


def test_wandb_offline_run_holds_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = config_from_dict(
        {"model": {"path": "x"}, "logging": {"wandb": True, "wandb_mode": "offline"}}
    )
    t = Tracker(cfg, tmp_path / "run", total_steps=2)
    t.log(1, {"reward/mean": 0.25})
    t.log(2, {"reward/mean": 0.75})
    t.close()
    files = list((tmp_path / "run/wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history = read_wandb_history(files[0])
    assert [(h["step"], h["reward/mean"]) for h in history] == [(1, 0.25), (2, 0.75)]
