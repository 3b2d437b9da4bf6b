"""Prompt data: loading (files, saved datasets, hub ids, offline tasks), rendering, and sampling.

Everything here runs on the driver before any actor starts, so bad data fails fast with a
``DataError`` that names the file, the row and the column. Rows leave this module already
tokenised: rollouts are token-in, token-out, and nothing downstream re-renders a prompt.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlpost.config import Config

FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet"}
FORMATS |= {".csv": "csv", ".tsv": "csv"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
EVAL_SPLITS = ("test", "validation", "eval", "dev")
HUB_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$")
RESERVED = ("prompt_ids", "prompt", "answer", "row", "raw_prompt")


class DataError(ValueError):
    """Bad data or a data source that cannot be read; the message names file, row and column."""


class PromptDataset(list):
    """Rows as dicts (a list), plus how many rows the overlong policy skipped and the source."""

    def __init__(self, rows: Iterable[dict] = (), skipped: int = 0, source: str = "") -> None:
        super().__init__(rows)
        self.skipped = skipped
        self.source = source

    @property
    def rows(self) -> list[dict]:
        return self

    def __repr__(self) -> str:
        return f"PromptDataset({len(self)} rows from {self.source!r}, skipped={self.skipped})"


# ----------------------------------------------------------------------------- reading tables
def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def _first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(0-based row, parser message) of the first line that is not a JSON object, for jsonl."""
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        return None
    with path.open(encoding="utf-8", errors="replace") as f:
        head = f.read(1)
        if head == "[":  # a JSON array file: no rows to point at
            return None
        f.seek(0)
        row = 0
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                return row, str(e)
            if not isinstance(obj, dict):
                return row, f"expected a JSON object, got {type(obj).__name__}"
            row += 1
    return None


def _pick_split(dd: Any, source: str, split: str) -> Any:
    """train → 'train'; eval → the first of EVAL_SPLITS; a single split serves either."""
    names = list(dd.keys())
    prefs = ("train",) if split == "train" else EVAL_SPLITS
    for name in prefs:
        if name in dd:
            return dd[name]
    if len(names) == 1:
        return dd[names[0]]
    raise DataError(
        f"{source}: which split for data.{split}? add ?split=NAME (splits: {', '.join(names)})"
    )


def _hub_options(spec: str) -> tuple[str, dict[str, str]]:
    from envs.base import (
        parse_options,  # would close an import cycle (that module imports this one)
    )

    name, opts = parse_options(spec)
    unknown = set(opts) - {"split", "config", "revision"}
    if unknown:
        raise DataError(
            f"{spec}: unknown option(s) {sorted(unknown)} (known: split, config, revision)"
        )
    return name, opts


