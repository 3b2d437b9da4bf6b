"""Every source format gives the same rows; column mapping, rendering, overlong policies, tasks."""

from __future__ import annotations

import json

import datasets
import pytest

from rlpost.data import DataError, PromptDataset, load_prompts, render_prompt

ROWS = [
    {"prompt": "What is 2 + 3?", "answer": "5", "level": 1},
    {"prompt": "What is 10 - 4?", "answer": "6", "level": 2},
    {"prompt": "What is 7 * 8?", "answer": "56", "level": 3},
]


def _write(fmt: str, tmp_path, rows=ROWS) -> str:
    ds = datasets.Dataset.from_list(rows)
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)
    if fmt == "parquet":
        ds.to_parquet(str(tmp_path / "d.parquet"))
        return str(tmp_path / "d.parquet")
    if fmt == "csv":
        ds.to_csv(str(tmp_path / "d.csv"), index=False)
        return str(tmp_path / "d.csv")
    if fmt == "saved":
        ds.save_to_disk(str(tmp_path / "saved"))
        return str(tmp_path / "saved")
    if fmt == "saved_dict":
        dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
        dd.save_to_disk(str(tmp_path / "saved_dict"))
        return str(tmp_path / "saved_dict")
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "saved", "saved_dict"])
def test_every_format_gives_the_same_rows(fmt, tmp_path, tok, make_cfg):
    spec = _write(fmt, tmp_path)
    ds = load_prompts(make_cfg(f"data.train={spec}", "data.chat_template=false"), tok)
    assert isinstance(ds, PromptDataset) and ds.rows is ds
    assert len(ds) == 3 and ds.skipped == 0
    assert ds.source.endswith(spec.split("/")[-1])
    for i, (row, src) in enumerate(zip(ds, ROWS)):
        assert row["row"] == i
        assert row["prompt"] == src["prompt"]  # plain: the text as it is
        assert row["prompt_ids"] == tok(src["prompt"])["input_ids"]
        assert str(row["answer"]) == src["answer"]
        assert row["level"] == src["level"]  # other columns reach the rewards


def test_saved_dict_eval_split_picks_test(tmp_path, tok, make_cfg):
    spec = _write("saved_dict", tmp_path)
    cfg = make_cfg(f"data.train={spec}", f"data.eval={spec}")
    assert len(load_prompts(cfg, tok, "train")) == 3
    ev = load_prompts(cfg, tok, "eval")
    assert len(ev) == 1 and ev[0]["raw_prompt"] == ROWS[0]["prompt"]


def test_hub_id_offline_is_a_clear_error(monkeypatch, tok, make_cfg):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as e:
        load_prompts(make_cfg("data.train=someorg/no-such-dataset?split=train"), tok)
    msg = str(e.value)
    assert "someorg/no-such-dataset" in msg and "hub" in msg


def test_hub_id_unknown_option(tok, make_cfg):
    with pytest.raises(DataError, match="unknown option"):
        load_prompts(make_cfg("data.train=org/name?splitt=train"), tok)


def test_column_mapping_and_copied_answer(tmp_path, tok, make_cfg, write_jsonl):
    rows = [
        {"question": "Q one?", "solution": "11", "id": "a"},
        {"question": "Q two?", "solution": "22", "id": "b"},
    ]
    spec = write_jsonl(tmp_path / "q.jsonl", rows)
    cfg = make_cfg(f"data.train={spec}", "data.prompt_key=question", "data.answer_key=solution")
    ds = load_prompts(cfg, tok)
    assert [r["answer"] for r in ds] == ["11", "22"]
    assert [r["solution"] for r in ds] == ["11", "22"]  # copied, original kept
    assert [r["id"] for r in ds] == ["a", "b"]
    assert "question" not in ds[0]  # the prompt column became 'prompt'
    assert ds[1]["raw_prompt"] == "Q two?"


def test_no_answer_column_when_answer_key_empty(tmp_path, tok, make_cfg, write_jsonl):
    spec = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    ds = load_prompts(make_cfg(f"data.train={spec}", "data.answer_key="), tok)
    assert ds[0]["answer"] is None


def test_chat_template_renders_messages_and_system_prompt(tmp_path, tok, make_cfg, write_jsonl):
    rows = [
        {"prompt": [{"role": "user", "content": "hi there"}], "answer": "x"},
        {"prompt": "plain text prompt", "answer": "y"},
    ]
    spec = write_jsonl(tmp_path / "chat.jsonl", rows[:1])
    ds = load_prompts(make_cfg(f"data.train={spec}", "data.system_prompt=Be brief."), tok)
    expected = "<|system|>\nBe brief.\n<|user|>\nhi there\n<|assistant|>\n"
    assert ds[0]["prompt"] == expected
    assert ds[0]["prompt_ids"] == tok(expected, add_special_tokens=False)["input_ids"]
    # A text prompt becomes one user message.
    spec2 = write_jsonl(tmp_path / "text.jsonl", rows[1:])
    ds2 = load_prompts(make_cfg(f"data.train={spec2}"), tok)
    assert ds2[0]["prompt"] == "<|user|>\nplain text prompt\n<|assistant|>\n"


def test_plain_rendering_of_messages_joins_contents(tmp_path, tok, make_cfg):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text, ids = render_prompt(tok, msgs, chat_template=False)
    assert text == "S\nU" and ids == tok("S\nU")["input_ids"]


def test_chat_template_missing_is_an_error(tmp_path, tok, make_cfg, write_jsonl):
    spec = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello", "answer": "1"}])
    saved = tok.chat_template
    tok.chat_template = None
    try:
        with pytest.raises(DataError, match="data.chat_template"):
            load_prompts(make_cfg(f"data.train={spec}"), tok)
    finally:
        tok.chat_template = saved


