"""`rlpost bench`'s pure pieces: the report and JSON from fixed figures, and the floor on the
nano model (it runs and returns positive seconds; no test asserts on timing values)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from rlpost.commands import bench
from rlpost.commands.bench import floor, report
from rlpost.models import tiny


def _arm(k: int, step: float) -> dict:
    return {
        "off_policy_steps": k,
        "s_per_step": step,
        "startup_s": 31.0,
        "generation_s": 2.0,
        "phases": {"generate": 2.1, "score": 2.5, "train": 8.0, "sync": 0.1},
        "response_length_mean": 127.0,
        "peak_memory": [
            {"actor": "LearnerWorker", "pid": 11, "self_mb": 900.0, "children_mb": 0.0},
            {"actor": "VLLMEngine", "pid": 12, "self_mb": 700.0, "children_mb": 1200.0},
        ],
        "params_m": 12.6,
    }


def _result() -> dict:
    anchor = {
        "recipe": "launch/recipes/bench_small.yaml",
        "params_m": 12.6,
        "prompts_per_step": 8,
        "n": 8,
        "max_new_tokens": 128,
        "torch_threads": 2,
        "autocast": "off",
        "epochs": 1,
        "arms": [_arm(0, 15.0), {"off_policy_steps": 1, "skipped": "key unknown"}],
        "floor": {
            "generation_s": 2.0,
            "reference_forward_s": 1.0,
            "policy_step_fp32_s": 7.0,
            "floor_s_per_step": 10.0,
            "rows": 64.0,
            "tokens": 10112.0,
            "policy_threads": 2,
            "ref_threads": 2,
        },
        "trl": {"s_per_step": 30.0, "steps_timed": 2, "completion_length_mean": 128.0},
    }
    gen = {**anchor, "arms": [_arm(0, 20.0), _arm(1, 16.0)], "trl": {"error": "boom\nValueError"}}
    return {
        "device": "CPU x2",
        "commit": "abc1234",
        "machine_start": {"loadavg": [1.0, 1.5, 2.0], "cpu_count": 2, "time_utc": "t0"},
        "machine_end": {"loadavg": [2.0, 1.5, 2.0], "cpu_count": 2, "time_utc": "t1"},
        "steps": 2,
        "anchors": {"small": anchor, "gen512": gen},
    }


def test_json_has_the_comparable_keys_per_anchor():
    result = _result()
    result["anchors"]["small"]["arms"][0]["phases"]["sync"] = float("nan")  # a median of nothing
    data = json.loads(json.dumps(report.to_json(result), allow_nan=False))
    assert data["anchors"]["small"]["phases"]["sync"] is None
    assert data["commit"] == "abc1234" and data["machine_start"]["cpu_count"] == 2
    for name in ("small", "gen512"):
        assert set(report.SUMMARY_KEYS) <= set(data["anchors"][name])
    small = data["anchors"]["small"]
    assert small["rlpost_s_per_step"] == 15.0 and small["floor_s_per_step"] == 10.0
    assert small["trl_s_per_step"] == 30.0 and small["off_policy_steps"] == 0
    assert small["vs_floor"] == pytest.approx(1.5) and small["vs_trl"] == pytest.approx(2.0)
    assert small["peak_memory"][1]["children_mb"] == 1200.0
    gen = data["anchors"]["gen512"]
    assert gen["trl_s_per_step"] is None and gen["vs_trl"] is None
    assert [a["off_policy_steps"] for a in gen["arms"]] == [0, 1]


def test_markdown_names_every_arm_and_the_skips():
    text = report.markdown(_result())
    assert "## anchor `small`" in text and "## anchor `gen512`" in text
    assert "| rlpost, off_policy_steps=0 | 15.00 | 1.50x | 2.00x |" in text
    assert "off_policy_steps=1 | skipped: key unknown" in text
    assert "| rlpost, off_policy_steps=1 | 16.00 | 1.60x |" in text
    assert "| floor (bare vLLM + PyTorch) | 10.00 | 1.00x |" in text
    assert "| TRL GRPOTrainer (HF generate) | 30.00 | 3.00x | 1.00x |" in text
    assert "| TRL GRPOTrainer | ValueError |" in text
    assert "VLLMEngine 700 + 1200 in children" in text
    assert "load average (1/5/15 min) [1.0, 1.5, 2.0] at start" in text


def test_floor_is_generation_plus_reference_plus_policy_per_epoch():
    f = {"reference_forward_s": 1.0, "policy_step_fp32_s": 3.0}
    assert floor.floor_s_per_step(2.0, f, epochs=2) == 9.0
    assert floor.floor_s_per_step(2.0, {**f, "policy_step_bf16_s": 2.0}, epochs=1) == 5.0


def test_rows_are_prompt_plus_completion_right_padded():
    rows = floor.sample_rows(
        [[1, 2], [3]], [[{"token_ids": [4]}, {"token_ids": []}], [{"token_ids": [5, 6]}]]
    )
    assert rows == [[1, 2, 4], [1, 2], [3, 5, 6]]
    ids, attn = floor.pad_rows(rows, pad_id=0)
    assert ids.tolist() == [[1, 2, 4], [1, 2, 0], [3, 5, 6]]
    assert attn.sum(1).tolist() == [3, 2, 3]


def test_floor_runs_on_nano_and_returns_positive_seconds():
    path = str(tiny.ensure("nano"))
    ids = torch.randint(3, 100, (2, 8))
    attn = torch.ones_like(ids)
    threads = torch.get_num_threads()
    got = floor.measure_floor(
        path, ids, attn, policy_threads=1, ref_threads=1, micro=1, autocast_bf16=True, reps=1
    )
    assert torch.get_num_threads() == threads  # the caller's threads come back
    for k in ("reference_forward_s", "policy_step_fp32_s", "policy_step_bf16_s"):
        assert got[k] > 0, k
    assert got["rows"] == 2 and got["tokens"] == 16


def test_cli_picks_anchors_and_arms():
    p = argparse.ArgumentParser()
    bench.add_cli(p.add_subparsers())
    args = p.parse_args(["bench", "--anchors", "gen512", "--no-trl", "--quick", "--out", "b.md"])
    assert args.anchors == "gen512" and args.no_trl and args.quick
    for name in bench.ANCHORS:
        assert bench.resources.launch_file("recipes", bench.ANCHORS[name]).exists()


def test_trl_timeout_reports_the_steps_done_before_it(monkeypatch):
    """A TRL run cut by ``--trl-timeout`` still reports the steps it finished: on the
    generation-heavy anchor even TRL's first step can outlast a practical bound."""
    from rlpost.commands.bench import trl_arm

    script = (
        "import json, sys, time\n"
        "json.dump({'step_s': [12.5], 'lengths': [100]}, open(sys.argv[4], 'w'))\n"
        "time.sleep(60)\n"
    )
    monkeypatch.setattr(trl_arm, "TRL_SCRIPT", script)
    got = trl_arm.run_trl("m", ["p"], steps=2, threads=1, n=2, max_new_tokens=8, timeout_s=3)
    assert got["error"] == "timed out after 3 s, 1 of 3 steps done (first, warm-up step 12.5 s)"
    assert got["steps_done_s"] == [12.5]
