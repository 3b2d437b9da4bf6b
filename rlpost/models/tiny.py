"""Tiny random-init models built offline, saved in Hugging Face format.

No model hub is reachable in CI, so tests, benchmarks and the demo make their own models and then
load them through exactly the ``from_pretrained`` path a user's real model takes.

``rlpost.config`` imports this module in every process (to resolve ``tiny:PRESET``), so
transformers and tokenizers are imported only where a model is built: a reward actor or worker
does not pay for them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% else %}<|assistant|>\n{{ m['content'] }}<|eos|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>"]
GSM8K_DIR = Path(__file__).resolve().parents[2] / "envs" / "data" / "gsm8k"


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int  # tokenizer vocabulary trained offline
    kind: str = "causal"  # or "rm"
    arch: str = "llama"  # or "qwen2": q/k/v biases, tied embeddings (as Qwen2.5-0.5B has them)
    model_vocab: int = 0  # embedding rows when larger than the tokenizer (0 = tokenizer size)
    tied: bool = True
    dtype: str = "float32"  # saved weights


PRESETS = {
    "nano": Preset(64, 2, 2, 1, 128, 1024),
    "small": Preset(384, 6, 6, 2, 1024, 4096, tied=False),
    "rm-nano": Preset(64, 2, 2, 1, 128, 1024, kind="rm"),
    "qwen2-nano": Preset(64, 2, 2, 1, 128, 1024, arch="qwen2"),
    # The shape of Qwen2.5-0.5B (494M params: 24 layers, GQA 14/2, 151936-row tied embedding),
    # random init: what the GPU check trains without downloading anything.
    "qwen2-0.5b": Preset(
        896, 24, 14, 2, 4864, 4096, arch="qwen2", model_vocab=151936, dtype="bfloat16"
    ),
    # ~100M params, Llama-shaped: the size point of the weight-sync benchmark.
    "llama-100m": Preset(768, 12, 12, 4, 1536, 4096, model_vocab=32000, tied=False),
}


def model_config(preset: str, tokenizer_len: int, bos: int = 1, eos: int = 2, pad: int = 0):
    """The transformers config of ``preset`` (no weights): also what tests size-check."""
    from transformers import LlamaConfig, Qwen2Config  # heavy: only when a model is built

    p = PRESETS[preset]
    common = dict(
        vocab_size=max(tokenizer_len, p.model_vocab),
        hidden_size=p.hidden,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        intermediate_size=p.intermediate,
        max_position_embeddings=2048,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=p.tied,
        num_labels=1,
    )
    if p.arch == "qwen2":  # Qwen2 attention always has q/k/v biases (and no o_proj bias)
        return Qwen2Config(**common, rope_theta=1e6, use_sliding_window=False)
    return LlamaConfig(**common)


def cache_dir() -> Path:
    return Path(os.environ.get("RLPOST_CACHE", "~/.cache/rlpost")).expanduser()


def _corpus(limit: int = 3000) -> list[str]:
    """Deterministic training text: GSM8K questions/answers plus arithmetic-like strings."""
    lines: list[str] = []
    train = GSM8K_DIR / "train.jsonl"
    if train.exists():
        with train.open() as f:
            for i, line in enumerate(f):
                if i >= limit:
                    break
                row = json.loads(line)
                lines += [row["question"], row["answer"]]
    for a in range(0, 200, 7):
        for b in range(0, 200, 11):
            lines.append(f"What is {a} + {b}? {a} + {b} = {a + b}. The answer is {a + b}.")
            lines.append(f"Compute {a} * {b} - {b}: \\boxed{{{a * b - b}}}")
    lines.append("0123456789 +-*/=()<>.,:;!? Step 1: Step 2: Answer: Yes No correct incorrect")
    return lines


def train_tokenizer(vocab_size: int, out: Path) -> None:
    """Byte-level BPE with bos/eos/pad and a chat template, saved via PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # heavy
    from transformers import PreTrainedTokenizerFast  # heavy: only when a model is built

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def build(preset: str, out: str | Path, seed: int = 0) -> Path:
    """Write model + tokenizer for ``preset`` into ``out`` (atomic: temp dir then rename)."""
    # heavy: only when a model is built
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        train_tokenizer(p.vocab, tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        conf = model_config(preset, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        torch.manual_seed(seed)
        cls = AutoModelForSequenceClassification if p.kind == "rm" else AutoModelForCausalLM
        model = cls.from_config(conf).to(getattr(torch, p.dtype))
        model.save_pretrained(tmp)
        if p.kind == "causal":
            model.generation_config.eos_token_id = tok.eos_token_id
            model.generation_config.pad_token_id = tok.pad_token_id
            model.generation_config.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure(preset: str, seed: int = 0) -> Path:
    """The cached copy under RLPOST_CACHE, built on first use."""
    out = cache_dir() / "models" / f"{preset}-s{seed}-v2"
    if not (out / "config.json").exists():
        build(preset, out, seed=seed)
    return out


def num_params(path: str | Path) -> int:
    from transformers import AutoConfig, AutoModel  # heavy: only when a model is built

    conf = AutoConfig.from_pretrained(path)
    model = AutoModel.from_config(conf)
    return sum(p.numel() for p in model.parameters())
