"""Compare / eval / SFT pieces that need no Ray: metrics, CSV, report, plots, compare files."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from rlpost.commands import compare as cmp
from rlpost.commands.claims import Claim
from rlpost.commands.evaluate import write_json
from rlpost.config import ConfigError
from rlpost.evaluation import (
    Scored,
    correctness_fn,
    kl_metrics,
    pass_at_k,
    sample_seeds,
    score_pass,
    summarize,
    unique_fraction,
)

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- eval metrics
def test_pass_at_k_matches_the_combinatorial_formula():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k(4, 1, 5)


def test_unique_fraction_is_zero_on_collapse_and_one_when_all_differ():
    assert unique_fraction([["7", "7", "7", "7"]]) == 0.0
    assert unique_fraction([["1", "2", "3", "4"]]) == 1.0
    assert unique_fraction([["a", "a", "b", "b"], ["x", "y"]]) == pytest.approx((1 / 3 + 1) / 2)
    assert unique_fraction([["only one"]]) == 0.0


def test_kl_metrics_hand_computed():
    # one completion of two tokens; position 0 is the prompt (mask 0)
    logp = torch.log(torch.tensor([[1.0, 0.5, 0.5]]))
    ref = torch.log(torch.tensor([[1.0, 0.25, 0.5]]))
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    m = kl_metrics(logp, ref, mask)
    k3 = 0.5 - 1 - math.log(0.5)  # exp(d) - 1 - d with d = log(0.25/0.5)
    assert m["kl"] == pytest.approx(k3, abs=1e-6)
    assert m["kl_k1"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["kl_token"] == pytest.approx(k3 / 2, abs=1e-6)
    same = kl_metrics(logp, logp, mask)
    assert same["kl"] == 0.0 and same["kl_k1"] == 0.0


def test_summarize_greedy_and_sampled_passes():
    greedy = Scored([["4"], ["9"]], [[2], [4]], [[1.0], [0.0]], [[True], [False]])
    sampled = Scored(
        [["4", "4", "5", "4"], ["9", "8", "1", "2"]],
        [[2, 2, 2, 2], [2, 2, 2, 2]],
        [[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, None]],
        [[True, True, False, True], [False, False, False, False]],
    )
    m = summarize(greedy, sampled, ks=(1, 4))
    assert m["accuracy"] == 0.5
    assert m["reward_mean"] == 0.5
    assert m["length_mean"] == 3.0
    assert m["accuracy_sampled"] == pytest.approx(3 / 8)
    assert m["pass@1"] == pytest.approx((0.75 + 0.0) / 2)
    assert m["pass@4"] == pytest.approx(0.5)
    assert m["reward_sampled"] == pytest.approx(3 / 7)  # the None row is left out
    assert m["diversity"] == pytest.approx((1 / 3 + 1) / 2)
    assert 0 < m["distinct_1"] <= 1


def test_summarize_without_greedy_uses_the_samples():
    sampled = Scored([["a", "b"]], [[1, 3]], [[1.0, 0.0]], None)
    m = summarize(None, sampled)
    assert m["reward_mean"] == 0.5 and m["length_mean"] == 2.0
    assert "accuracy" not in m


def test_correctness_and_scoring_with_the_arithmetic_task():
    rows = [
        {"prompt": "What is 2 + 2? Answer with the number only.", "answer": "4", "prompt_ids": [1]},
        {"prompt": "What is 3 + 5? Answer with the number only.", "answer": "8", "prompt_ids": [1]},
    ]
    correct = correctness_fn("task:arithmetic?digits=1&ops=+", rows)
    assert correct(rows, ["4", "7"]) == [True, False]
    samples = [
        [{"text": "4", "token_ids": [5, 2]}, {"text": "5", "token_ids": [6, 2]}],
        [{"text": "8", "token_ids": [7, 2]}, {"text": "8", "token_ids": [7, 2]}],
    ]
    seen = {}

    def reward_fn(prompts, texts, cols):
        seen["cols"] = cols
        return [float(t == "8") for t in texts]

    s = score_pass(rows, samples, reward_fn, correct)
    assert s.correct == [[True, False], [True, True]]
    assert s.rewards == [[0.0, 0.0], [1.0, 1.0]]
    assert s.lengths == [[2, 2], [2, 2]]
    assert seen["cols"]["answer"] == ["4", "4", "8", "8"] and "prompt_ids" not in seen["cols"]
    # file data without answers: no accuracy
    assert correctness_fn("data.jsonl", [{"prompt": "hi", "answer": None}]) is None
    by_answer = correctness_fn("data.jsonl", rows)
    assert by_answer(rows, ["The answer is 4", "nine"]) == [True, False]


def test_sample_seeds_are_per_prompt_and_stable():
    assert sample_seeds(3, 0) == sample_seeds(3, 0)
    assert len(set(sample_seeds(3, 0))) == 3
    assert sample_seeds(2, 1) != sample_seeds(2, 0)


def test_write_json_turns_nan_into_null(tmp_path):
    path = write_json({"accuracy": float("nan"), "kl": 0.5}, tmp_path / "r" / "e.json")
    assert path.read_text().count("null") == 1 and '"kl": 0.5' in path.read_text()


# ----------------------------------------------------------------------------- compare results
def _metrics(rewards, accs, kls, step_s=2.0, every=2, rows=8):
    out = []
    for i, r in enumerate(rewards, start=1):
        m = {"step": i, "timing_s/step": step_s, "batch/rows": rows, "reward/mean": r}
        if i % every == 0:
            j = i // every - 1
            m.update(
                {
                    "eval/accuracy": accs[j],
                    "eval/reward_mean": accs[j],
                    "eval/kl": kls[j],
                    "eval/diversity": 0.5,
                    "eval/accuracy_sampled": accs[j] / 2,
                    "eval/pass@1": 0.1,
                    "eval/pass@4": 0.3,
                }
            )
        out.append(m)
    return out


def test_rows_from_metrics_accumulates_wall_time_and_samples():
    rows = cmp.rows_from_metrics("grpo", 0, _metrics([0.0, 1.0, 0.5, 0.5], [0.2, 0.4], [0.1, 0.3]))
    assert [r["step"] for r in rows] == [2, 4]
    assert [r["wall_s"] for r in rows] == [4.0, 8.0]
    assert [r["samples"] for r in rows] == [16, 32]
    assert [r["train_reward"] for r in rows] == [0.5, 0.5]  # mean since the last eval
    assert rows[1]["accuracy"] == 0.4 and rows[1]["kl"] == 0.3
    assert rows[0]["pass_at_k"] == 0.3  # the largest k
    assert rows[0]["accuracy_sampled"] == 0.1


def _rows(best=(0.6, 0.6)):
    rows = []
    base = {"reward": 0.1, "accuracy": 0.1, "diversity": 0.9}
    for alg, finals in (("grpo", (0.3, 0.7)), ("grpo_d", best)):
        for seed, acc in enumerate(finals):
            rows.append(cmp.baseline_row(alg, seed, {**base, "reward_mean": 0.1}))
            rows += cmp.rows_from_metrics(alg, seed, _metrics([0.5] * 4, [acc / 2, acc], [1, 2]))
    return rows


def test_summary_and_winners_with_spread():
    rows = _rows()
    summ = cmp.summary(rows)
    mu, sd, n = summ["grpo"]["accuracy"]
    assert (mu, n) == (pytest.approx(0.5), 2)
    assert sd == pytest.approx(math.sqrt(0.08))  # sample std of 0.3, 0.7
    assert summ["grpo_d"]["accuracy"][:2] == (pytest.approx(0.6), 0.0)
    assert summ["grpo"]["accuracy_gain"][0] == pytest.approx(0.4)  # over the 0.1 baseline
    lines = cmp.winners(summ)
    acc_line = next(ln for ln in lines if "final greedy accuracy" in ln)
    assert "grpo_d (0.6" in acc_line and "ahead of grpo" in acc_line
    assert "within the spread" in acc_line  # gap 0.1 <= 0.283 + 0
    clear = cmp.winners(cmp.summary(_rows(best=(0.9, 0.9))))
    acc_line = next(ln for ln in clear if "final greedy accuracy" in ln)
    assert "by 0.4" in acc_line and "within the spread" not in acc_line  # 0.4 > 0.283
    kl_line = next(ln for ln in lines if "lowest KL" in ln)
    assert kl_line.startswith("**lowest KL")


def test_peak_accuracy_shows_a_fall_back_from_the_best_evaluation():
    rows = cmp.rows_from_metrics("grpo", 0, _metrics([0.2, 0.4, 0.6, 0.8], [0.8, 0.4], [0.1, 0.2]))
    rows += cmp.rows_from_metrics("grpo", 1, _metrics([0.2] * 4, [0.2, 0.6], [0.1, 0.2]))
    m = cmp.summary(rows)["grpo"]
    assert m["accuracy"][0] == pytest.approx(0.5)  # finals 0.4 and 0.6
    assert m["accuracy_peak"][0] == pytest.approx(0.7)  # peaks 0.8 and 0.6
    assert m["train_reward"][0] == pytest.approx(0.45)  # (0.7 + 0.2) / 2: means since last eval


def test_winner_with_one_seed_says_indicative():
    rows = [r for r in _rows() if r["seed"] == 0]
    acc_line = next(ln for ln in cmp.winners(cmp.summary(rows)) if "greedy accuracy" in ln)
    assert "one seed" in acc_line


def test_csv_roundtrip_keeps_nan_as_empty(tmp_path):
    rows = _rows()
    rows[0]["kl"] = float("nan")
    path = cmp.write_csv(rows, tmp_path / "results.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["algorithm", "seed", "step"] and "kl" in header and "wall_s" in header
    back = cmp.read_csv(path)
    assert len(back) == len(rows)
    assert math.isnan(back[0]["kl"])
    assert back[-1]["accuracy"] == rows[-1]["accuracy"] and back[-1]["step"] == 4


def test_plots_and_report(tmp_path):
    spec = cmp.CompareSpec(
        name="t",
        runs=[cmp.RunSpec("grpo", "a.yaml"), cmp.RunSpec("grpo_d", "b.yaml")],
        seeds=[0, 1],
        steps=4,
        eval_every=2,
    )
    rows = _rows()
    plots = cmp.write_plots(rows, tmp_path, "t")
    names = sorted(p.name for p in plots)
    assert names == sorted([f for _, _, f in cmp.PLOTS] + [cmp.FRONTIER])
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    statuses = [{"run": "grpo-s0", "ok": True}, {"run": "grpo_d-s1", "ok": False, "returncode": 1,
                                                  "log": "logs/grpo_d-s1.log"}]  # fmt: skip
    text = cmp.render_report(spec, rows, statuses, plots, ["rlpost compare x.yaml"])
    assert "![accuracy_vs_kl](accuracy_vs_kl.png)" in text
    assert "## Failed runs" in text and "grpo_d-s1" in text
    assert "| grpo_d | 2 | 4 | 0.6 ± 0 | 0.5 ± 0 | 0.6 ± 0 |" in text  # accuracy, gain, peak
    assert "self-METEOR" in text
    assert "Base model accuracy (step 0): 0.1" in text
    assert "rlpost compare x.yaml" in text


def test_load_spec_and_run_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "name: demo\n"
        "overrides: {model.path: tiny:nano, rollout.n: 2}\n"
        "runs:\n"
        "  - {label: a, recipe: launch/recipes/grpo_tiny.yaml}\n"
        "  - {recipe: launch/recipes/grpo_d_tiny.yaml, overrides: [algorithm.kl.end=0.1]}\n"
        "seeds: 2\n"
        "budget: {steps: 6}\n"
        "eval_every: 3\n"
    )
    spec = cmp.load_spec(f, ["trainer.prompts_per_step=2"])
    assert [r.label for r in spec.runs] == ["a", "grpo_d_tiny"]
    assert spec.seeds == [0, 1] and spec.steps == 6
    assert spec.overrides == ["model.path=tiny:nano", "rollout.n=2", "trainer.prompts_per_step=2"]
    ov = cmp.run_overrides(spec, spec.runs[1], 1)
    assert "algorithm.kl.end=0.1" in ov and "trainer.seed=1" in ov and "trainer.steps=6" in ov
    assert "trainer.eval_every=3" in ov and "reference.enabled='on'" in ov
    assert f"trainer.output_dir={tmp_path.parent / 'x'}" not in ov
    assert "trainer.run_name=grpo_d_tiny-s1" in ov


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("runs: []\n", "non-empty list"),
        ("bogus: 1\nruns: [{recipe: a.yaml}]\n", r"unknown key\(s\) \['bogus'\]"),
        ("runs: [{recipe: a.yaml, label: x}, {recipe: b.yaml, label: x}]\n", "duplicate label"),
        ("runs: [{recipe: a.yaml}]\nbudget: {epochs: 3}\n", "budget"),
        ("runs: [{recipe: a.yaml}]\neval_every: 0\n", "eval_every: must be >= 1"),
    ],
)
def test_load_spec_errors_name_the_key(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        cmp.load_spec(f)


def test_shipped_compare_files_parse_and_their_runs_build():
    files = sorted((ROOT / "launch" / "compare").glob("*.yaml"))
    assert files, "launch/compare/ has no compare files"
    for f in files:
        spec = cmp.load_spec(f)
        for run in spec.runs:
            assert (ROOT / run.recipe).exists(), f"{f.name}: {run.recipe} missing"


# ----------------------------------------------------------------------------- SFT rows
class _Tok:
    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[10 + int(c) for c in t] for t in texts]}


def test_sft_rows_mask_the_target_and_eos():
    from algorithms.sft import sft_rows, target_text

    prompts = [{"prompt_ids": [5, 6, 7], "answer": "12"}, {"prompt_ids": [5], "answer": "3"}]
    b = sft_rows(prompts, ["12", "3"], _Tok(), pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 11, 12, 2], [5, 13, 2, 0, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert b["answer"] == ["12", "3"] and b["completion"] == ["12", "3"]
    assert b["scores"].tolist() == [0.0, 0.0]  # present, so the reward group is not called
    assert target_text({"response": "hi"}, None) == "hi"
    with pytest.raises(ValueError, match="row 4 has no target"):
        target_text({"row": 4, "prompt": "x"}, None)


def test_sft_loss_is_the_token_mean_nll():
    from algorithms.sft import SFT
    from rlpost.batch import Batch
    from rlpost.config import load_config

    cfg = load_config(None, ["model.path=x", "algorithm.name=sft"], validate_paths=False)
    algo = SFT(cfg)
    assert algo.needs().rollout is False
    logp = torch.log(torch.tensor([[1.0, 0.5, 0.25], [1.0, 0.5, 1.0]]))
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    batch = Batch({"response_mask": mask})
    loss, m = algo.loss(logp, batch, {"num_tokens": 3, "num_seqs": 2, "max_len": 2})
    expected = (math.log(2) + math.log(4) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["loss/sft"] == pytest.approx(expected, rel=1e-5)
    cfg_eval = load_config(
        None, ["model.path=x", "algorithm.name=sft", "trainer.eval_every=2"], validate_paths=False
    )
    assert SFT(cfg_eval).needs().rollout is True


def test_token_chunks_keep_each_generate_call_within_the_budget():
    from rlpost.runtime.rollout import token_chunks

    chunks = token_chunks([30, 30, 30, 30, 30], n=4, budget=250)  # 120 tokens a prompt
    assert [list(c) for c in chunks] == [[0, 1], [2, 3], [4]]
    assert [list(c) for c in token_chunks([500, 10], n=4, budget=100)] == [[0], [1]]
    assert token_chunks([], n=4, budget=100) == []


def test_a_request_whose_samples_overflow_the_budget_is_asked_in_pieces():
    from rlpost.runtime.rollout import sample_pieces

    # 35-token prompts, 256 samples, 4096 tokens a step: 117 samples a piece, seeds +0/+117/+234
    assert sample_pieces([35], 256, 4096) == [(0, 0, 117), (0, 117, 117), (0, 234, 22)]
    assert sample_pieces([30, 30], 4, 4096) == [(0, 0, 4), (1, 0, 4)]  # fits: one piece each
    assert sample_pieces([5000], 2, 4096) == [(0, 0, 1), (0, 1, 1)]  # at least one sample
    pieces = sample_pieces([35] * 3, 256, 4096)
    assert [sum(k for i, _, k in pieces if i == p) for p in range(3)] == [256] * 3


def test_winner_ties_are_called_ties():
    rows = [r for r in _rows(best=(0.3, 0.7))]
    acc_line = next(ln for ln in cmp.winners(cmp.summary(rows)) if "greedy accuracy" in ln)
    assert "tied with" in acc_line and "ahead of" not in acc_line


def test_demo_accuracy_table_and_progress_filter(tmp_path):
    from rlpost.commands.demo import accuracy_table, shown

    path = cmp.write_csv(_rows(), tmp_path / "results.csv")
    table = accuracy_table(path)
    assert table["grpo"]["before"] == pytest.approx(0.1)
    assert table["grpo"]["after"] == pytest.approx(0.5)  # mean of the seeds' last evals
    assert table["grpo"]["best"] == pytest.approx(0.7)
    assert table["grpo_d"]["after_sampled"] == pytest.approx(0.3)
    assert shown("[compare] train grpo-s0 (x.yaml)")
    assert shown("2026-01-01 00:00:00,000 rlpost step 20 reward=0.5")
    assert not shown("2026-01-01 00:00:00,000 rlpost step 21 reward=0.5")
    assert not shown("(VLLMEngine pid=1) INFO loading weights")


def test_wall_budget_counts_training_step_time_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert cmp._cum_train_seconds(path) == 0.0
    path.write_text('{"step": 1, "timing_s/step": 1.5}\n{"step": 2, "timing_s/step": 2.0}\n{bad\n')
    assert cmp._cum_train_seconds(path) == 3.5


def test_a_finished_run_is_reused_only_for_the_same_command(tmp_path, monkeypatch):
    """A compare that died in its ninth run must not retrain the eight before it."""
    calls = tmp_path / "calls.txt"
    script = tmp_path / "fake_train.py"
    script.write_text(
        "import sys, pathlib\n"
        f"pathlib.Path({str(calls)!r}).open('a').write(' '.join(sys.argv[1:]) + '\\n')\n"
    )
    monkeypatch.setattr(cmp, "_cli", lambda: [sys.executable, str(script)])
    f = tmp_path / "c.yaml"
    f.write_text(
        "name: reuse\nruns:\n  - {label: a, recipe: launch/recipes/grpo_tiny.yaml}\n"
        "seeds: 1\nbudget: {steps: 2}\n"
    )
    spec = cmp.load_spec(f, [])
    spec.output_dir = str(tmp_path)
    first = cmp.run_one(spec, spec.runs[0], 0)
    again = cmp.run_one(spec, spec.runs[0], 0)
    assert first["ok"] and again["ok"] and again["reused"] and "reused" not in first
    assert len(calls.read_text().splitlines()) == 1
    other = cmp.load_spec(f, ["rollout.n=2"])  # a changed override is a different run
    other.output_dir = str(tmp_path)
    assert not cmp.run_one(other, other.runs[0], 0).get("reused")
    assert len(calls.read_text().splitlines()) == 2


def test_an_unfinished_run_is_left_out_of_the_finals_not_judged_on_an_early_eval():
    """A run that crashed (or is still going) after its step-2 eval, and a seed with only the
    base's step-0 row, must not stand in for step-4 finals in the summary or the claims."""
    rows = _rows()
    rows = [
        r for r in rows if not (r["algorithm"] == "grpo_d" and r["seed"] == 1 and r["step"] == 4)
    ]
    rows.append(cmp.baseline_row("grpo", 2, {"reward_mean": 0.1, "accuracy": 0.1}))
    finals = cmp.final_rows(rows, 4)
    assert sorted(finals["grpo"]) == [0, 1] and sorted(finals["grpo_d"]) == [0]
    assert cmp.summary(rows, 4)["grpo_d"]["accuracy"][:3] == (pytest.approx(0.6), 0.0, 1)
    assert 2 not in cmp.final_rows(rows)["grpo"]  # without a step: the base row is never final
    spec = cmp.CompareSpec(
        name="t",
        runs=[cmp.RunSpec("grpo", "a.yaml"), cmp.RunSpec("grpo_d", "b.yaml")],
        seeds=[0, 1, 2],
        steps=5,
        eval_every=2,
        overrides=["model.path=base", "learner.lr=1e-4"],  # every compare file has some
        claims=[Claim("D wins", "accuracy", "grpo_d", "grpo")],
    )
    text = cmp.render_report(spec, rows)
    assert "not at step 4 yet): `grpo-s2`, `grpo_d-s1`, `grpo_d-s2`" in text
    # the shared overrides once shadowed the final step: the claims then saw no finals at all
    assert "| grpo | 2 |" in text and "(1 vs 2 seeds" in text


