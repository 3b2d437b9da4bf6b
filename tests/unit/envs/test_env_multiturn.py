"""The multi-turn driver: env tokens masked out (0), model tokens in (1), old_logp aligned."""

from __future__ import annotations

import pytest
import torch

from envs.calculator import INSTRUCTION, CalculatorEnv, calculate
from envs.multiturn import StepResult, make_env, make_envs, rollout_multiturn
from rlpost.data import render_prompt


class ScriptedGenerate:
    """Calls the tool unless the context already has a result (or asks for a direct answer)."""

    def __init__(self, tok):
        self.tok = tok
        self.calls: list[tuple[list[list[int]], int, list[str]]] = []
        self.outputs: list[list[dict]] = []

    def __call__(self, prompt_ids, max_tokens, stop):
        self.calls.append(([list(p) for p in prompt_ids], max_tokens, list(stop)))
        outs = []
        for p in prompt_ids:
            ctx = self.tok.decode(p)
            if "<result>" in ctx or "direct" in ctx:
                ids = self.tok("84", add_special_tokens=False)["input_ids"] + [
                    self.tok.eos_token_id
                ]
            else:
                ids = self.tok("<calc>12*7</calc>", add_special_tokens=False)["input_ids"]
            # A distinct log-prob per absolute position makes misalignment visible.
            logps = [-0.001 * (len(p) + j + 1) for j in range(len(ids))]
            outs.append({"token_ids": ids, "logprobs": logps, "text": self.tok.decode(ids)})
        self.outputs.append(outs)
        return outs


ROWS = [
    {"prompt": "What is 12*7?", "answer": "84", "id": "a"},
    {"prompt": "What is 12*7 plus one?", "answer": "85", "id": "b"},
    {"prompt": "What is 12*7? (direct)", "answer": "84", "id": "c"},
]


def _enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_calculator_episode_layout(tok):
    gen = ScriptedGenerate(tok)
    envs = make_envs("calculator", 3)
    b = rollout_multiturn(gen, tok, envs, ROWS, max_turns=3, max_new_tokens=16)

    # Turn 1: three prompts; turn 2: only the two that called the tool.
    assert [len(c[0]) for c in gen.calls] == [3, 2]
    assert all(c[1] == 16 and c[2] == ["</calc>"] for c in gen.calls)

    call = _enc(tok, "<calc>12*7</calc>")
    obs = _enc(tok, "<result>84</result>")
    final = _enc(tok, "84") + [tok.eos_token_id]
    for i in range(2):
        _, p_ids = render_prompt(tok, f"{ROWS[i]['prompt']}\n{INSTRUCTION}")
        seq = p_ids + call + obs + final
        n = len(seq)
        assert b["input_ids"][i, :n].tolist() == seq
        assert b["attention_mask"][i].tolist() == [1] * n + [0] * (b["input_ids"].shape[1] - n)
        mask = [0.0] * len(p_ids) + [1.0] * len(call) + [0.0] * len(obs) + [1.0] * len(final)
        assert b["response_mask"][i, :n].tolist() == mask
        assert b["response_mask"][i, n:].sum() == 0
        assert b["response_mask"].dtype == torch.float32
        # The second generate call saw exactly prompt + call + observation.
        assert gen.calls[1][0][i] == p_ids + call + obs
        # old_logp[t] is the sampling log-prob of input_ids[t]; 0 where the loss does not look.
        expect = torch.zeros(n)
        for t in range(n):
            if mask[t]:
                expect[t] = -0.001 * (t + 1)
        assert torch.allclose(b["old_logp"][i, :n], expect)
    # The direct answer: prompt + final only.
    _, p_ids = render_prompt(tok, f"{ROWS[2]['prompt']}\n{INSTRUCTION}")
    assert b["input_ids"][2, : len(p_ids) + len(final)].tolist() == p_ids + final
    assert b["response_mask"][2].sum() == len(final)

    assert b["scores"].tolist() == [1.0, 0.0, 1.0]
    assert b["turns"] == [2, 2, 1]
    assert b["finish_reason"] == ["done", "done", "done"]
    assert b["answer"] == ["84", "85", "84"] and b["id"] == ["a", "b", "c"]
    assert b["completion"][0] == "<calc>12*7</calc><result>84</result>84"
    assert b["prompt"][0].startswith("<|user|>\nWhat is 12*7?") and INSTRUCTION in b["prompt"][0]
    assert b["prompt_len"][0] + b["response_len"][0] == int(b["attention_mask"][0].sum())


def test_max_turns_one_appends_no_observation(tok):
    gen = ScriptedGenerate(tok)
    b = rollout_multiturn(
        gen, tok, make_envs("calculator", 1), ROWS[:1], max_turns=1, max_new_tokens=16
    )
    call = _enc(tok, "<calc>12*7</calc>")
    assert b["response_len"] == [len(call)]
    assert b["response_mask"][0].sum() == len(call)
    assert b["scores"].tolist() == [0.0] and b["finish_reason"] == ["max_turns"]


def test_max_len_cuts_the_episode(tok):
    gen = ScriptedGenerate(tok)
    _, p_ids = render_prompt(tok, f"{ROWS[0]['prompt']}\n{INSTRUCTION}")
    limit = len(p_ids) + 3
    b = rollout_multiturn(gen, tok, make_envs("calculator", 1), ROWS[:1], 3, 16, max_len=limit)
    assert int(b["attention_mask"].sum()) == limit
    assert b["finish_reason"] == ["max_len"] and len(gen.calls) == 1


