"""`rlpost train-rm` / `rm-data` pieces: the Bradley–Terry loss, pair making, the held-out split,
training a tiny reward model on a synthetic preference set, and errors that name file and row."""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import replace

import pytest
import torch

from rewards.model import RewardModel
from rlpost.cli import main
from rlpost.commands.rm import (
    METRICS_FILE,
    SUMMARY_FILE,
    TrainRMOptions,
    _batch_rewards,
    add_options,
    bradley_terry_loss,
    load_pairs,
    pairs_from_group,
    split_pairs,
    train_rm,
)
from rlpost.data import DataError
from rlpost.models import tiny

WORDS = "apple tree blue seven river stone cloud happy number plus minus green table chair".split()


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen answers end in a boxed number, rejected ones in a shrug; the rest is random words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(
            {
                "prompt": f"Question {seed}-{i}: " + " ".join(rng.choices(WORDS, k=4)) + "?",
                "chosen": " ".join(rng.choices(WORDS, k=5)) + " \\boxed{42}",
                "rejected": " ".join(rng.choices(WORDS, k=5)) + " no idea",
            }
        )
    return rows


def write_jsonl(path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def base():
    return str(tiny.ensure("rm-nano", seed=0))


def test_bradley_terry_loss_equals_the_hand_computed_value():
    c, r = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    nll = [math.log1p(math.exp(-d)) for d in (1.0, -1.0, 0.0)]  # −log σ(d)
    assert float(bradley_terry_loss(c, r)) == pytest.approx(sum(nll) / 3, abs=1e-6)
    assert float(bradley_terry_loss(c, r)) == pytest.approx(0.7732235, abs=1e-6)
    m = torch.tensor([0.5, 0.0, 0.0])  # the margin is subtracted from the difference
    with_margin = (math.log1p(math.exp(-0.5)) + nll[1] + nll[2]) / 3
    assert float(bradley_terry_loss(c, r, m)) == pytest.approx(with_margin, abs=1e-6)


def test_pairs_skip_ties_unscored_samples_and_duplicate_texts():
    texts = ["a", "b", "a", "c", "d"]
    scores = [1.0, 0.0, 1.0, 0.0, None]
    assert pairs_from_group(texts, scores) == [(0, 1), (0, 3)]  # text "a" twice → once each
    assert pairs_from_group(["x", "y"], [1.0, 1.0]) == []


def test_held_out_split_keeps_whole_prompts_out_and_ignores_the_training_seed():
    rows = [{"prompt": f"p{i // 3}", "chosen": "a", "rejected": "b"} for i in range(30)]
    train, held = split_pairs(rows, 0.2, eval_seed=0)
    assert len(held) == 6 and len(train) == 24  # 2 of 10 prompts, 3 pairs each
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    assert split_pairs(rows, 0.2, eval_seed=0) == (train, held)
    assert split_pairs(rows, 0.0, eval_seed=0) == (rows, [])


def test_training_reads_pairs_exactly_as_the_scorer_does(base):
    rm = RewardModel(base, batch_size=4)
    rows = [dict(r, margin=0.0) for r in synthetic_pairs(5)]
    with torch.no_grad():
        chosen, rejected = _batch_rewards(rm, rows)
    prompts = [r["prompt"] for r in rows]
    assert torch.allclose(chosen, rm.score(prompts, [r["chosen"] for r in rows]), atol=1e-5)
    assert torch.allclose(rejected, rm.score(prompts, [r["rejected"] for r in rows]), atol=1e-5)


def test_train_rm_learns_a_token_pattern_and_the_saved_model_prefers_chosen(base, tmp_path):
    rows = synthetic_pairs(160)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    fresh = synthetic_pairs(20, seed=7)  # prompts and answers never seen in training
    test = write_jsonl(tmp_path / "test.jsonl", fresh + rows[:3])  # seen prompts are dropped
    out = tmp_path / "rm"
    out.mkdir()
    (out / "stale.txt").write_text("replaced")  # an existing output dir is replaced whole
    opts = TrainRMOptions(
        model=base, pairs=pairs, out=str(out), epochs=3, lr=1e-3, eval_fraction=0.25, seed=1
    )
    summary = train_rm(replace(opts, test_pairs=test))
    assert summary["eval_pairs"] == 40 and summary["train_pairs"] == 120
    assert summary["test_pairs"] == 20
    assert summary["final"]["eval_accuracy"] > 0.9, summary["final"]
    assert summary["final"]["test_accuracy"] > 0.9, summary["final"]
    rows = [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["loss"] < rows[1]["loss"] < math.log(2) + 0.2
    assert json.loads((out / SUMMARY_FILE).read_text())["train_pairs"] == 120
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    rm = RewardModel(out)
    prompts = [r["prompt"] for r in fresh]
    chosen = rm.score(prompts, [r["chosen"] for r in fresh])
    rejected = rm.score(prompts, [r["rejected"] for r in fresh])
    assert float((chosen > rejected).float().mean()) > 0.9


def test_a_margin_column_enters_the_loss(base, tmp_path):
    rows = [dict(r, margin=1.0) for r in synthetic_pairs(4)]
    loaded = load_pairs(write_jsonl(tmp_path / "m.jsonl", rows), margin_column="margin")
    assert [r["margin"] for r in loaded] == [1.0] * 4
    bad = write_jsonl(tmp_path / "bad.jsonl", [rows[0], dict(rows[1], margin="big")])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 1, column 'margin': expected a finite"):
        load_pairs(bad, margin_column="margin")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], r"no rows"),
        (["", "   "], r"no rows"),
        (['{"prompt": "p", "chosen": "a", "rejected": "b"}', '{"prompt": "p", "chosen": "a"}'],
         r"row 1, column 'rejected': missing"),
        (['{"prompt": "p", "rejected": "b", "chosen": "a"}', "{not json"],
         r"row 1 does not parse as JSON"),
        (['{"prompt": "p", "chosen": "", "rejected": "b"}', '{"prompt": "p", "chosen": 5, '
          '"rejected": "b"}'], r"row 1, column 'chosen': expected a string, got int"),
        (['{"prompt": "p", "chosen": "a", "rejected": null}'],
         r"row 0, column 'rejected': missing \(null\)"),
        (['{"prompt": null, "chosen": "a", "rejected": "b"}'], r"row 0, column 'prompt': missing"),
        (["[1, 2]"], r"row 0: expected a JSON object"),
    ],
)  # fmt: skip
def test_bad_pairs_files_name_the_file_and_the_row(tmp_path, lines, message):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(x + "\n" for x in lines))
    with pytest.raises(DataError, match=r"prefs\.jsonl: " + message):
        load_pairs(path)