def test_a_baseline_of_a_small_eval_space_is_reused_by_the_limit_asked(tmp_path, monkeypatch):
    """The demo's task has 38 held-out problems for 64 asked: its saved baseline says 38 prompts,
    and must still be reused rather than evaluated again on every invocation."""
    from rlpost.config import Config

    monkeypatch.setattr(cmp, "_cli", lambda: [sys.executable, "-c", "raise SystemExit(3)"])
    spec = cmp.CompareSpec(name="t", runs=[cmp.RunSpec("grpo", "a.yaml")], eval_prompts=64)
    spec.output_dir = str(tmp_path)
    cfg = Config()
    saved = {
        "model": str(Path(cfg.model.path)),
        "data": cfg.data.eval or cfg.data.train,
        "limit": 64,
        "num_prompts": 38,
        "seed": 0,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "accuracy": 0.25,
    }
    out = spec.out_dir / "baseline" / "s0.json"
    out.parent.mkdir(parents=True)
    write_json(saved, out)
    assert cmp.baseline_eval(spec, cfg, 0)["accuracy"] == 0.25


def test_the_report_reproduces_the_command_line_not_only_the_file():
    """A powered claim runs with model.path=... --output-dir runs/p18; a report that names only
    the file sends a reader to retrain everything in runs/."""
    spec = cmp.load_spec("launch/compare/superhf_vs_ppo.yaml", ["model.path=runs/p18/base"])
    assert cmp.reproduce_command(spec) == (
        "rlpost compare launch/compare/superhf_vs_ppo.yaml model.path=runs/p18/base"
    )
    spec.output_dir, spec.seeds, spec.steps = "runs/p18", [0], 5
    assert cmp.reproduce_command(spec).endswith(
        "model.path=runs/p18/base --seeds 0 --steps 5 --output-dir runs/p18"
    )