def test_plain_prompt_without_chat_template(tok):
    gen = ScriptedGenerate(tok)
    b = rollout_multiturn(gen, tok, make_envs("calculator", 1), ROWS[2:], 2, 8, chat_template=False)
    assert b["prompt"] == [f"{ROWS[2]['prompt']}\n{INSTRUCTION}"]


def test_calculator_env_unit():
    env = CalculatorEnv(max_calls=1)
    first = env.reset(
        {"raw_prompt": [{"role": "user", "content": "Q?"}], "prompt": "<|user|>...", "answer": "7"}
    )
    assert first == f"Q?\n{INSTRUCTION}"
    r = env.step("let me see <calc>3 + 4</calc>")
    assert r == StepResult("<result>7</result>", 0.0, False)
    r = env.step("<calc>1+1</calc>")  # over max_calls: the episode ends, scored as an answer
    assert r.done and r.reward == 0.0
    env.reset({"prompt": "Q", "answer": "7"})
    assert env.step("It is 7").reward == 1.0
    env.reset({"prompt": "Q", "answer": "7"})
    assert env.step("<calc>7</calc>").done is False
    assert env.step("no idea").reward == 0.0
    assert calculate("1/0") == "error" and calculate("2**3") == "error"
    assert calculate("7/2") == "3.5" and calculate("-2*3") == "-6"
    with pytest.raises(ValueError, match="answer"):
        CalculatorEnv().reset({"prompt": "Q"})
    assert CalculatorEnv.sft_target({"expression": "12 * 7", "answer": "84"}) == (
        "<calc>12 * 7</calc><result>84</result>84"
    )


def test_env_options_and_errors():
    assert make_env("calculator?max_calls=2").max_calls == 2
    with pytest.raises(ValueError, match="unknown option 'calls'"):
        make_env("calculator?calls=2")
    with pytest.raises(KeyError, match="did you mean 'calculator'"):
        make_env("calculater")


def test_user_env_by_path(tmp_path, tok):
    path = tmp_path / "my_env.py"
    path.write_text(
        "class MyEnv:\n"
        "    def __init__(self, bonus='1'):\n"
        "        self.bonus = float(bonus)\n"
        "    def reset(self, row):\n"
        "        self.n = 0\n"
        "        return 'Say something.'\n"
        "    def step(self, message):\n"
        "        self.n += 1\n"
        "        return ('again', self.bonus, self.n >= 2)\n"
    )
    envs = make_envs(f"{path}:MyEnv?bonus=0.5", 2)
    gen = ScriptedGenerate(tok)
    b = rollout_multiturn(gen, tok, envs, [{"answer": "x"}, {"answer": "y"}], 4, 8)
    assert b["turns"] == [2, 2] and b["scores"].tolist() == [1.0, 1.0]
    obs = _enc(tok, "again")
    assert b["completion"][0] == "<calc>12*7</calc>again<calc>12*7</calc>"
    assert int((b["response_mask"][0] == 0).sum()) == b["prompt_len"][0] + len(obs) + (
        b["input_ids"].shape[1] - int(b["attention_mask"][0].sum())
    )


def test_generate_contract_is_checked(tok):
    def short(prompt_ids, max_tokens, stop):
        return [{"token_ids": [1, 2], "logprobs": [-1.0], "text": ""}]

    with pytest.raises(ValueError, match="2 tokens but 1 logprobs"):
        rollout_multiturn(short, tok, make_envs("calculator", 1), ROWS[:1], 2, 4)
    with pytest.raises(ValueError, match="1 envs for 2 rows"):
        rollout_multiturn(short, tok, make_envs("calculator", 1), ROWS[:2], 2, 4)


def test_real_tiny_model_logprobs_align(tok):
    """Back generate with the nano model; a teacher-forced pass must reproduce old_logp."""
    from transformers import AutoModelForCausalLM

    from rlpost.models import tiny

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny.ensure("nano")).eval()

    def hf_generate(prompt_ids, max_tokens, stop):
        outs = []
        for p in prompt_ids:
            with torch.no_grad():
                g = model.generate(
                    torch.tensor([p]),
                    attention_mask=torch.ones(1, len(p), dtype=torch.long),
                    max_new_tokens=max_tokens,
                    do_sample=True,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=tok.pad_token_id,
                )
            ids = g.sequences[0, len(p) :].tolist()
            logps = [
                torch.log_softmax(logit[0].float(), -1)[t].item() for logit, t in zip(g.logits, ids)
            ]
            outs.append({"token_ids": ids, "logprobs": logps, "text": tok.decode(ids)})
        return outs

    class Nag:
        """Never satisfied: every turn gets an observation, so the sequence interleaves."""

        def reset(self, row):
            return row["q"]

        def step(self, message):
            return StepResult("Try again.", 0.25, False)

    rows = [{"q": "What is 2 + 3?"}, {"q": "Count to three."}]
    b = rollout_multiturn(hf_generate, tok, [Nag(), Nag()], rows, max_turns=3, max_new_tokens=6)
    assert b["turns"] == [3, 3] and b["scores"].tolist() == [0.75, 0.75]
    obs = tok("Try again.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), -1)
    forced = torch.zeros_like(b["old_logp"])
    forced[:, 1:] = logp[:, :-1].gather(-1, b["input_ids"][:, 1:, None])[..., 0]
    mask = b["response_mask"].bool()
    assert torch.allclose(forced[mask], b["old_logp"][mask], atol=1e-4)
    # Two observations of len(obs) tokens per episode are masked out (3 turns, none after the last).
    for i in range(2):
        n_model = int(b["response_mask"][i].sum())
        assert b["response_len"][i] == n_model + 2 * len(obs)
        assert (b["old_logp"][i][~mask[i]] == 0).all()
