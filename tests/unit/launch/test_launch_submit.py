"""What `rlpost submit` sends: entrypoint, runtime env, user files (no Ray cluster needed)."""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlpost.commands.launch.submit import build_command_job, build_train_job
from rlpost.config import ConfigError, load_config, parse_override
from rlpost.registry import load_object

RECIPE = """\
model: {path: /models/tiny}
algorithm: {name: grpo}
reward: {functions: [%s]}
"""


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A working dir (also the cwd) with a reward inside, and a reward file outside it."""
    wd = tmp_path / "proj"
    (wd / "recipes").mkdir(parents=True)
    (wd / "my_reward.py").write_text("def score(completions, **kw):\n    return [1.0]\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "ext-reward.py").write_text("def bonus(completions, **kw):\n    return [2.0]\n")
    monkeypatch.chdir(wd)
    return wd, outside


def entry_args(entrypoint: str) -> list[str]:
    return shlex.split(entrypoint)


def test_inside_files_travel_with_the_working_dir(project):
    wd, _ = project
    recipe = wd / "recipes" / "r.yaml"
    recipe.write_text(RECIPE % "my_reward.py:score")
    job = build_train_job("recipes/r.yaml", ["trainer.steps=2", "data.system_prompt=Be brief"], ".")
    assert entry_args(job.entrypoint) == [
        "rlpost",
        "train",
        "recipes/r.yaml",
        "trainer.steps=2",
        "data.system_prompt=Be brief",
    ]
    assert job.runtime_env["working_dir"] == str(wd)
    assert ".venv" in job.runtime_env["excludes"] and "py_modules" not in job.runtime_env
    assert job.staged is None and job.rewritten == {}


def test_specs_are_rebased_on_the_working_dir(project, monkeypatch):
    wd, _ = project
    (wd / "recipes" / "r.yaml").write_text(RECIPE % "../my_reward.py:score")
    # run from recipes/ with --working-dir ..: the job's cwd is wd, so the spec must change
    monkeypatch.chdir(wd / "recipes")
    job = build_train_job("r.yaml", [], "..")
    args = entry_args(job.entrypoint)
    assert args[:3] == ["rlpost", "train", "recipes/r.yaml"]
    assert args[3:] == ['reward.functions=["my_reward.py:score"]']
    monkeypatch.chdir(wd)  # where the job runs: the spec resolves to the shipped file
    cfg = load_config(wd / "recipes" / "r.yaml", args[3:], validate_paths=False)
    assert cfg.reward.functions == [f"{wd / 'my_reward.py'}:score"]


def test_outside_files_are_staged_as_a_module(project, monkeypatch):
    wd, outside = project
    recipe = wd / "recipes" / "r.yaml"
    recipe.write_text(RECIPE % "my_reward.py:score")
    spec = f"{outside / 'ext-reward.py'}:bonus"
    over = [f"reward.functions=my_reward.py:score,{spec}", "trainer.steps=2"]
    job = build_train_job("recipes/r.yaml", over, ".")
    try:
        args = entry_args(job.entrypoint)
        # the user's override of that key is replaced by the rewritten one; others are kept
        assert args[3] == "trainer.steps=2"
        key, value = parse_override(args[4])
        assert key == "reward.functions"
        package = job.staged.name
        assert package.startswith("rlpost_staged_")
        assert value == ["my_reward.py:score", f"{package}.ext_reward:bonus"]
        assert job.runtime_env["py_modules"] == [str(job.staged)]
        # the staged package imports like Ray's py_modules will make it importable
        monkeypatch.syspath_prepend(str(job.staged.parent))
        importlib.invalidate_caches()
        assert load_object(value[1])(["x"]) == [2.0]
        cfg = load_config(recipe, args[3:], validate_paths=False)
        assert cfg.reward.functions == [f"{wd / 'my_reward.py'}:score", value[1]]
        assert cfg.trainer.steps == 2
    finally:
        job.cleanup()
    assert not job.staged.exists()


def test_recipe_outside_the_working_dir_is_found_in_the_job(project, monkeypatch, tmp_path):
    wd, outside = project
    recipe = outside / "r.yaml"
    recipe.write_text(RECIPE % "ext-reward.py:bonus")
    monkeypatch.chdir(outside)
    job = build_train_job(str(recipe), [], str(wd))
    try:
        staged = job.staged
        assert sorted(p.name for p in staged.iterdir()) == [
            "__init__.py",
            "ext_reward.py",
            "r.yaml",
        ]
        # run the entrypoint's shell words with the staged package on PYTHONPATH, `rlpost`
        # replaced by echo: the recipe argument must expand to the staged copy
        cmd = job.entrypoint.replace("rlpost train", "printf '%s\\n'", 1)
        env = {
            "PYTHONPATH": str(staged.parent),
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        }
        out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, cwd=wd)
        assert out.returncode == 0, out.stderr
        words = out.stdout.splitlines()
        assert words[0] == str(staged / "r.yaml")
        assert yaml.safe_load(Path(words[0]).read_text())["reward"]["functions"] == [
            "ext-reward.py:bonus"
        ]  # the train override (next word) redirects it to the staged module
        assert words[1] == f'reward.functions=["{staged.name}.ext_reward:bonus"]'
    finally:
        job.cleanup()


def test_compare_config_is_rewritten_and_staged(project):
    wd, outside = project
    cmp = wd / "cmp.yaml"
    spec = f"{outside / 'ext-reward.py'}:bonus"
    runs = [{"recipe": "recipes/a.yaml", "overrides": [f"reward.functions={spec}", "x.y=1"]}]
    cmp.write_text(yaml.safe_dump({"overrides": {"algorithm.name": spec}, "runs": runs}))
    job = build_train_job("cmp.yaml", [f"reward.functions={spec}"], ".", command="compare")
    try:
        module = f"{job.staged.name}.ext_reward:bonus"
        assert job.entrypoint.startswith('rlpost compare "$(python -c ')
        assert entry_args(job.entrypoint)[-1] == f"reward.functions={module}"  # CLI override
        staged = yaml.safe_load((job.staged / "cmp.yaml").read_text())
        assert staged == {
            "overrides": {"algorithm.name": module},
            "runs": [
                {"recipe": "recipes/a.yaml", "overrides": [f"reward.functions={module}", "x.y=1"]}
            ],
        }
    finally:
        job.cleanup()


def test_bad_inputs_fail_before_anything_is_sent(project):
    wd, _ = project
    (wd / "recipes" / "r.yaml").write_text(RECIPE % "missing.py:score")
    with pytest.raises(ConfigError, match=r"missing.py:score: file .*missing.py does not exist"):
        build_train_job("recipes/r.yaml", [], ".")
    with pytest.raises(ConfigError, match="unknown key 'trainer.stepz'"):
        build_train_job("recipes/r.yaml", ["trainer.stepz=1"], ".")
    with pytest.raises(ConfigError, match="recipe file not found"):
        build_train_job("nope.yaml", [], ".")
    with pytest.raises(ConfigError, match="--working-dir"):
        build_command_job("echo hi", str(wd / "nope"))


def test_command_job_env():
    job = build_command_job("python -c 'print(1)'", ".", env_vars={"A": "1"}, excludes=["data"])
    assert job.entrypoint == "python -c 'print(1)'"
    assert job.runtime_env["env_vars"] == {"A": "1"}
    assert job.runtime_env["excludes"] == ["data"]