def test_train_rm_cli_reports_a_missing_file_in_one_line(tmp_path, capsys, base):
    missing = tmp_path / "nope.jsonl"
    code = main(
        ["train-rm", "--model", base, "--pairs", str(missing), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"data error: {missing}: file not found" in err
    assert not (tmp_path / "o").exists()


def test_bootstrap_members_train_on_different_resamples(base, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(60))
    opts = TrainRMOptions(model=base, pairs=pairs, out="", epochs=1, eval_fraction=0.25)
    drawn = []
    for seed in (1, 2):
        s = train_rm(replace(opts, out=str(tmp_path / f"rm{seed}"), seed=seed, bootstrap=True))
        # as many pairs as the split gives, drawn with replacement: about 1 − 1/e distinct
        assert s["train_pairs"] == 45 and 20 <= s["distinct_train_pairs"] < 45
        drawn.append(s["final"])
    assert drawn[0] != drawn[1]  # different resamples train different members
    plain = train_rm(replace(opts, out=str(tmp_path / "rm0")))
    assert plain["distinct_train_pairs"] == plain["train_pairs"] == 45
    parser = argparse.ArgumentParser()
    add_options(parser, TrainRMOptions)
    args = parser.parse_args(["--model", "m", "--pairs", "p", "--out", "o", "--bootstrap"])
    assert args.bootstrap is True
    assert parser.parse_args(["--model", "m", "--pairs", "p", "--out", "o"]).bootstrap is False
