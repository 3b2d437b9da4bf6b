"""The example environment in docs/data.md runs as written, loaded by path with an option."""

from __future__ import annotations

import re
from pathlib import Path

from envs.multiturn import make_envs, rollout_multiturn

DOC = Path(__file__).resolve().parents[3] / "docs" / "data.md"


def test_docs_example_env_runs(tmp_path, tok):
    text = DOC.read_text()
    code = re.search(r"<!-- example-env -->\n```python\n(.*?)```", text, re.DOTALL).group(1)
    path = tmp_path / "my_env.py"
    path.write_text(code)
    envs = make_envs(f"{path}:GuessEnv?tries=3", 2)

    def guesses(prompt_ids, max_tokens, stop):
        # Always guess 5: right for the first row, wrong three times for the second.
        ids = tok("5", add_special_tokens=False)["input_ids"]
        return [{"token_ids": ids, "logprobs": [-0.5] * len(ids), "text": "5"} for _ in prompt_ids]

    b = rollout_multiturn(guesses, tok, envs, [{"answer": "5"}, {"answer": "8"}], 4, 4)
    assert b["scores"].tolist() == [1.0, 0.0]
    assert b["turns"] == [1, 3]
    assert b["finish_reason"] == ["done", "done"]
    assert b["completion"][1] == "5 No, higher. Guess again: 5 No, higher. Guess again: 5"