def load_table(spec: str, split: str = "train") -> tuple[list[dict], list[str], str]:
    """Read a file / saved dataset dir / hub id through ``datasets``: (rows, columns, source)."""
    import datasets  # heavy: only files and hub data sets need it

    datasets.disable_progress_bars()
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            source = str(path)
            if any((path / m).exists() for m in SAVED_MARKERS):
                ds = datasets.load_from_disk(str(path))
            else:
                ds = datasets.load_dataset(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = _pick_split(ds, source, split)
        elif path.is_file():
            source = str(path)
            fmt = _format_of(path)
            if fmt is None:
                raise DataError(
                    f"{path}: unknown file type '{path.suffix}' (use .jsonl, .json, .parquet, "
                    f".csv, .tsv, or a saved datasets directory)"
                )
            kw = {"delimiter": "\t"} if ".tsv" in path.suffixes else {}
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kw)
        else:
            name, opts = _hub_options(spec)
            if not HUB_ID_RE.match(name) or _format_of(Path(name)) or spec.startswith((".", "/")):
                raise DataError(f"{spec}: file not found")
            source = f"hub:{name}"
            ds = datasets.load_dataset(
                name, opts.get("config"), revision=opts.get("revision"), split=opts.get("split")
            )
            if isinstance(ds, datasets.DatasetDict):
                ds = _pick_split(ds, source, split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; keep the cause, name the source
        if path.is_file():
            bad = _first_bad_json_line(path)
            if bad is not None:
                raise DataError(f"{path}: row {bad[0]} does not parse as JSON: {bad[1]}") from e
            raise DataError(f"{path}: does not parse: {type(e).__name__}: {e}") from e
        if path.is_dir():
            raise DataError(f"{path}: cannot load as a datasets directory: {e}") from e
        raise DataError(
            f"{spec}: not a local file or directory, and loading it as a hub dataset failed: "
            f"{type(e).__name__}: {e}"
        ) from e
    if len(ds) == 0:
        raise DataError(f"{source}: no rows")
    rows = ds.to_list()
    if path.is_file():
        _restore_mixed_json(path, ds, rows)
    return rows, list(ds.column_names), source


def _restore_mixed_json(path: Path, ds: Any, rows: list[dict]) -> None:
    """Give mixed-type jsonl columns their values as written.

    ``datasets`` stores a column whose rows disagree on type (a prompt that is text in one row and
    a number in another) as JSON and decodes each value, which turns the string "5" into 5; the
    error for the genuinely bad row would then point at the wrong one.
    """
    import datasets  # heavy: only files and hub data sets need it

    mixed = [c for c, f in ds.features.items() if isinstance(f, getattr(datasets, "Json", ()))]
    if not mixed or path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        return
    with path.open(encoding="utf-8") as f:
        if f.read(1) == "[":
            return
        f.seek(0)
        raw = [json.loads(line) for line in f if line.strip()]
    if len(raw) != len(rows):
        return
    for row, orig in zip(rows, raw):
        for c in mixed:
            row[c] = orig.get(c)


# ----------------------------------------------------------------------------- rendering
def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_prompt(value: Any, source: str, row: int, column: str) -> str | list[dict]:
    """A prompt is a non-empty string or a non-empty list of {role, content} string messages."""
    where = f"{source}: row {row}, column '{column}'"
    if value is None:
        raise DataError(f"{where}: missing (null)")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty prompt")
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise DataError(f"{where}: empty message list")
        msgs = []
        for j, m in enumerate(value):
            if not isinstance(m, dict):
                raise DataError(f"{where}: message {j} is {type(m).__name__}, expected a dict")
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise DataError(
                    f"{where}: message {j} needs string 'role' and 'content', got {m!r}"[:300]
                )
            msgs.append({"role": role, "content": content})
        if not any(m["content"].strip() for m in msgs):
            raise DataError(f"{where}: empty prompt (all messages empty)")
        return msgs
    raise DataError(
        f"{where}: prompt must be a string or a list of chat messages, "
        f"got {type(value).__name__} {value!r}"[:300]
    )


def render_text(
    tokenizer: Any, prompt: str | list[dict], chat_template: bool, system_prompt: str = ""
) -> str:
    """The exact text the model is fed: the chat template with a generation prompt, or plain.

    Plain rendering of a message list joins the contents with newlines (no roles), since a base
    model has no convention for them.
    """
    if not chat_template:
        return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    if not has_chat_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(
            f"data.chat_template: tokenizer {name} has no chat template; "
            "set data.chat_template=false for plain prompts"
        )
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def encode(tokenizer: Any, texts: list[str], chat_template: bool) -> list[list[int]]:
    """Token ids of rendered texts; a chat template already wrote its special tokens."""
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=not chat_template)
    return [list(ids) for ids in enc["input_ids"]]


def render_prompt(
    tokenizer: Any, prompt: str | list[dict], chat_template: bool = True, system_prompt: str = ""
) -> tuple[str, list[int]]:
    """One prompt → (rendered text, token ids); chat_template falls back to plain if absent."""
    use_chat = chat_template and has_chat_template(tokenizer)
    text = render_text(tokenizer, prompt, use_chat, system_prompt)
    return text, encode(tokenizer, [text], use_chat)[0]


def truncate_left(ids: list[int], max_len: int, bos_id: int | None) -> list[int]:
    """Keep the last ``max_len`` tokens (the question and the generation prompt), and a leading
    BOS if there was one."""
    if len(ids) <= max_len:
        return ids
    head = [ids[0]] if bos_id is not None and ids and ids[0] == bos_id else []
    return head + ids[len(ids) - (max_len - len(head)) :]


# ----------------------------------------------------------------------------- loading prompts
def _task_rows(spec: str, cfg: Config, split: str) -> tuple[list[dict], str]:
    from envs.base import get_task  # would close an import cycle (that module imports this one)

    try:
        task = get_task(spec.removeprefix("task:"))
    except (KeyError, ValueError, FileNotFoundError, AttributeError) as e:
        raise DataError(f"data.{split}: {spec}: {e}") from e
    n = cfg.data.task_size if split == "train" else cfg.data.eval_size
    return task.generate(n, cfg.trainer.seed, split), spec


# Built-in rewards that compare against a reference answer: configured without one, they would
# score every row None, so a data set without answers is refused up front instead.
NEEDS_ANSWER = ("math_verify", "exact_match")
VERL_ANSWER = "reward_model.ground_truth"  # where verl's preprocessing writes the ground truth


def lookup(row: dict, key: str) -> tuple[bool, Any]:
    """``row[key]``, or a dotted path into nested dicts (``reward_model.ground_truth``)."""
    if key in row:
        return True, row[key]
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def answer_key_for(cfg: Config, first_row: dict) -> str:
    """The column holding reference answers, or '' when the data has none.

    The default ``answer`` falls back to verl's ``reward_model.ground_truth``; no answers at all
    is fine (TRL-style data name their reference column themselves, e.g. ``solution``) unless a
    built-in reward that needs them is configured. A key the user set must exist.
    """
    key = cfg.data.answer_key
    if key and lookup(first_row, key)[0]:
        return key
    if key in ("", "answer"):
        if lookup(first_row, VERL_ANSWER)[0]:
            return VERL_ANSWER
        return ""
    return key  # explicitly named but absent: build_rows reports it


