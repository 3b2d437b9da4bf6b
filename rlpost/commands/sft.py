"""`rlpost sft RECIPE [overrides]`: supervised fine-tuning through the RL trainer.

SFT is the ``sft`` algorithm (algorithms/sft.py) run by the normal trainer, so it gets the same
DeepSpeed learner group, checkpoints, metrics.jsonl and HF export as any RL run; the trainer
starts no vLLM engine for it (unless ``trainer.eval_every`` asks for in-loop evaluation).
"""

from __future__ import annotations

import argparse

from rlpost.config import ConfigError, load_config, parse_override
from rlpost.trainer import train


def sft_config(recipe: str, overrides: list[str]):
    """The recipe with ``algorithm.name=sft`` (a recipe naming another algorithm is an error)."""

    for item in overrides:
        key, value = parse_override(item)
        if key == "algorithm.name" and value != "sft":
            raise ConfigError(f"algorithm.name: `rlpost sft` trains sft, got {value!r}")
    cfg = load_config(recipe, ["algorithm.name=sft", *overrides])
    return cfg


def _sft(args: argparse.Namespace) -> int:
    cfg = sft_config(args.recipe, list(args.overrides))

    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    if cfg.trainer.export_hf and (run_dir / "final").exists():
        print(f"fine-tuned model: {run_dir / 'final'}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning on a task's reference answers or a data set's completions",
        description=(
            "Supervised fine-tuning through the DeepSpeed learner group (no rollout engine). "
            "Targets: task:NAME's sft_target, or a completion/response/target column. "
            "Example: rlpost sft launch/recipes/sft_tiny.yaml trainer.steps=20"
        ),
    )
    p.add_argument("recipe", help="YAML recipe, e.g. launch/recipes/sft_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides: section.key=value")
    p.set_defaults(func=_sft)
