"""Score (prompt, completion) pairs with a Hugging Face sequence-classification reward model.

Each reward model formats text the way it was trained: through its own tokenizer's chat template
when it has one (prompt as the user turn, completion as the assistant turn), else by plain
concatenation. The policy's template plays no part here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlpost.models.hf import load_model, load_tokenizer, resolve_dtype


class RewardModel:
    """A frozen ``AutoModelForSequenceClassification`` with batched, deterministic scoring."""

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        batch_size: int = 16,
        max_length: int = 1024,
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.path, self.device, self.batch_size, self.max_length = (
            str(path),
            device,
            batch_size,
            max_length,
        )
        self.tokenizer = load_tokenizer(self.path, trust_remote_code)
        # Keep the end of long texts: the completion is what is being judged.
        self.tokenizer.truncation_side = "left"
        self.model = load_model(
            self.path, "reward", resolve_dtype(dtype, device), trust_remote_code=trust_remote_code
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        labels = int(getattr(self.model.config, "num_labels", 1))
        if labels not in (1, 2):
            raise ValueError(
                f"reward model {self.path}: num_labels={labels}; expected 1 (a score) or 2 "
                "(bad/good, scored as the logit difference)"
            )
        self.model.to(device).eval()
        self.has_template = bool(getattr(self.tokenizer, "chat_template", None))

    def format(self, prompt: str | list[dict], completion: str) -> str:
        """The exact text the model reads for one pair."""
        if self.has_template:
            msgs = (
                list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            )
            msgs.append({"role": "assistant", "content": completion})
            return self.tokenizer.apply_chat_template(msgs, tokenize=False)
        if isinstance(prompt, list):
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        return f"{prompt}{completion}"

    def encode(self, texts: list[str]) -> Any:
        """Padded model inputs of formatted texts (the tokenisation scoring and training share)."""
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            add_special_tokens=not self.has_template,
        ).to(self.device)

    @staticmethod
    def reward(logits: torch.Tensor) -> torch.Tensor:
        """[B] rewards from [B, num_labels] logits: the score, or good − bad for two labels."""
        logits = logits.float()
        return logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]

    @torch.no_grad()
    def score(self, prompts: list, completions: list[str]) -> torch.Tensor:
        """Float32 scores [N] on CPU; batches are length-sorted so padding stays small."""
        if len(prompts) != len(completions):
            raise ValueError(
                f"reward model {self.path}: {len(prompts)} prompts but {len(completions)} completions"
            )
        texts = [self.format(p, c) for p, c in zip(prompts, completions)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), dtype=torch.float32)
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            enc = self.encode([texts[i] for i in idx])
            out[torch.tensor(idx)] = self.reward(self.model(**enc).logits).cpu()
        return out

    __call__ = score
