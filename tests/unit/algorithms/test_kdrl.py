"""KDRL: GRPO + annealed β·KL(π‖teacher) with reward-guided masking; teacher tokenizer check."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from algorithms.base import build_algorithm
from algorithms.kdrl import KDRL, kd_keep
from rlpost.batch import Batch
from rlpost.config import ConfigError, load_config
from rlpost.runtime.frozen import check_same_tokenizer

RECIPES = Path(__file__).resolve().parents[3] / "launch" / "recipes"


def kdrl(make_cfg, *extra: str):
    return build_algorithm(make_cfg("algorithm.name=kdrl", "teacher.path=t", *extra))


def test_needs_teacher_and_optional_reference(make_cfg):
    algo = kdrl(make_cfg, "algorithm.kl.beta=0")
    assert isinstance(algo, KDRL)
    n = algo.needs()
    assert n.teacher is True and n.reference is False and n.samples_per_prompt == 8
    assert kdrl(make_cfg, "algorithm.kl.beta=0.01").needs().reference is True


def test_config_requires_a_teacher():
    with pytest.raises(ConfigError, match="teacher.path"):
        load_config(None, ["model.path=m", "algorithm.name=kdrl"], validate_paths=False)


def test_kd_keep_reward_guided_mask():
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0])
    assert kd_keep(scores, 1.0).tolist() == [0.0, 1.0, 1.0, 0.0]  # already correct: no KD
    assert kd_keep(scores, -1.0).tolist() == [1.0, 1.0, 1.0, 1.0]  # < 0: masking off


@pytest.mark.parametrize("step, beta", [(0, 5e-3), (1, 4.2e-3), (2, 3.4e-3), (5, 1e-3), (7, 1e-3)])
def test_beta_annealed_5e3_to_1e3(make_cfg, step, beta):
    algo = kdrl(make_cfg, "trainer.steps=5", "algorithm.kd_mask_threshold=1.0")
    for _ in range(step):
        algo.update({})
    batch = Batch(
        {
            "scores": torch.tensor([1.0, 0.0, 0.0, 0.0]),
            "response_mask": torch.ones(4, 3),
        },
        {"group_id": [0, 0, 1, 1]},
    )
    metrics = algo.prepare(batch)
    assert metrics["kd/beta"] == pytest.approx(beta) and batch.meta["kd_beta"] == pytest.approx(
        beta
    )
    assert batch["kd_keep"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert metrics["kd/masked_frac"] == pytest.approx(0.25)
    assert "advantages" in batch  # GRPO's part is still there


def hand_batch() -> tuple[torch.Tensor, Batch, torch.Tensor]:
    """Ratio 1 and zero advantages: the policy term is 0, the KD term is all that is left."""
    mask = torch.tensor([[0, 1, 1], [0, 1, 0], [0, 1, 1]], dtype=torch.float32)
    logp = torch.tensor(
        [[0.0, -1.0, -2.0], [0.0, -0.5, -1.0], [0.0, -0.3, -0.2]], requires_grad=True
    )
    d = torch.tensor([[0.0, 0.4, -0.2], [0.0, 0.6, 5.0], [0.0, -1.0, 2.0]])  # teacher − student
    batch = Batch(
        {
            "response_mask": mask,
            "old_logp": logp.detach().clone(),
            "teacher_logp": logp.detach() + d,
            "advantages": torch.zeros(3),
            "kd_keep": torch.tensor([1.0, 1.0, 0.0]),  # row 2 already correct: masked
        },
        meta={"kl_beta": 0.0, "kd_beta": 0.005},
    )
    return logp, batch, d


def test_loss_k2_token_mean_by_hand(make_cfg):
    algo = kdrl(make_cfg, "algorithm.kl.beta=0")
    logp, batch, d = hand_batch()
    counts = {"num_tokens": 5, "num_seqs": 3, "max_len": 2}
    loss, m = algo.loss(logp, batch, counts)
    # k2 = ½d² on rows 0 (two tokens) and 1 (one token); row 2 masked but still in the denominator
    kept = 0.5 * (0.4**2 + 0.2**2 + 0.6**2)
    assert loss.item() == pytest.approx(0.005 * kept / 5, abs=1e-8)
    assert m["loss/kd"] == pytest.approx(0.005 * kept / 5, abs=1e-8)
    assert m["kd/kl"] == pytest.approx(kept / 3, abs=1e-6)
    assert m["loss/policy"] == 0.0
    loss.backward()
    # ∂/∂logp of β·½(tea − logp)²/N = −β·d/N on kept tokens, 0 on masked row 2
    torch.testing.assert_close(logp.grad[0, 1], torch.tensor(-0.005 * 0.4 / 5))
    assert logp.grad[2].abs().sum() == 0


def test_k3_estimator_and_seq_mean_agg(make_cfg):
    algo = kdrl(
        make_cfg,
        "algorithm.kl.beta=0",
        "algorithm.kd_estimator=k3",
        "algorithm.agg=seq-mean-token-mean",
    )
    logp, batch, _ = hand_batch()
    loss, _ = algo.loss(logp, batch, {"num_tokens": 5, "num_seqs": 3, "max_len": 2})

    def k3(x: float) -> float:
        return math.exp(x) - x - 1

    per_seq = [(k3(0.4) + k3(-0.2)) / 2, k3(0.6), 0.0]
    assert loss.item() == pytest.approx(0.005 * sum(per_seq) / 3, abs=1e-8)


def test_padded_rows_add_nothing(make_cfg):
    algo = kdrl(make_cfg, "algorithm.kl.beta=0")
    logp, batch, _ = hand_batch()
    counts = {"num_tokens": 5, "num_seqs": 3, "max_len": 2}
    base, _ = algo.loss(logp, batch, counts)
    pad = batch.select([0])  # kd_keep = 1 is copied; only the response mask is zeroed
    pad.tensors["response_mask"] = torch.zeros_like(pad["response_mask"])
    loss, _ = algo.loss(torch.cat([logp, logp[:1]]), Batch.concat([batch, pad]), counts)
    assert loss.item() == pytest.approx(base.item(), abs=1e-9)


def test_state_dict_round_trip(make_cfg):
    algo = kdrl(make_cfg, "trainer.steps=4")
    for _ in range(3):
        algo.update({})
    fresh = kdrl(make_cfg, "trainer.steps=4")
    fresh.load_state_dict(algo.state_dict())
    assert fresh.kd_beta.value == pytest.approx(5e-3 + (1e-3 - 5e-3) * 3 / 4)
    assert fresh.step == 3


# -------------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> Path:
    """The nano tokenizer's recipe with a smaller vocabulary (600 instead of 1024)."""
    from rlpost.models import tiny

    out = tmp_path_factory.mktemp("teacher") / "tok"
    tiny.train_tokenizer(600, out)
    return out


