"""Every bad-data case is a DataError that names the file, the row and the column."""

from __future__ import annotations

import datasets
import pytest

from rlpost.data import DataError, load_prompts

GOOD = {"prompt": "What is 1 + 1?", "answer": "2"}


def _expect(tok, cfg, path, row: int | None, column: str | None, *words: str) -> str:
    with pytest.raises(DataError) as e:
        load_prompts(cfg, tok)
    msg = str(e.value)
    assert str(path) in msg, msg
    if row is not None:
        assert f"row {row}" in msg, msg
    if column is not None:
        assert f"column '{column}'" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize(
    "bad_row, words",
    [
        ({"prompt": "", "answer": "1"}, ["empty prompt"]),
        ({"prompt": "   \n", "answer": "1"}, ["empty prompt"]),
        ({"answer": "1"}, ["missing"]),
        ({"prompt": None, "answer": "1"}, ["missing"]),
        ({"prompt": 17, "answer": "1"}, ["int", "17"]),
        ({"prompt": {"text": "hi"}, "answer": "1"}, ["dict"]),
        ({"prompt": [], "answer": "1"}, ["empty message list"]),
        ({"prompt": [{"role": "user"}], "answer": "1"}, ["message 0", "content"]),
        ({"prompt": ["hi"], "answer": "1"}, ["message 0 is str"]),
    ],
)
def test_bad_prompt_value_in_jsonl(bad_row, words, tmp_path, tok, make_cfg, write_jsonl):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, bad_row, GOOD])
    _expect(tok, make_cfg(f"data.train={path}"), path, 2, "prompt", *words)


def test_missing_prompt_column(tmp_path, tok, make_cfg, write_jsonl):
    path = write_jsonl(tmp_path / "nocol.jsonl", [{"question": "q", "answer": "1"}])
    _expect(tok, make_cfg(f"data.train={path}"), path, 0, "prompt", "missing", "question")


def test_missing_prompt_column_after_mapping(tmp_path, tok, make_cfg, write_jsonl):
    path = write_jsonl(tmp_path / "nocol.jsonl", [GOOD])
    _expect(tok, make_cfg(f"data.train={path}", "data.prompt_key=query"), path, 0, "query")


def test_missing_answer_column_is_fine_without_a_reward_that_needs_it(
    tmp_path, tok, make_cfg, write_jsonl
):
    path = write_jsonl(tmp_path / "noans.jsonl", [{"prompt": "q", "solution": "4"}])
    ds = load_prompts(make_cfg(f"data.train={path}"), tok)
    assert ds[0]["answer"] is None and ds[0]["solution"] == "4"


def test_missing_answer_column_refused_for_a_builtin_that_needs_it(
    tmp_path, tok, make_cfg, write_jsonl
):
    path = write_jsonl(tmp_path / "noans.jsonl", [{"prompt": "q", "solution": "4"}])
    cfg = make_cfg(f"data.train={path}", "reward.functions=[exact_match]")
    msg = _expect(tok, cfg, path, None, None, "exact_match", "data.answer_key")
    assert "solution" in msg


def test_explicit_answer_key_that_is_missing(tmp_path, tok, make_cfg, write_jsonl):
    path = write_jsonl(tmp_path / "noans.jsonl", [{"prompt": "q"}])
    cfg = make_cfg(f"data.train={path}", "data.answer_key=gold")
    _expect(tok, cfg, path, 0, "gold", "data.answer_key=''")


def test_file_not_found(tmp_path, tok, make_cfg):
    path = tmp_path / "nope" / "train.jsonl"
    _expect(tok, make_cfg(f"data.train={path}"), path, None, None, "not found")


def test_jsonl_that_does_not_parse_names_the_row(tmp_path, tok, make_cfg):
    path = tmp_path / "broken.jsonl"
    path.write_text(
        '{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n{"prompt": "c", oops\n'
    )
    _expect(tok, make_cfg(f"data.train={path}"), path, 2, None, "does not parse as JSON")


def test_jsonl_non_object_line(tmp_path, tok, make_cfg):
    path = tmp_path / "list.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n[1, 2]\n')
    _expect(tok, make_cfg(f"data.train={path}"), path, 1, None)


def test_parquet_that_does_not_parse(tmp_path, tok, make_cfg):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not parquet at all" * 10)
    _expect(tok, make_cfg(f"data.train={path}"), path, None, None, "does not parse")


def test_unknown_file_type(tmp_path, tok, make_cfg):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    _expect(tok, make_cfg(f"data.train={path}"), path, None, None, "unknown file type")


def test_empty_file_has_no_rows(tmp_path, tok, make_cfg):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError) as e:
        load_prompts(make_cfg(f"data.train={path}"), tok)
    assert str(path) in str(e.value)


def test_csv_empty_cell_names_the_row(tmp_path, tok, make_cfg):
    path = tmp_path / "d.csv"
    path.write_text('prompt,answer\n"What is 1+1?",2\n,3\n')
    _expect(tok, make_cfg(f"data.train={path}"), path, 1, "prompt")


def test_parquet_non_string_prompt(tmp_path, tok, make_cfg):
    path = tmp_path / "ints.parquet"
    datasets.Dataset.from_list(
        [{"prompt": 1, "answer": "1"}, {"prompt": 2, "answer": "2"}]
    ).to_parquet(str(path))
    _expect(tok, make_cfg(f"data.train={path}"), path, 0, "prompt", "int")


def test_saved_dir_error_names_the_dir(tmp_path, tok, make_cfg):
    path = tmp_path / "saved"
    datasets.Dataset.from_list([{"text": "x"}]).save_to_disk(str(path))
    _expect(tok, make_cfg(f"data.train={path}"), path, 0, "prompt")


def test_mixed_type_column_points_at_the_bad_row(tmp_path, tok, make_cfg, write_jsonl):
    # datasets stores a mixed column as JSON and would decode the valid "7" into 7.
    rows = [{"prompt": "7", "answer": "5"}, GOOD, {"prompt": 7, "answer": 3}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    _expect(tok, make_cfg(f"data.train={path}"), path, 2, "prompt", "int")


def test_mixed_type_answer_values_stay_as_written(tmp_path, tok, make_cfg, write_jsonl):
    path = write_jsonl(
        tmp_path / "mixed.jsonl", [{"prompt": "a", "answer": "5"}, {"prompt": "b", "answer": 3}]
    )
    ds = load_prompts(make_cfg(f"data.train={path}"), tok)
    assert [r["answer"] for r in ds] == ["5", 3]