def _needs_answer(cfg: Config) -> list[str]:
    from rewards.base import (
        function_name,  # would close an import cycle (that module imports this one)
    )

    return [f for f in cfg.reward.functions if function_name(f) in NEEDS_ANSWER]


def build_rows(
    raw: list[dict], columns: list[str], source: str, cfg: Config, tokenizer: Any
) -> PromptDataset:
    """Validate, map columns, render and tokenise raw rows; apply the overlong policy."""
    d = cfg.data
    if d.prompt_key not in columns:
        raise DataError(
            f"{source}: row 0, column '{d.prompt_key}': missing (data.prompt_key; "
            f"columns: {', '.join(columns)})"
        )
    answer_key = answer_key_for(cfg, raw[0]) if raw else ""
    if answer_key and not lookup(raw[0], answer_key)[0]:
        raise DataError(
            f"{source}: row 0, column '{answer_key}': missing (data.answer_key; columns: "
            f"{', '.join(columns)}; set data.answer_key='' if there are no reference answers)"
        )
    if not answer_key and _needs_answer(cfg):
        raise DataError(
            f"{source}: reward.functions {_needs_answer(cfg)} compare against reference answers "
            f"but the data has no '{d.answer_key or 'answer'}' column (columns: "
            f"{', '.join(columns)}); set data.answer_key=COLUMN"
        )
    use_chat = bool(d.chat_template)
    prompts = [
        check_prompt(r.get(d.prompt_key), source, i, d.prompt_key) for i, r in enumerate(raw)
    ]
    texts = [render_text(tokenizer, p, use_chat, d.system_prompt) for p in prompts]
    ids_all = encode(tokenizer, texts, use_chat)
    bos = getattr(tokenizer, "bos_token_id", None)
    rows, skipped = [], 0
    for i, (r, p, text, ids) in enumerate(zip(raw, prompts, texts, ids_all)):
        if len(ids) > d.max_prompt_len:
            if d.overlong == "error":
                raise DataError(
                    f"{source}: row {i}, column '{d.prompt_key}': prompt has {len(ids)} tokens > "
                    f"data.max_prompt_len={d.max_prompt_len} (data.overlong=skip or truncate)"
                )
            if d.overlong == "skip":
                skipped += 1
                continue
            ids = truncate_left(ids, d.max_prompt_len, bos)
            text = tokenizer.decode(ids, skip_special_tokens=False)
        out = {
            "prompt_ids": ids,
            "prompt": text,
            "answer": lookup(r, answer_key)[1] if answer_key else None,
            "row": i,
            "raw_prompt": p,
        }
        for k, v in r.items():
            if k != d.prompt_key and k not in out:
                out[k] = v
        rows.append(out)
    if not rows:
        raise DataError(
            f"{source}: all {len(raw)} rows are longer than data.max_prompt_len="
            f"{d.max_prompt_len} and were skipped"
        )
    return PromptDataset(rows, skipped=skipped, source=source)


def load_prompts(cfg: Config, tokenizer: Any, split: str = "train") -> PromptDataset:
    """Prompts of ``data.train`` / ``data.eval`` as tokenised rows (see module docstring).

    An empty ``data.eval`` means the eval split of a ``task:`` train source, else no eval rows.
    """
    if split not in ("train", "eval"):
        raise DataError(f"load_prompts: split must be 'train' or 'eval', got {split!r}")
    spec = cfg.data.train if split == "train" else cfg.data.eval
    if not spec and split == "eval":
        if not cfg.data.train.startswith("task:") or cfg.data.eval_size == 0:
            return PromptDataset([], source="")
        spec = cfg.data.train
    if not spec:
        raise DataError(
            "data.train: empty; give a jsonl/parquet/csv file, a saved datasets dir, "
            "a hub id, or task:NAME"
        )
    if spec.startswith("task:"):
        raw, source = _task_rows(spec, cfg, split)
        if not raw:
            return PromptDataset([], source=source)
        # Tasks always write prompt/answer, whatever the file-oriented column mapping says.

        cfg = replace(cfg, data=replace(cfg.data, prompt_key="prompt", answer_key="answer"))
        return build_rows(raw, list(raw[0]), source, cfg, tokenizer)
    raw, columns, source = load_table(spec, split)
    return build_rows(raw, columns, source, cfg, tokenizer)


