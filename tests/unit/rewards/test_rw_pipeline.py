"""Worker isolation and timeouts, the on_error policies, weights, and the pipeline as a whole."""

import os
import sys
import types

import pytest

from rewards.base import RewardError, check_items
from rewards.pipeline import RewardPipeline
from rewards.workers import WorkerPool
from rlpost.config import Config

P = ["p0", "p1", "p2", "p3"]
C = ["4", "the answer is 5", "x", "7"]
ANS = {"answer": ["4", "5", "6", "8"]}
GOOD = [1.0, 1.0, 0.0, 0.0]  # contains_answer on (C, ANS)


def cfg_with(functions, workers=0, on_error="fail", timeout_s=30.0, **reward):
    cfg = Config()
    cfg.reward.functions = list(functions)
    cfg.reward.workers, cfg.reward.on_error, cfg.reward.timeout_s = workers, on_error, timeout_s
    for k, v in reward.items():
        setattr(cfg.reward, k, v)
    return cfg


# ------------------------------------------------------------------ worker processes


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(1, timeout_s=30.0)  # tests that need a short timeout set it themselves
    yield p
    p.close()


def call(pool, fn_spec, name=None, style="trl"):
    name = name or fn_spec.rpartition(":")[2]
    return check_items(name, pool.call(name, fn_spec, style, "answer", P, C, ANS, 0), len(C))


def test_functions_run_in_another_process(pool, spec):
    (a, *_) = call(pool, spec("pid"))
    assert a != float(os.getpid())
    assert call(pool, spec("contains_answer")) == GOOD
    assert call(pool, "math_verify") == [1.0, 1.0, 0.0, 0.0]
    assert call(pool, spec("compute_score"), style="auto") == [1.0, 0.0, 0.0, 0.0]


def test_worker_exception_is_reported_for_the_call(pool, spec):
    out = call(pool, spec("raises"))
    e = out[0]
    assert all(v is e for v in out) and e.kind == "exception" and e.row is None
    assert "'raises'" in str(e) and "ZeroDivisionError: boom" in str(e)
    assert "user_rewards.py" in str(e)  # where it was raised
    assert call(pool, spec("contains_answer")) == GOOD  # the worker keeps serving


@pytest.mark.parametrize(
    "name, kind, row",
    [
        ("nan_second", "non_finite", 1),
        ("non_number", "non_number", 1),
        ("wrong_length", "wrong_length", None),
        ("not_a_list", "wrong_length", None),
    ],
)
def test_bad_outputs_from_workers(pool, spec, name, kind, row):
    errs = [v for v in call(pool, spec(name)) if isinstance(v, RewardError)]
    assert errs and errs[0].kind == kind and errs[0].row == row and errs[0].function == name


def test_timeout_kills_and_replaces_the_worker(pool, spec):
    before = pool.restarts
    old = pool._all[0].proc
    pool.timeout_s = 1.0
    try:
        out = call(pool, spec("sleeps"))
    finally:
        pool.timeout_s = 30.0
    assert out[0].kind == "timeout" and "timed out after 1 s (worker killed)" in str(out[0])
    assert pool.restarts == before + 1
    assert old.poll() is not None  # the hung process is gone
    assert call(pool, spec("contains_answer")) == GOOD  # the replacement works


def test_dead_worker_is_reported_and_replaced(pool, spec):
    out = call(pool, spec("dies"))
    assert out[0].kind == "exception" and "worker process died (exit code 7)" in str(out[0])
    assert call(pool, spec("contains_answer")) == GOOD