LONG = "one two three four five six seven eight nine ten " * 6


def _long_rows():
    return [{"prompt": "short?", "answer": "1"}, {"prompt": LONG, "answer": "2"}]


def test_overlong_error_names_row_and_length(tmp_path, tok, make_cfg, write_jsonl):
    spec = write_jsonl(tmp_path / "long.jsonl", _long_rows())
    with pytest.raises(DataError) as e:
        load_prompts(make_cfg(f"data.train={spec}", "data.max_prompt_len=20"), tok)
    msg = str(e.value)
    assert (
        str(spec) in msg
        and "row 1" in msg
        and "column 'prompt'" in msg
        and "> data.max_prompt_len=20" in msg
    )


def test_overlong_skip_counts(tmp_path, tok, make_cfg, write_jsonl):
    spec = write_jsonl(tmp_path / "long.jsonl", _long_rows() + _long_rows())
    ds = load_prompts(
        make_cfg(f"data.train={spec}", "data.max_prompt_len=20", "data.overlong=skip"), tok
    )
    assert ds.skipped == 2
    assert [r["row"] for r in ds] == [0, 2]


def test_overlong_truncate_keeps_the_end(tmp_path, tok, make_cfg, write_jsonl):
    spec = write_jsonl(tmp_path / "long.jsonl", _long_rows())
    full = load_prompts(make_cfg(f"data.train={spec}", "data.max_prompt_len=1000"), tok)[1][
        "prompt_ids"
    ]
    cut = load_prompts(
        make_cfg(f"data.train={spec}", "data.max_prompt_len=20", "data.overlong=truncate"), tok
    )
    assert len(cut) == 2 and cut.skipped == 0
    assert cut[1]["prompt_ids"] == full[-20:]  # the generation prompt survives
    assert cut[1]["prompt"].endswith("<|assistant|>\n")
    assert (
        cut[0]["prompt_ids"] == load_prompts(make_cfg(f"data.train={spec}"), tok)[0]["prompt_ids"]
    )


def test_all_rows_skipped_is_an_error(tmp_path, tok, make_cfg, write_jsonl):
    spec = write_jsonl(tmp_path / "long.jsonl", _long_rows()[1:])
    with pytest.raises(DataError, match="all 1 rows"):
        load_prompts(
            make_cfg(f"data.train={spec}", "data.max_prompt_len=5", "data.overlong=skip"), tok
        )


def test_task_source_sizes_seed_and_eval_default(tok, make_cfg):
    cfg = make_cfg(
        "data.train=task:arithmetic?digits=1&ops=+", "data.task_size=50", "data.eval_size=7"
    )
    train, ev = load_prompts(cfg, tok), load_prompts(cfg, tok, "eval")
    assert len(train) == 50 and len(ev) == 7 and train.source == "task:arithmetic?digits=1&ops=+"
    again = load_prompts(cfg, tok)
    assert [r["prompt_ids"] for r in again] == [r["prompt_ids"] for r in train]
    other = load_prompts(make_cfg(*cfg_overrides(cfg), "trainer.seed=1"), tok)
    assert [r["prompt"] for r in other] != [r["prompt"] for r in train]
    assert not {r["prompt"] for r in ev} & {r["prompt"] for r in train}  # held out
    a, b = train[0]["raw_prompt"].split("?")[0].removeprefix("What is ").split(" + ")
    assert train[0]["answer"] == str(int(a) + int(b))
    assert train[0]["difficulty"] == 1


def cfg_overrides(cfg) -> list[str]:
    d = cfg.data
    return [
        f"data.train={d.train}",
        f"data.task_size={d.task_size}",
        f"data.eval_size={d.eval_size}",
    ]


def test_eval_empty_for_a_file_source(tmp_path, tok, make_cfg):
    spec = _write("jsonl", tmp_path)
    ev = load_prompts(make_cfg(f"data.train={spec}"), tok, "eval")
    assert len(ev) == 0


def test_unknown_task_is_a_data_error(tok, make_cfg):
    with pytest.raises(DataError, match="did you mean 'countdown'"):
        load_prompts(make_cfg("data.train=task:countdwn"), tok)
    with pytest.raises(DataError, match="unknown option 'digit'"):
        load_prompts(make_cfg("data.train=task:arithmetic?digit=3"), tok)


def test_empty_train_spec(tok, make_cfg):
    with pytest.raises(DataError, match="data.train"):
        load_prompts(make_cfg(), tok)


def _verl_rows() -> list[dict]:
    """Rows as verl's data preprocessing writes them."""
    return [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
            "extra_info": {"split": "train", "index": i, "question": f"{i}+{i}"},
        }
        for i in range(3)
    ]


def test_verl_parquet_loads_with_no_flags(tmp_path, tok, make_cfg):
    path = tmp_path / "verl.parquet"
    datasets.Dataset.from_list(_verl_rows()).to_parquet(str(path))
    ds = load_prompts(make_cfg(f"data.train={path}"), tok)
    assert [r["answer"] for r in ds] == ["0", "2", "4"]
    assert ds[1]["extra_info"] == {"split": "train", "index": 1, "question": "1+1"}
    assert ds[1]["data_source"] == "openai/gsm8k" and ds[1]["ability"] == "math"
    assert ds[1]["raw_prompt"] == [{"role": "user", "content": "What is 1 + 1?"}]


def test_dotted_answer_key_reads_any_nested_column(tmp_path, tok, make_cfg):
    path = tmp_path / "verl.parquet"
    datasets.Dataset.from_list(_verl_rows()).to_parquet(str(path))
    ds = load_prompts(make_cfg(f"data.train={path}", "data.answer_key=extra_info.question"), tok)
    assert [r["answer"] for r in ds] == ["0+0", "1+1", "2+2"]