def test_teacher_with_other_tokenizer_refused_naming_both(other_tokenizer):
    from rlpost.models import tiny

    student, other = str(tiny.ensure("nano")), other_tokenizer
    with pytest.raises(ValueError) as e:
        check_same_tokenizer(student, str(other))
    msg = str(e.value)
    assert "teacher.path" in msg and student in msg and str(other) in msg
    check_same_tokenizer(student, student)  # the same vocabulary passes


def test_trainer_refuses_the_teacher_before_any_actor(tmp_path, monkeypatch, other_tokenizer):
    import ray

    import rlpost.trainer as trainer_mod
    from rlpost.models import tiny

    other = other_tokenizer
    monkeypatch.setattr(trainer_mod, "setup_logging", lambda path=None: None)
    monkeypatch.setattr(trainer_mod, "connect_ray", lambda cfg: pytest.fail("Ray was started"))
    cfg = load_config(
        RECIPES / "kdrl_tiny.yaml",
        [f"teacher.path={other}", f"trainer.output_dir={tmp_path / 'runs'}", "trainer.run_name=t"],
    )
    with pytest.raises(ValueError, match="teacher.path") as e:
        trainer_mod.Trainer(cfg).setup()
    assert str(other) in str(e.value) and str(tiny.ensure("nano")) in str(e.value)
    assert not ray.is_initialized()
