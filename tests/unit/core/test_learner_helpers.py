"""Pure parts of the learner: log-prob alignment, rank splitting/padding, DeepSpeed config."""

from __future__ import annotations

import sys

import torch

from rlpost.batch import build_sequences
from rlpost.config import config_from_dict
from rlpost.models.hf import token_logprobs
from rlpost.runtime.learner import (
    OPS_DIR_ENV,
    _even_chunks,
    _pad_rows,
    ds_config,
    lr_lambda,
    use_venv_ops_dir,
)


def test_token_logprobs_align_with_input_ids():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 2.0  # predicts token 2 at position 1
    logits[0, 1, 1] = 1.0
    ids = torch.tensor([[0, 2, 1]])
    lp = token_logprobs(logits, ids, temperature=1.0)
    z0 = torch.logsumexp(torch.tensor([0.0, 0.0, 2.0, 0.0]), 0)
    z1 = torch.logsumexp(torch.tensor([0.0, 1.0, 0.0, 0.0]), 0)
    assert torch.allclose(lp, torch.tensor([[0.0, 2.0 - z0, 1.0 - z1]]))
    half = token_logprobs(logits, ids, temperature=2.0)
    z0h = torch.logsumexp(torch.tensor([0.0, 0.0, 1.0, 0.0]), 0)
    assert torch.isclose(half[0, 1], 1.0 - z0h)


def test_pad_rows_gives_equal_ranks_with_zero_mask_rows():
    b = build_sequences([[1], [2], [3]], [[4, 5], [6], [7, 8]])
    padded = _pad_rows(b, 4)
    assert len(padded) == 4
    assert padded["response_mask"][3].sum() == 0
    assert padded["input_ids"][3].tolist() == b["input_ids"][0].tolist()
    parts = _even_chunks(padded, 2)
    assert [len(p) for p in parts] == [2, 2]
    pairs = _even_chunks(_pad_rows(b.select([0, 1, 2, 0]), 8), 2, row_multiple=2)
    assert [len(p) for p in pairs] == [4, 4]


def test_ds_config_from_learner_section():
    cfg = config_from_dict(
        {
            "model": {"path": "x"},
            "learner": {
                "zero_stage": 3,
                "offload": True,
                "lr": 3e-4,
                "grad_clip": 0.5,
                "warmup_steps": 5,
                "lr_schedule": "cosine",
            },
        }
    )
    conf = ds_config(cfg, "policy", micro=4, gas=2, on_gpu=False)
    assert conf["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu"},
        "offload_param": {"device": "cpu"},
    }
    assert conf["optimizer"]["params"]["lr"] == 3e-4 and conf["gradient_clipping"] == 0.5
    assert "scheduler" not in conf and "bf16" not in conf  # the LR schedule is lr_lambda
    assert ds_config(cfg, "policy", 4, 2, on_gpu=True)["bf16"] == {"enabled": True}
    crit = ds_config(
        config_from_dict({"model": {"path": "x"}, "critic": {"lr": 1e-3}}), "critic", 4, 1, False
    )
    assert crit["optimizer"]["params"]["lr"] == 1e-3


def test_lr_schedule_trains_from_the_first_step():
    const = lr_lambda(0, 10, "constant")
    assert [const(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]  # no step at lr 0
    warm = lr_lambda(4, 10, "linear")
    assert [warm(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warm(4) == 1.0 and warm(7) == 0.5 and warm(10) == 0.0
    cos = lr_lambda(0, 4, "cosine")
    assert cos(0) == 1.0 and abs(cos(2) - 0.5) < 1e-12 and abs(cos(4)) < 1e-12


def test_deepspeed_ops_are_built_per_virtual_env_unless_a_dir_is_set(monkeypatch, tmp_path):
    monkeypatch.setenv(OPS_DIR_ENV, "unset below; restored after the test")
    monkeypatch.delenv(OPS_DIR_ENV)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert use_venv_ops_dir() == str(tmp_path / "torch_extensions")
    monkeypatch.setenv(OPS_DIR_ENV, "/elsewhere")
    assert use_venv_ops_dir() == "/elsewhere"  # a user's own choice wins
