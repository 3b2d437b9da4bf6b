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


def test_list_metrics_go_to_samples_jsonl_not_metrics(tmp_path):
    import json

    cfg = config_from_dict({"model": {"path": "x"}})
    t = Tracker(cfg, tmp_path / "run", total_steps=1)
    t.log(1, {"reward/mean": 0.5, "samples/solution": ["2", "4"]})
    t.close()
    assert read_metrics(tmp_path / "run/metrics.jsonl") == [{"step": 1, "reward/mean": 0.5}]
    row = json.loads((tmp_path / "run/samples.jsonl").read_text())
    assert row == {"step": 1, "samples/solution": ["2", "4"]}


def test_wandb_environment_fills_what_the_config_leaves_empty(monkeypatch):
    from rlpost.tracking import wandb_target

    monkeypatch.setenv("WANDB_PROJECT", "envproj")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep1")
    cfg = config_from_dict({"model": {"path": "x"}})
    assert wandb_target(cfg) == {"project": "envproj", "entity": "team", "group": "sweep1"}
    cfg = config_from_dict({"model": {"path": "x"}, "logging": {"wandb_project": "mine"}})
    assert wandb_target(cfg)["project"] == "mine"
    monkeypatch.delenv("WANDB_PROJECT")
    monkeypatch.delenv("WANDB_ENTITY")
    monkeypatch.delenv("WANDB_RUN_GROUP")
    cfg = config_from_dict({"model": {"path": "x"}})
    assert wandb_target(cfg) == {"project": "rlpost", "entity": None, "group": None}
