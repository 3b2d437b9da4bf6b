from __future__ import annotations

import pytest
import torch

from rlpost.batch import Batch, build_sequences


def make() -> Batch:
    b = build_sequences([[1, 2], [3]], [[4, 5, 6], [7]], [[-0.1, -0.2, -0.3], [-0.4]])
    b.columns["answer"] = ["x", "y"]
    return b


def test_build_sequences_layout():
    b = make()
    assert b["input_ids"].tolist() == [[1, 2, 4, 5, 6], [3, 7, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert torch.allclose(b["old_logp"][0], torch.tensor([0, 0, -0.1, -0.2, -0.3]))
    assert torch.allclose(b["old_logp"][1], torch.tensor([0, -0.4, 0, 0, 0]))


def test_select_chunk_concat_repeat_trim():
    b = make()
    s = b.select([1, 0])
    assert s["answer"] == ["y", "x"] and s["input_ids"][0, 0] == 3
    assert [len(p) for p in b.chunk(2)] == [1, 1]
    with pytest.raises(ValueError, match="cannot split 2 rows into 3"):
        b.chunk(3)
    r = b.repeat_interleave(2)
    assert r["answer"] == ["x", "x", "y", "y"]
    c = Batch.concat([b.select([1]).trim(), b.select([0])])
    assert c["input_ids"].shape == (2, 5) and c["answer"] == ["y", "x"]
    assert b.select([1]).trim()["input_ids"].shape == (1, 2)


def test_row_count_mismatch_is_refused():
    b = make()
    with pytest.raises(ValueError, match="'bad' has 3 rows, batch has 2"):
        b["bad"] = torch.zeros(3)
    with pytest.raises(KeyError, match="batch has no 'missing'"):
        _ = b["missing"]
