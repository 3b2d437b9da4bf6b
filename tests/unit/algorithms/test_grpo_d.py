"""GRPO-D: GRPO with the scheduled KL coefficient; hand-computed loss and schedule values."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.base import build_algorithm
from algorithms.grpo_d import GRPOD
from rlpost.batch import Batch
from rlpost.config import ConfigError


def k3(d: float) -> float:
    return math.exp(d) - d - 1


def scored_batch() -> Batch:
    """Two prompts × two samples; only scores, group ids and a response mask."""
    return Batch(
        {
            "scores": torch.tensor([1.0, 0.0, 2.0, 2.0]),
            "response_mask": torch.tensor([[0, 1, 1]] * 4, dtype=torch.float32),
        },
        {"group_id": [0, 0, 1, 1]},
    )


def test_registered_and_needs_reference_while_beta_is_zero(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=grpo_d"))
    assert isinstance(algo, GRPOD)
    assert algo.kl.value == 0.0  # β_start = 0 ...
    needs = algo.needs()
    assert needs.reference is True  # ... yet the reference model is loaded from the start
    assert needs.samples_per_prompt == 8


def test_no_reference_when_the_schedule_is_all_zero(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=grpo_d", "algorithm.kl.end=0"))
    assert algo.needs().reference is False


def test_adaptive_controller_refused(make_cfg):
    with pytest.raises(ConfigError, match="algorithm.kl.controller"):
        build_algorithm(make_cfg("algorithm.name=grpo_d", "algorithm.kl.controller=adaptive"))


@pytest.mark.parametrize(
    "step, beta",
    [
        (0, 0.0),  # warm-up: 0.1 · 10 steps = 1 step held at β_start
        (1, 0.0),  # the ramp starts here: (1 − 1) / 9
        (4, 0.04 * 3 / 9),
        (7, 0.04 * 6 / 9),
        (10, 0.04),
        (12, 0.04),  # past the end: held at β_end
    ],
)
def test_schedule_beta_per_step_in_metrics_and_meta(make_cfg, step, beta):
    # The default kl.controller is 'fixed': GRPO-D schedules anyway.
    algo = build_algorithm(make_cfg("algorithm.name=grpo_d", "trainer.steps=10"))
    for _ in range(step):
        algo.update({})
    batch = scored_batch()
    metrics = algo.prepare(batch)
    assert metrics["kl/beta"] == pytest.approx(beta)
    assert batch.meta["kl_beta"] == pytest.approx(beta)
    # group advantages as GRPO: group 0 = (1, 0) → ±1/std = ±0.7071; group 1 ties → 0,
    # on both response tokens, 0 on the prompt token
    seq = torch.tensor([0.70710, -0.70710, 0.0, 0.0])
    expect = seq.unsqueeze(-1) * torch.tensor([0.0, 1.0, 1.0])
    torch.testing.assert_close(batch["advantages"], expect, atol=1e-4, rtol=0)


def test_cosine_shape_from_config(make_cfg):
    algo = build_algorithm(
        make_cfg(
            "algorithm.name=grpo_d",
            "trainer.steps=4",
            "algorithm.kl.warmup=0",
            "algorithm.kl.shape=cosine",
        )
    )
    algo.update({})
    assert algo.kl.value == pytest.approx(0.04 * 0.5 * (1 - math.cos(math.pi / 4)))


def loss_batch(beta: float) -> tuple[torch.Tensor, Batch]:
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.float32)
    logp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, -3.0]], requires_grad=True)
    d = torch.tensor([[0.0, 0.1, -0.2], [0.0, 0.3, 9.0]])  # the 9.0 sits on a masked token
    batch = Batch(
        {
            "response_mask": mask,
            "old_logp": logp.detach().clone(),  # ratio 1: surrogate = −A per token
            "ref_logp": logp.detach() + d,
            "advantages": torch.tensor([1.0, -0.5]),
        },
        meta={"kl_beta": beta},
    )
    return logp, batch


def test_loss_is_surrogate_plus_scheduled_kl(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=grpo_d"))
    beta = 0.02
    logp, batch = loss_batch(beta)
    counts = {"num_tokens": 3, "num_seqs": 2, "max_len": 2}
    loss, m = algo.loss(logp, batch, counts)
    pg = (-1.0 - 1.0 + 0.5) / 3  # −A over the three valid tokens, token-mean
    kl = (k3(0.1) + k3(-0.2) + k3(0.3)) / 3
    assert loss.item() == pytest.approx(pg + beta * kl, abs=1e-6)
    assert m["kl/mean"] == pytest.approx(kl, abs=1e-6)
    assert m["loss/kl"] == pytest.approx(beta * kl, abs=1e-7)
    loss.backward()
    assert logp.grad is not None and logp.grad[:, 0].abs().sum() == 0


def test_beta_zero_still_measures_kl(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=grpo_d"))
    logp, batch = loss_batch(0.0)
    loss, m = algo.loss(logp, batch, {"num_tokens": 3, "num_seqs": 2, "max_len": 2})
    assert loss.item() == pytest.approx((-1.0 - 1.0 + 0.5) / 3, abs=1e-6)
    assert m["kl/mean"] > 0 and m["loss/kl"] == 0.0


def test_padded_zero_mask_rows_add_nothing(make_cfg):
    algo = build_algorithm(make_cfg("algorithm.name=grpo_d"))
    counts = {"num_tokens": 3, "num_seqs": 2, "max_len": 2}
    logp, batch = loss_batch(0.03)
    base, _ = algo.loss(logp, batch, counts)
    pad = batch.select([0])  # the learner pads with copies of leading rows, mask zeroed
    pad.tensors["response_mask"] = torch.zeros_like(pad["response_mask"])
    padded = Batch.concat([batch, pad])
    logp2 = torch.cat([logp, logp[:1]]).detach().requires_grad_(True)
    loss, _ = algo.loss(logp2, padded, counts)
    assert loss.item() == pytest.approx(base.item(), abs=1e-7)
    loss.backward()
    assert logp2.grad[2].abs().sum() == 0


def test_state_dict_round_trip(make_cfg):
    cfg = make_cfg("algorithm.name=grpo_d", "trainer.steps=10")
    algo = build_algorithm(cfg)
    for _ in range(6):
        algo.update({})
    fresh = build_algorithm(cfg)
    fresh.load_state_dict(algo.state_dict())
    assert fresh.step == 6 and fresh.kl.value == pytest.approx(algo.kl.value)
    assert fresh.kl.value == pytest.approx(0.04 * 5 / 9)
