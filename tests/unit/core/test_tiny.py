"""make-tiny output loads through the normal from_pretrained path and generates."""

from __future__ import annotations

import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlpost.models import tiny


def test_make_tiny_cli_builds_a_loadable_model_that_generates(tmp_path):
    out = tmp_path / "nano"
    proc = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", "make-tiny", "--preset", "nano", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert tok.bos_token and tok.eos_token and tok.pad_token and tok.chat_template
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|assistant|>\n")
    ids = tok(text, return_tensors="pt").input_ids
    torch.manual_seed(0)
    gen = model.generate(ids, max_new_tokens=5, do_sample=True, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids.shape[1]
    assert tok.decode(tok("12 + 7 = 19").input_ids) == "12 + 7 = 19"


def test_presets_sizes_and_cache():
    small = tiny.ensure("small")
    assert 9e6 < tiny.num_params(small) < 12e6
    conf = AutoModelForCausalLM.from_pretrained(small).config
    assert (
        conf.hidden_size,
        conf.num_hidden_layers,
        conf.num_attention_heads,
        conf.num_key_value_heads,
        conf.intermediate_size,
    ) == (384, 6, 6, 2, 1024)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny.ensure("rm-nano"))
    assert rm.config.num_labels == 1
    assert tiny.ensure("nano") == tiny.ensure("nano")  # cached: built once


def test_qwen2_nano_has_the_qwen2_layout_real_models_bring():
    """q/k/v biases (no o_proj bias) and one tied embedding matrix, as Qwen2.5-0.5B has them."""
    model = AutoModelForCausalLM.from_pretrained(tiny.ensure("qwen2-nano"))
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    names = {n for n, _ in model.named_parameters()}
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert f"model.layers.0.self_attn.{proj}.bias" in names
    assert "model.layers.0.self_attn.o_proj.bias" not in names
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in names  # tied: named_parameters lists it once


def test_qwen2_half_billion_preset_has_the_shape_of_qwen2_5_0_5b():
    """Sized on the meta device: the config alone, no 2 GB of weights in a unit test."""
    conf = tiny.model_config("qwen2-0.5b", tokenizer_len=4096)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
    n = sum(p.numel() for p in model.parameters())
    # Qwen2.5-0.5B: 494,032,768 parameters with its 151,936-row tied embedding
    assert n == 494_032_768
    assert (conf.hidden_size, conf.num_hidden_layers, conf.intermediate_size) == (896, 24, 4864)
    assert (conf.num_attention_heads, conf.num_key_value_heads) == (14, 2)