# ----------------------------------------------------------------------------- sampling
class PromptSampler:
    """Seeded epoch-wise shuffling; its state is two integers, so resume is exact.

    Epoch e's order is a pure function of (seed, e), so restoring (epoch, position) reproduces the
    uninterrupted stream of prompts bit for bit.
    """

    def __init__(self, dataset: list[dict], seed: int, shuffle: bool = True) -> None:
        if len(dataset) == 0:
            raise DataError("PromptSampler: the dataset has no rows")
        self.rows = dataset
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.pos = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"rlpost-sampler:{self.seed}:{epoch}").shuffle(order)
        return order

    def next(self, n: int) -> list[dict]:
        """The next n rows (copies), crossing epoch boundaries with a fresh shuffle."""
        out: list[dict] = []
        while len(out) < n:
            if self.pos >= len(self._order):
                self.epoch += 1
                self.pos = 0
                self._order = self._permutation(self.epoch)
            take = min(n - len(out), len(self._order) - self.pos)
            for i in self._order[self.pos : self.pos + take]:
                self.pos += 1
                # TRL's trainer_state.epoch: fractional passes over the data so far
                out.append({**self.rows[i], "_epoch": self.epoch + self.pos / len(self._order)})
        return out

    def state_dict(self) -> dict[str, int | bool]:
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "size": len(self.rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "shuffle", "size"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise DataError(
                    f"PromptSampler.load_state_dict: checkpoint has {key}={state[key]!r} but this "
                    f"run has {key}={mine!r}; the prompts would differ from the original run"
                )
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        self._order = self._permutation(self.epoch)


# ----------------------------------------------------------------------------- preferences
def _response_text(value: Any, source: str, row: int, column: str) -> str:
    where = f"{source}: row {row}, column '{column}'"
    if isinstance(value, (list, tuple)):
        # Conversational form: the assistant turns are the response.
        parts = [m.get("content") for m in value if isinstance(m, dict)]
        parts = [p for m, p in zip(value, parts) if m.get("role", "assistant") == "assistant"]
        if not parts or not all(isinstance(p, str) for p in parts):
            raise DataError(f"{where}: expected text or assistant messages, got {value!r}"[:300])
        value = "".join(parts)
    if value is None:
        raise DataError(f"{where}: missing (null)")
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string, got {type(value).__name__} {value!r}"[:300])
    if not value.strip():
        raise DataError(f"{where}: empty response")
    return value


def load_preferences(path: str, tokenizer: Any, cfg: Config) -> PromptDataset:
    """Offline DPO pairs from a file with ``prompt``, ``chosen``, ``rejected`` columns.

    The prompt is rendered like any prompt (chat template, overlong policy); responses are
    tokenised without special tokens and end with eos, as a sampled response would.
    """
    if not path:
        raise DataError("algorithm.preference_data: empty; give a jsonl/parquet file")
    raw, columns, source = load_table(path, "train")
    for col in ("prompt", "chosen", "rejected"):
        if col not in columns:
            raise DataError(
                f"{source}: row 0, column '{col}': missing (preference data needs prompt, "
                f"chosen, rejected; columns: {', '.join(columns)})"
            )
    d = cfg.data
    use_chat = bool(d.chat_template)
    prompts = [check_prompt(r.get("prompt"), source, i, "prompt") for i, r in enumerate(raw)]
    chosen = [_response_text(r.get("chosen"), source, i, "chosen") for i, r in enumerate(raw)]
    rejected = [_response_text(r.get("rejected"), source, i, "rejected") for i, r in enumerate(raw)]
    texts = [render_text(tokenizer, p, use_chat, d.system_prompt) for p in prompts]
    prompt_ids = encode(tokenizer, texts, use_chat)
    eos = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    chosen_ids = [list(x) + eos for x in tokenizer(chosen, add_special_tokens=False)["input_ids"]]
    rejected_ids = [
        list(x) + eos for x in tokenizer(rejected, add_special_tokens=False)["input_ids"]
    ]
    bos = getattr(tokenizer, "bos_token_id", None)
    rows, skipped = [], 0
    for i in range(len(raw)):
        ids, text = prompt_ids[i], texts[i]
        if len(ids) > d.max_prompt_len:
            if d.overlong == "error":
                raise DataError(
                    f"{source}: row {i}, column 'prompt': prompt has {len(ids)} tokens > "
                    f"data.max_prompt_len={d.max_prompt_len}"
                )
            if d.overlong == "skip":
                skipped += 1
                continue
            ids = truncate_left(ids, d.max_prompt_len, bos)
            text = tokenizer.decode(ids, skip_special_tokens=False)
        rows.append(
            {
                "prompt_ids": ids,
                "chosen_ids": chosen_ids[i],
                "rejected_ids": rejected_ids[i],
                "prompt": text,
                "chosen": chosen[i],
                "rejected": rejected[i],
                "row": i,
            }
        )
    return PromptDataset(rows, skipped=skipped, source=source)
