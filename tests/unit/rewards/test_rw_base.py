"""Call conventions (TRL, verl, OpenRLHF; sync and async), name resolution, output validation."""

import math
import pickle
import sys
import types

import pytest

from rewards.base import (
    Bad,
    CallResult,
    RewardError,
    check_items,
    detect_style,
    function_name,
    is_builtin,
    make_caller,
    register_reward,
    resolve_function,
)

P = ["p0", "p1", "p2", "p3"]
C = ["4", "the answer is 5", "x", "7"]
COLS = {"answer": ["4", "5", "6", "8"], "data_source": ["gsm8k"] * 4, "idx": [0, 1, 2, 3]}


def run(spec_str, style="auto", prompts=P, completions=C, columns=COLS, step=0):
    fn = resolve_function(spec_str)
    res = make_caller(fn, style)(prompts, completions, columns, step)
    return check_items(function_name(spec_str), res, len(completions))


# ------------------------------------------------------------------ styles


def test_detect_style(spec):
    assert detect_style(resolve_function(spec("contains_answer"))) == "trl"
    assert detect_style(resolve_function(spec("compute_score"))) == "verl"
    assert detect_style(resolve_function(spec("verl_async"))) == "verl"
    assert detect_style(resolve_function(spec("openrlhf_reward"))) == "openrlhf"
    assert detect_style(resolve_function("math_verify")) == "trl"


def test_trl_style_passes_columns_and_filters_kwargs(spec):
    assert run(spec("contains_answer")) == [1.0, 1.0, 0.0, 0.0]
    # no **kwargs: data_source / idx / step must not be passed
    assert run(spec("fixed_params")) == [1.0, 0.0, 0.0, 0.0]
    # no prompts parameter: prompts go into **kwargs
    assert run(spec("only_completions")) == [1.0, 15.0, 1.0, 1.0]
    assert run(spec("sees_step"), step=7) == [7.0] * 4


def test_async_trl(spec):
    assert run(spec("async_len")) == [1.0, 15.0, 1.0, 1.0]


def test_verl_float_and_dict(spec):
    assert run(spec("compute_score")) == [1.0, 0.0, 0.0, 0.0]
    fn = resolve_function(spec("verl_dict"))
    res = make_caller(fn)(P, C, COLS, 0)
    assert check_items("verl_dict", res, 4) == [0.5, -0.5, -0.5, -0.5]
    assert res.extras == {"acc": [1.0] * 4}
    # data_source defaults to "rlpost" when the column is missing
    no_ds = {k: v for k, v in COLS.items() if k != "data_source"}
    assert run(spec("verl_dict"), columns=no_ds) == [0.5, -0.5, -0.5, -0.5]


def test_verl_forced_style_and_async(spec):
    assert run(spec("compute_score"), style="verl") == [1.0, 0.0, 0.0, 0.0]
    assert run(spec("verl_async")) == [1.0, 15.0, 1.0, 1.0]


def test_verl_exception_names_the_row(spec):
    out = run(spec("verl_raises_on_x"))
    assert out[:2] == [1.0, 1.0] and out[3] == 1.0
    err = out[2]
    assert isinstance(err, RewardError) and err.row == 2 and err.kind == "exception"
    assert "verl_raises_on_x" in str(err) and "row 2" in str(err) and "cannot score x" in str(err)


def test_openrlhf_tensor_return(spec):
    # queries = prompt + completion, labels = answers
    assert run(spec("openrlhf_reward")) == [1.0, 1.0, 0.0, 0.0]


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "name, row, kind, shown",
    [
        ("nan_second", 1, "non_finite", "nan"),
        ("inf_first", 0, "non_finite", "inf"),
        ("non_number", 1, "non_number", "'good'"),
    ],
)
def test_bad_rows_are_named(spec, name, row, kind, shown):
    out = run(spec(name))
    errs = [(i, v) for i, v in enumerate(out) if isinstance(v, RewardError)]
    assert len(errs) == 1
    i, e = errs[0]
    assert (i, e.row, e.kind) == (row, row, kind)
    assert f"'{name}'" in str(e) and f"row {row}" in str(e) and shown in str(e)
    assert all(v == 1.0 for j, v in enumerate(out) if j != row)


