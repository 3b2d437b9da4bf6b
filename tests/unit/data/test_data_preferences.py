"""Offline DPO pairs: rendered prompt, responses tokenised without specials plus eos."""

from __future__ import annotations

import datasets
import pytest

from rlpost.data import DataError, load_preferences

PAIRS = [
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Name a color.", "chosen": "Blue.", "rejected": "Seven"},
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_preference_rows(fmt, tmp_path, tok, make_cfg, write_jsonl):
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    else:
        path = tmp_path / "pairs.parquet"
        datasets.Dataset.from_list(PAIRS).to_parquet(str(path))
    rows = load_preferences(str(path), tok, make_cfg())
    assert len(rows) == 2 and isinstance(rows, list)
    eos = tok.eos_token_id
    for row, src in zip(rows, PAIRS):
        text = f"<|user|>\n{src['prompt']}\n<|assistant|>\n"
        assert row["prompt"] == text
        assert row["prompt_ids"] == tok(text, add_special_tokens=False)["input_ids"]
        assert row["chosen_ids"] == tok(src["chosen"], add_special_tokens=False)["input_ids"] + [
            eos
        ]
        assert row["rejected_ids"] == tok(src["rejected"], add_special_tokens=False)[
            "input_ids"
        ] + [eos]
        assert row["chosen_ids"][-1] == eos and row["chosen_ids"].count(eos) == 1


def test_conversational_responses(tmp_path, tok, make_cfg, write_jsonl):
    rows = [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        }
    ]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    out = load_preferences(str(path), tok, make_cfg())
    assert out[0]["chosen_ids"] == tok("Hello.", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]


def test_plain_prompts(tmp_path, tok, make_cfg, write_jsonl):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = load_preferences(str(path), tok, make_cfg("data.chat_template=false"))
    assert out[0]["prompt"] == PAIRS[0]["prompt"]


@pytest.mark.parametrize(
    "bad, column, word",
    [
        ({"prompt": "q", "chosen": "", "rejected": "r"}, "chosen", "empty"),
        ({"prompt": "q", "chosen": "c", "rejected": 3}, "rejected", "int"),
        ({"prompt": "q", "chosen": "c", "rejected": None}, "rejected", "missing"),
        ({"prompt": "", "chosen": "c", "rejected": "r"}, "prompt", "empty"),
    ],
)
def test_bad_pairs_name_file_row_column(bad, column, word, tmp_path, tok, make_cfg, write_jsonl):
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], bad])
    with pytest.raises(DataError) as e:
        load_preferences(str(path), tok, make_cfg())
    msg = str(e.value)
    assert str(path) in msg and "row 1" in msg and f"column '{column}'" in msg and word in msg


def test_missing_rejected_column(tmp_path, tok, make_cfg, write_jsonl):
    path = write_jsonl(tmp_path / "norej.jsonl", [{"prompt": "q", "chosen": "c"}])
    with pytest.raises(DataError, match="column 'rejected'"):
        load_preferences(str(path), tok, make_cfg())


def test_missing_file(tmp_path, tok, make_cfg):
    with pytest.raises(DataError, match="not found"):
        load_preferences(str(tmp_path / "x.jsonl"), tok, make_cfg())


def test_overlong_prompt_skip(tmp_path, tok, make_cfg, write_jsonl):
    long = {"prompt": "word " * 100, "chosen": "c", "rejected": "r"}
    path = write_jsonl(tmp_path / "long.jsonl", [PAIRS[0], long])
    out = load_preferences(str(path), tok, make_cfg("data.max_prompt_len=30", "data.overlong=skip"))
    assert len(out) == 1 and out.skipped == 1
