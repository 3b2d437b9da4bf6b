"""RewardModel on the offline rm-nano preset: shape, determinism, its own chat template; ensembles."""

import pytest
import torch

from rewards.ensemble import Ensemble
from rewards.model import RewardModel
from rewards.pipeline import RewardPipeline
from rlpost.config import Config
from rlpost.models import tiny

PROMPTS = ["What is 2 + 3?", "Name a colour.", "What is 2 + 3?", "Say hi."]
COMPLETIONS = ["2 + 3 = 5. \\boxed{5}", "Blue.", "It is 7.", "hi " * 40]


@pytest.fixture(scope="module")
def rm_paths():
    return [str(tiny.ensure("rm-nano", seed=0)), str(tiny.ensure("rm-nano", seed=1))]


@pytest.fixture(scope="module")
def rm(rm_paths):
    return RewardModel(rm_paths[0], batch_size=3)


def test_scores_shape_dtype_and_determinism(rm, rm_paths):
    s1 = rm.score(PROMPTS, COMPLETIONS)
    assert s1.shape == (4,) and s1.dtype == torch.float32 and torch.isfinite(s1).all()
    assert torch.equal(s1, rm.score(PROMPTS, COMPLETIONS))
    # batching and length sorting do not change a row's score
    one = RewardModel(rm_paths[0], batch_size=1)
    assert torch.allclose(s1, one.score(PROMPTS, COMPLETIONS), atol=1e-5)
    assert torch.allclose(
        s1[[2, 0]], rm.score([PROMPTS[2], PROMPTS[0]], [COMPLETIONS[2], COMPLETIONS[0]]), atol=1e-5
    )
    # the completion matters
    assert s1[0] != s1[2]


def test_uses_its_own_chat_template(rm):
    text = rm.format("What is 2 + 3?", "5")
    assert text.startswith("<|user|>\nWhat is 2 + 3?\n<|assistant|>\n5")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert rm.format(msgs, "yo").startswith("<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\nyo")
    rm.has_template = False
    try:
        assert rm.format("Q: ", "A") == "Q: A"
    finally:
        rm.has_template = True


def test_length_mismatch_is_named(rm):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        rm.score(["a", "b"], ["c"])


def test_ensemble_of_two_rm_nano(rm_paths):
    ens = Ensemble.from_paths(rm_paths, batch_size=4, mode="uwo", uwo_lambda=0.5, normalize="none")
    out, m = ens.score(PROMPTS, COMPLETIONS)
    raw = ens.raw_scores(PROMPTS, COMPLETIONS)
    assert raw.shape == (2, 4) and not torch.equal(raw[0], raw[1])  # different seeds
    assert torch.allclose(out, raw.mean(0) - 0.5 * raw.var(0, unbiased=False))
    assert m["member1/mean"] == pytest.approx(float(raw[1].mean()))
    assert m["disagreement"] > 0


def test_pipeline_with_function_and_models(rm_paths, spec):
    cfg = Config()
    cfg.reward.functions = [spec("contains_answer")]
    cfg.reward.models = rm_paths
    cfg.reward.weights = [1.0, 0.5]
    cfg.reward.ensemble.mode = "wco"
    cfg.reward.ensemble.normalize = "running"
    cfg.reward.workers = 0
    with RewardPipeline(cfg) as pipe:
        scores, m = pipe.score(PROMPTS, COMPLETIONS, {"answer": ["5", "Blue", "5", "hi"]})
        state = pipe.state_dict()
    # first batch: members standardised by their own stats, then min over members
    ens = Ensemble.from_paths(rm_paths, mode="wco", normalize="running")
    expected_rm, _ = ens.score(PROMPTS, COMPLETIONS)
    expected = [c + 0.5 * float(r) for c, r in zip([1.0, 1.0, 0.0, 1.0], expected_rm)]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert {
        "reward/rm/member0/mean",
        "reward/rm/member1/mean",
        "reward/rm/disagreement",
        "reward/rm/mean",
    } <= set(m)
    assert state["rm"]["normalizer"]["count"] == 4