def test_worker_killed_under_a_call_is_replaced_and_the_call_redone(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("RLPOST_TEST_MARKER_DIR", str(tmp_path))  # workers inherit the env
    p = WorkerPool(1, timeout_s=30.0)
    try:
        assert call(p, spec("killed_once")) == [1.0] * len(C)
        assert p.deaths == 1 and (tmp_path / "killed_once").exists()
    finally:
        p.close()


def test_load_failure_names_the_function(pool, spec):
    with pytest.raises(ValueError, match="'missing'.*could not be loaded.*has no 'missing'"):
        pool.load(spec("missing"), "auto", "answer", "missing")


# ------------------------------------------------------------------ on_error policies

ROW_CASES = {"nan_second": "non_finite", "non_number": "non_number"}
CALL_CASES = {"raises": "exception", "wrong_length": "wrong_length", "sleeps": "timeout"}


@pytest.mark.parametrize("bad", [*ROW_CASES, *CALL_CASES])
@pytest.mark.parametrize("policy", ["fail", "drop", "zero"])
def test_policy(spec, bad, policy):
    workers = 1 if bad == "sleeps" else 0  # the timeout case kills a real worker
    cfg = cfg_with(
        [spec("contains_answer"), spec(bad)], workers=workers, on_error=policy, timeout_s=1.0
    )
    kind = {**ROW_CASES, **CALL_CASES}[bad]
    with RewardPipeline(cfg) as pipe:
        if policy == "fail":
            with pytest.raises(RewardError) as ei:
                pipe.score(P, C, ANS)
            assert ei.value.function == bad and ei.value.kind == kind
            assert f"reward function '{bad}'" in str(ei.value)
            if bad in ROW_CASES:
                assert "row 1" in str(ei.value)
            return
        scores, m = pipe.score(P, C, ANS)
    n_bad = 1 if bad in ROW_CASES else 4
    if bad in ROW_CASES:  # the bad function gives 1.0 on every other row
        expected = {"drop": [2.0, None, 1.0, 1.0], "zero": [2.0, 1.0, 1.0, 1.0]}[policy]
    else:
        expected = {"drop": [None] * 4, "zero": GOOD}[policy]
    assert scores == expected
    assert m["reward/errors"] == n_bad and m[f"reward/errors/{kind}"] == n_bad
    assert m["reward/dropped"] == (n_bad if policy == "drop" else 0)
    assert len(pipe.last_errors) == 1 and pipe.last_errors[0].kind == kind


# ------------------------------------------------------------------ combination


def test_weights_and_metrics(spec):
    cfg = cfg_with([spec("contains_answer"), spec("only_completions")], weights=[2.0, 0.5])
    with RewardPipeline(cfg) as pipe:
        scores, m = pipe.score(P, C, ANS)
    # 2 · [1, 1, 0, 0] + 0.5 · [1, 15, 1, 1]
    assert scores == [2.5, 9.5, 0.5, 0.5]
    assert m["reward/contains_answer/mean"] == 0.5
    assert m["reward/only_completions/mean"] == 4.5
    assert m["reward/mean"] == 3.25 and m["reward/errors"] == 0 and m["reward/dropped"] == 0


def test_none_means_not_applicable(spec):
    with RewardPipeline(cfg_with([spec("half_none")], on_error="drop")) as pipe:
        scores, m = pipe.score(P, C, ANS)
    assert scores == [None, 2.0, None, 2.0] and m["reward/none"] == 2 and m["reward/dropped"] == 2
    with RewardPipeline(cfg_with([spec("half_none")], on_error="zero")) as pipe:
        assert pipe.score(P, C, ANS)[0] == [0.0, 2.0, 0.0, 2.0]
    with RewardPipeline(cfg_with([spec("half_none"), spec("contains_answer")])) as pipe:
        assert pipe.score(P, C, ANS)[0] == [1.0, 3.0, 0.0, 2.0]


def test_verl_and_builtin_together_with_forced_style(spec):
    cfg = cfg_with([spec("verl_dict"), "math_verify"], workers=1, style="verl")
    with RewardPipeline(cfg) as pipe:
        scores, m = pipe.score(P, C, {**ANS, "data_source": ["gsm8k"] * 4})
    # verl_dict: 0.5 / -0.5; math_verify stays TRL: [1, 1, 0, 0]
    assert scores == [1.5, 0.5, -0.5, -0.5]
    assert m["reward/verl_dict/acc"] == 1.0 and m["reward/math_verify/mean"] == 0.5


def test_async_openrlhf_and_step_in_workers(spec):
    cfg = cfg_with([spec("async_len"), spec("openrlhf_reward"), spec("sees_step")], workers=2)
    with RewardPipeline(cfg) as pipe:
        scores, _ = pipe.score(P, C, ANS, step=3)
    # lengths [1, 15, 1, 1] + openrlhf [1, 1, 0, 0] + step 3
    assert scores == [5.0, 19.0, 4.0, 4.0]


def test_answer_key_alias(spec):
    cfg = cfg_with([spec("contains_answer")])
    cfg.data.answer_key = "solution"
    with RewardPipeline(cfg) as pipe:
        assert pipe.score(P, C, {"solution": ANS["answer"]})[0] == GOOD


def test_task_verifier_is_the_default(monkeypatch):
    def verifier(prompts, completions, answer, **kw):
        return [float(c == a) for c, a in zip(completions, answer)]

    fake = types.SimpleNamespace(get_task=lambda name: types.SimpleNamespace(reward=verifier))
    monkeypatch.setitem(sys.modules, "envs", fake)
    cfg = cfg_with([])
    cfg.data.train = "task:toy"
    with RewardPipeline(cfg) as pipe:
        assert pipe.names == ["toy"]
        assert pipe.score(P, C, ANS)[0] == [1.0, 0.0, 0.0, 0.0]


def test_config_mistakes_are_named(spec):
    with pytest.raises(ValueError, match="nothing to score with"):
        RewardPipeline(cfg_with([]))
    with pytest.raises(ValueError, match="reward.weights: 1 weights for 2"):
        RewardPipeline(cfg_with([spec("pid"), spec("pid")], weights=[1.0]))
    with RewardPipeline(cfg_with([spec("pid"), spec("pid")])) as pipe:
        assert pipe.names == ["pid", "pid_2"]
        with pytest.raises(ValueError, match="'answer' has 3 values for 4 rows"):
            pipe.score(P, C, {"answer": ["1", "2", "3"]})
    with pytest.raises(ValueError, match="could not be loaded"):
        RewardPipeline(cfg_with([spec("missing")], workers=1))


def test_close_stops_workers(spec):
    pipe = RewardPipeline(cfg_with([spec("pid")], workers=2))
    procs = [w.proc for w in pipe.pool._all]
    pipe.close()
    assert len(procs) == 2 and all(p.poll() is not None for p in procs)


def test_in_process_mode_still_times_out(spec):
    cfg = cfg_with([spec("sleeps")], workers=0, on_error="zero", timeout_s=0.3)
    with RewardPipeline(cfg) as pipe:
        scores, m = pipe.score(P, C, ANS)
    assert scores == [0.0] * 4 and m["reward/errors/timeout"] == 4


def test_config_makes_file_specs_absolute(tmp_path, monkeypatch):
    from rlpost.config import config_from_dict

    monkeypatch.chdir(tmp_path)
    fns = ["my_reward.py:score", "math_verify", "task:gsm8k", "regex_format('a/b:c')", "pkg.mod:fn"]
    cfg = config_from_dict({"reward": {"functions": fns}})
    assert cfg.reward.functions == [f"{tmp_path}/my_reward.py:score", *fns[1:]]
