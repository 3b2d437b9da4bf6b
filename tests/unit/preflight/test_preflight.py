"""Bad reward specs, algorithm files and data files end as one line and exit code 2 before any
actor starts, in train, submit, launch slurm|kuberay and compare alike; --resume never starts
fresh; overrides after flags; recipes by name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rlpost import cli, preflight, resources
from rlpost.config import ConfigError, load_config

GOOD_REWARD = "def score(completions, **kw):\n    return [0.0] * len(completions)\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ok.py").write_text(
        GOOD_REWARD + "def needs_foo(completions, foo):\n    return [0.0]\n"
    )
    (tmp_path / "badimport.py").write_text("import no_such_module_rlpost\n" + GOOD_REWARD)
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "q", "solution": "1"}) + "\n")
    (tmp_path / "alg.py").write_text("class NotAnAlgorithm:\n    pass\n")
    return tmp_path


@pytest.fixture
def no_actors(monkeypatch):
    """Any attempt to start training (Ray, actors) fails the test."""
    import rlpost.trainer

    def boom(cfg):
        raise AssertionError("training started")

    monkeypatch.setattr(rlpost.trainer, "train", boom)


BAD = [
    ("reward.functions=[{d}/nofile.py:score]", "reward file not found"),
    ("reward.functions=[{d}/badimport.py:score]", "No module named 'no_such_module_rlpost'"),
    ("reward.functions=[{d}/ok.py:missing]", "has no 'missing'"),
    ("reward.functions=[{d}/ok.py:needs_foo]", "needs argument(s) ['foo']"),
    ("reward.functions=[nosuchbuiltin]", "unknown reward function 'nosuchbuiltin'"),
    ("reward.functions=[regex_format(oops)]", "Python literals"),
    ("reward.functions=[rlpost_no_such_pkg.mod:fn]", "No module named 'rlpost_no_such_pkg'"),
    ("reward.functions=[exact_match]", "compare against reference answers"),
    ("algorithm.name={d}/nofile.py:Algo", "nofile.py does not exist"),
    ("algorithm.name={d}/alg.py:NotAnAlgorithm", "not an rlpost Algorithm"),
    ("data.train={d}/missing.jsonl", "file not found"),
    ("data.prompt_key=question", "no prompt column 'question'"),
]


def _train_args(d: Path, override: str) -> list[str]:
    base = [f"data.train={d}/d.jsonl", f"reward.functions=[{d}/ok.py:score]"]
    return ["train", "grpo_tiny", *base, override.format(d=d)]


@pytest.mark.parametrize("override, words", BAD)
def test_train_refuses_bad_spec_before_any_actor(files, no_actors, capsys, override, words):
    rc = cli.main(_train_args(files, override))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert words in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_good_spec_passes_preflight(files):
    cfg = load_config(
        str(resources.find("grpo_tiny", "recipe")),
        [f"data.train={files}/d.jsonl", f"reward.functions=[{files}/ok.py:score,boxed_format]"],
    )
    preflight.check(cfg)


@pytest.mark.parametrize("command", ["slurm", "kuberay"])
def test_launch_refuses_bad_reward(files, capsys, command, tmp_path):
    extra = ["--image", "img"] if command == "kuberay" else ["--nodes", "1"]
    rc = cli.main(
        ["launch", command, "grpo_tiny", f"reward.functions=[{files}/nofile.py:score]",
         "--out", str(tmp_path / "out"), *extra]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "reward file not found" in err and "--no-check" in err, err
    assert not (tmp_path / "out").exists()


def test_submit_refuses_bad_reward_before_contacting_a_cluster(files, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")  # nothing listens there
    rc = cli.main(["submit", "grpo_tiny", f"reward.functions=[{files}/badimport.py:score]"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "No module named" in err, err


def test_compare_refuses_bad_reward(files, capsys, tmp_path):
    spec = tmp_path / "cmp.yaml"
    spec.write_text(
        "name: t\nseeds: [0]\n"
        f"overrides: ['reward.functions=[{files}/nofile.py:score]']\n"
        "runs:\n  - {label: a, recipe: launch/recipes/grpo_tiny.yaml}\n"
    )
    rc = cli.main(["compare", str(spec), "--output-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "reward file not found" in err, err


# ------------------------------------------------------------------ resume, argv, recipes


def _ckpt(run: Path, cfg_tree: dict) -> None:
    import yaml

    step = run / "checkpoints/step-2"  # the layout checkpoint.save writes, marker included
    step.mkdir(parents=True)
    (step / "state.pt").write_bytes(b"x")
    (step / "COMPLETE").write_text(json.dumps({"step": 2, "files": {"state.pt": 1}}))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg_tree))


def test_resume_refuses_when_there_is_no_run(files, no_actors, capsys, tmp_path):
    rc = cli.main(
        ["train", "grpo_tiny", "--resume", f"trainer.output_dir={tmp_path}/runs"]
    )  # the override after the flag is accepted
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--resume: no run of this recipe" in err, err


def test_resume_refuses_a_named_run_without_checkpoint(no_actors, capsys, tmp_path):
    rc = cli.main(
        ["train", "grpo_tiny", "--resume", f"trainer.output_dir={tmp_path}", "trainer.run_name=x"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no checkpoint in" in err and "trainer.run_name=x" in err, err


def test_resume_picks_the_latest_run_of_the_same_recipe(tmp_path, monkeypatch):
    import os
    import time

    cfg = load_config(
        str(resources.find("grpo_tiny", "recipe")), [f"trainer.output_dir={tmp_path}"]
    )
    same = {"algorithm": {"name": "grpo"}, "model": {"path": cfg.model.path},
            "data": {"train": cfg.data.train}}  # fmt: skip
    _ckpt(tmp_path / "grpo-old", same)
    _ckpt(tmp_path / "grpo-other-data", {**same, "data": {"train": "task:other"}})
    time.sleep(0.01)
    _ckpt(tmp_path / "grpo-new", same)
    later = time.time() + 10
    os.utime(tmp_path / "grpo-other-data/checkpoints/step-2", (later, later))
    assert preflight.resumable_run(cfg) == "grpo-new"


def test_overrides_after_any_flag():
    args = cli.parse_args(["train", "grpo_tiny", "a.b=1", "--resume", "c.d=2"])
    assert args.resume and args.overrides == ["a.b=1", "c.d=2"]
    with pytest.raises(SystemExit):
        cli.parse_args(["train", "grpo_tiny", "--resume", "notanoverride"])


def test_shipped_files_resolve_by_name_and_by_launch_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout
    assert resources.find("grpo_tiny", "recipe").name == "grpo_tiny.yaml"
    assert resources.find("launch/recipes/grpo_tiny.yaml").exists()
    assert resources.find("smoke_nano", "compare").exists()
    assert resources.launch_file("slurm", "rlpost.sbatch.in").exists()
    assert resources.find("nope", "recipe") == Path("nope")
    assert "grpo_tiny" in resources.names("recipe")


def test_preflight_subprocess_never_imports_user_code_here(files):
    cfg = load_config(
        str(resources.find("grpo_tiny", "recipe")),
        [f"data.train={files}/d.jsonl", f"reward.functions=[{files}/ok.py:score]"],
    )
    preflight.check(cfg)
    assert not any(
        "ok" == Path(getattr(m, "__file__", "") or "").stem for m in sys.modules.values()
    )


def test_config_error_is_a_config_error():
    with pytest.raises(ConfigError, match="reward file not found"):
        cfg = load_config(None, ["model.path=unused", "reward.functions=[/nope/x.py:f]"],
                          validate_paths=False)  # fmt: skip
        preflight.check_rewards(cfg)