@pytest.mark.parametrize(
    "name, shown", [("wrong_length", "5 values for 4 rows"), ("not_a_list", "float 3.0")]
)
def test_whole_call_errors(spec, name, shown):
    out = run(spec(name))
    assert len(out) == 4 and all(isinstance(v, RewardError) for v in out)
    assert out[0].kind == "wrong_length" and out[0].row is None
    assert shown in str(out[0]) and "all 4 rows" in str(out[0])


def test_exception_propagates_from_batch_call(spec):
    fn = resolve_function(spec("raises"))
    with pytest.raises(ZeroDivisionError):
        make_caller(fn)(P, C, COLS, 0)


def test_check_items_passes_through_call_errors():
    err = RewardError("f", None, "timeout", "timed out after 1 s", rows=3)
    assert check_items("f", err, 3) == [err, err, err]
    assert check_items("f", CallResult([1, True, None]), 3) == [1.0, 1.0, None]
    assert (
        check_items("f", CallResult(Bad("wrong_length", "returned x")), 2)[0].kind == "wrong_length"
    )


def test_reward_error_pickles_with_fields():
    e = pickle.loads(pickle.dumps(RewardError("f", 3, "non_finite", "returned nan")))
    assert (e.function, e.row, e.kind) == ("f", 3, "non_finite")
    assert str(e) == "reward function 'f', row 3: returned nan"


# ------------------------------------------------------------------ names & resolution


def test_function_names():
    assert function_name("math_verify") == "math_verify"
    assert function_name("/a/b/my_reward.py:score") == "score"
    assert function_name("pkg.mod:fn") == "fn"
    assert function_name("task:gsm8k") == "gsm8k"
    assert function_name("task:gsm8k?split=test") == "gsm8k"
    assert function_name("task:/a/my_task.py:MyTask?n=3") == "MyTask"
    assert function_name("regex_format('^A', full=True)") == "regex_format"


def test_factory_spec_with_literal_args():
    fn = resolve_function(r"regex_format('^\d+$', full=True)")
    assert fn(["p", "p"], ["123", "12a"]) == [1.0, 0.0]
    default = resolve_function("regex_format")
    assert default(["p"], ["<think>a</think> <answer>1</answer>"]) == [1.0]
    with pytest.raises(ValueError, match="Python literals"):
        resolve_function("regex_format(foo)")
    with pytest.raises(ValueError, match="takes no arguments"):
        resolve_function("math_verify(1)")


def test_unknown_name_and_missing_file():
    with pytest.raises(KeyError, match="did you mean 'math_verify'"):
        resolve_function("math_verfy")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        resolve_function("nope.py:score")


def test_register_reward_and_builtin_detection():
    @register_reward("test_const_reward")
    def const(prompts, completions, **kw):
        return [0.25] * len(completions)

    assert resolve_function("test_const_reward") is const
    assert is_builtin("test_const_reward") and is_builtin("task:x") and not is_builtin("a.py:f")


def test_task_spec_uses_envs_get_task(monkeypatch):
    calls = []

    def verifier(prompts, completions, answer, **kw):
        return [float(c == a) for c, a in zip(completions, answer)]

    def get_task(name):
        calls.append(name)
        return types.SimpleNamespace(reward=verifier)

    monkeypatch.setitem(sys.modules, "envs", types.SimpleNamespace(get_task=get_task))
    assert resolve_function("task:toy") is verifier and calls == ["toy"]


def test_overflowing_int_is_non_finite():
    res = make_caller(lambda prompts, completions: [10**400])(["p"], ["c"], {}, 0)
    assert check_items("big", res, 1)[0].kind == "non_finite"
    assert math.isinf(res.items[0])
