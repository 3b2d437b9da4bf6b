"""Config: recipes, dotted overrides, and errors that name the key (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlpost.cli import render_config_doc
from rlpost.config import Config, ConfigError, config_from_dict, load_config, parse_override

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted((ROOT / "launch/recipes").glob("*.yaml"))


def test_every_recipe_loads_with_its_defaults():
    assert RECIPES, "no recipes found"
    for recipe in RECIPES:
        cfg = load_config(recipe, validate_paths=False)
        assert cfg.model.path, recipe


def test_dotted_overrides_are_typed_from_yaml():
    cfg = load_config(
        ROOT / "launch/recipes/grpo_tiny.yaml",
        ["algorithm.kl.beta=0.02", "trainer.steps=3", "rollout.stop=[a,b]", "logging.wandb=true"],
        validate_paths=False,
    )
    assert cfg.algorithm.kl.beta == 0.02 and cfg.trainer.steps == 3
    assert cfg.rollout.stop == ["a", "b"] and cfg.logging.wandb is True
    assert parse_override("a.b=") == ("a.b", "")


def test_bare_on_off_read_as_yaml_booleans_still_mean_on_off(tmp_path):
    on = load_config(None, ["model.path=x", "reference.enabled=on"], validate_paths=False)
    assert on.reference.enabled == "on"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: x}\nreference: {enabled: off}\n")
    assert load_config(recipe, validate_paths=False).reference.enabled == "off"
    with pytest.raises(ConfigError, match="data.overlong: True is not one of"):
        load_config(None, ["model.path=x", "data.overlong=yes"], validate_paths=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.stepz=3"], "unknown key 'trainer.stepz'; did you mean 'trainer.steps'?"),
        (["algorithm.kl.betta=1"], "did you mean 'algorithm.kl.beta'?"),
        (["trainer.steps=many"], "trainer.steps: expected int, got 'many'"),
        (["logging.wandb=3"], "logging.wandb: expected bool"),
        (["data.overlong=explode"], "data.overlong: 'explode' is not one of"),
        (["learner.mini_batch_size=5"], "learner.mini_batch_size: 5 does not divide"),
        (["trainer.steps=0"], "trainer.steps: must be >= 1"),
        (["model.path=/no/such/model"], "model.path: model not found: /no/such/model"),
        (["placement.mode=colocate"], "placement.mode: colocate needs GPUs"),
        (["trainer.max_restarts=-1"], "trainer.max_restarts: must be >= 0, got -1"),
        (["trainer.actor_timeout_s=0"], "trainer.actor_timeout_s: must be > 0 seconds"),
    ],
)
def test_bad_config_names_the_key(overrides, message, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model:\n  path: {tmp_path}\ntrainer:\n  prompts_per_step: 4\nrollout:\n  n: 4\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(recipe, overrides)
    assert message in str(err.value)


def test_misspelt_recipe_key_fails_in_cli_with_exit_code_2(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  path: tiny:nano\nlearner:\n  zero_stagee: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", "train", str(recipe)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "config error: unknown key 'learner.zero_stagee'; did you mean 'learner.zero_stage'?"
    )


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML does not parse"):
        load_config(bad)


def test_defaults_build_a_valid_tree():
    cfg = config_from_dict({})
    assert isinstance(cfg, Config) and cfg.algorithm.name == "grpo"


def test_configuration_doc_matches_dataclasses():
    doc = (ROOT / "docs/configuration.md").read_text()
    assert doc.strip() == render_config_doc().strip(), (
        "docs/configuration.md is stale: regenerate with "
        "`python -m rlpost.cli config-doc > docs/configuration.md`"
    )


def test_help_lists_every_subcommand_and_each_has_help():
    proc = subprocess.run(
        [sys.executable, "-m", "rlpost.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    commands = [
        "train",
        "make-tiny",
        "config-doc",
        "make-task",
        "reward-server",
        "submit",
        "jobs",
        "plan",
        "launch",
        "bench",
        "gpu-check",
        "eval",
        "sft",
        "rm-data",
        "train-rm",
        "bon",
        "compare",
        "demo",
    ]
    for cmd in commands:
        assert f"    {cmd} " in proc.stdout or f"    {cmd}\n" in proc.stdout, cmd
    from rlpost.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(commands)  # nothing registered that is not listed
