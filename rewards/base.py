"""The reward-function plug-in protocol: registry, name resolution, call adapters, validation.

A reward function scores a batch of (prompt, completion) rows. Three calling conventions are
accepted unchanged, so functions written for other frameworks plug in as they are:

* TRL: ``fn(prompts, completions, **columns) -> list[float | None]`` (the default);
* verl: ``compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict``,
  called once per row (a dict's ``score`` key is the reward, its other numeric keys are logged);
* OpenRLHF: ``reward_func(queries, prompts, labels, **kw) -> tensor | list`` (queries are
  prompt + completion, labels the reference answers).

Any of them may be ``async def``. Calls go through :func:`make_caller`, whose output is a list of
plain items (float, None or :class:`Bad`) that survives pickling between processes; the
pipeline then turns items into numbers or :class:`RewardError` s with :func:`check_items`.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import math
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rlpost.registry import Registry, absolute_spec, load_object

Style = Literal["trl", "verl", "openrlhf", "rlpost"]
ErrorKind = Literal["exception", "timeout", "non_finite", "non_number", "wrong_length"]
ERROR_KINDS: tuple[str, ...] = ("exception", "timeout", "non_finite", "non_number", "wrong_length")

REWARD_FUNCTIONS: Registry[Callable[..., Any]] = Registry("reward function")


def register_reward(name: str | None = None, *, factory: bool = False) -> Callable:
    """Register a TRL-style reward under ``name``.

    ``factory=True`` marks a maker of reward functions (``regex_format(pattern)``): the spec
    ``regex_format`` calls it with no arguments, ``regex_format('^A')`` with those literals.
    """

    def deco(obj: Callable) -> Callable:
        if factory:
            obj.__rlpost_factory__ = True  # type: ignore[attr-defined]
        REWARD_FUNCTIONS.add(name or obj.__name__, obj)
        return obj

    return deco


# ------------------------------------------------------------------------------ errors


class RewardError(RuntimeError):
    """Bad reward output; names the function, the row (None = the whole call) and what came back."""

    def __init__(
        self, function: str, row: int | None, kind: str, detail: str, rows: int | None = None
    ) -> None:
        self.function, self.row, self.kind, self.detail, self.rows = (
            function,
            row,
            kind,
            detail,
            rows,
        )
        if row is not None:
            where = f"row {row}"
        elif rows is not None:
            where = f"all {rows} rows of the call"
        else:
            where = "the call"
        super().__init__(f"reward function '{function}', {where}: {detail}")

    def __reduce__(self) -> tuple:  # keeps the fields through pickling (Ray, worker pipes)
        return (RewardError, (self.function, self.row, self.kind, self.detail, self.rows))


@dataclass(frozen=True)
class Bad:
    """A row's output that is not a score: a non-number, or a per-row exception (verl style)."""

    kind: str
    detail: str


def show(x: Any, limit: int = 120) -> str:
    """Short ``type value`` text for error messages."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict = 60, 60, 6, 4
    text = f"{type(x).__name__} {r.repr(x)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ names & resolution


_CALL = re.compile(r"([A-Za-z_][\w.]*)\((.*)\)", re.S)


def function_name(spec: str) -> str:
    """A short metric-friendly name: ``my.py:score`` → ``score``, ``task:gsm8k`` → ``gsm8k``."""
    spec = spec.strip()
    m = _CALL.fullmatch(spec)
    if m:
        return m.group(1)
    if spec.startswith("task:"):
        return spec[5:].split("?", 1)[0].rpartition(":")[2]
    if ":" in spec:
        return spec.rpartition(":")[2]
    return spec


def canonical_spec(spec: str) -> str:
    """Absolute path for ``file.py:fn`` so worker processes in any directory load the same file."""
    spec = spec.strip()
    if spec.startswith("task:") or _CALL.fullmatch(spec):
        return spec
    return absolute_spec(spec)


def _parse_call(spec: str) -> tuple[str, list, dict] | None:
    m = _CALL.fullmatch(spec)
    if not m:
        return None
    try:
        call = ast.parse(f"f({m.group(2)})", mode="eval").body
        assert isinstance(call, ast.Call)
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except (SyntaxError, ValueError, AssertionError) as e:
        raise ValueError(
            f"reward spec '{spec}': arguments must be Python literals, e.g. regex_format('^A')"
        ) from e
    return m.group(1), args, kwargs


def is_builtin(spec: str) -> bool:
    """Registry names (and factory calls) and tasks are ours: always TRL style."""
    parsed = _parse_call(spec.strip())
    name = parsed[0] if parsed else spec.strip()
    return name in REWARD_FUNCTIONS or spec.strip().startswith("task:")


def resolve_function(spec: str) -> Callable[..., Any]:
    """Registry name, ``name(literal args)`` for a factory, ``file.py:fn``, ``pkg.mod:fn``, ``task:NAME``."""
    spec = spec.strip()
    if spec.startswith("task:"):
        from envs import get_task  # lazy: envs is optional for plain reward use

        return get_task(spec[5:]).reward
    parsed = _parse_call(spec)
    if parsed:
        name, args, kwargs = parsed
        if name not in REWARD_FUNCTIONS:
            raise KeyError(f"reward spec '{spec}': unknown reward factory '{name}'")
        maker = REWARD_FUNCTIONS.get(name)
        if not getattr(maker, "__rlpost_factory__", False):
            raise ValueError(f"reward spec '{spec}': '{name}' takes no arguments")
        return maker(*args, **kwargs)
    if spec in REWARD_FUNCTIONS:
        obj = REWARD_FUNCTIONS.get(spec)
        return obj() if getattr(obj, "__rlpost_factory__", False) else obj
    if ":" not in spec:
        REWARD_FUNCTIONS.get(spec)  # raises KeyError listing the known names
    obj = load_object(spec)
    if not callable(obj):
        raise TypeError(f"reward spec '{spec}': {show(obj)} is not callable")
    return obj


# ------------------------------------------------------------------------------ adapters


def _params(fn: Callable) -> tuple[set[str], bool]:
    """Parameter names, and whether ``**kwargs`` is accepted."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), True
    names = {
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)
    }
    return names, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def detect_style(fn: Callable) -> Style:
    """verl if it takes ``solution_str``; OpenRLHF if it takes ``queries``; TRL otherwise."""
    names, _ = _params(fn)
    if "solution_str" in names:
        return "verl"
    if "queries" in names:
        return "openrlhf"
    return "trl"


def _accepted(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop keyword arguments a function cannot take, so ``f(prompts, completions, answer)`` works."""
    names, var_kw = _params(fn)
    return dict(kwargs) if var_kw else {k: v for k, v in kwargs.items() if k in names}


def _settle(value: Any) -> Any:
    """Run a coroutine to completion (async reward functions)."""
    if inspect.isawaitable(value):
        return asyncio.run(_await(value))
    return value


async def _await(x: Any) -> Any:
    return await x


async def _gather(values: list[Any]) -> list[Any]:
    async def one(v: Any) -> Any:
        return await v if inspect.isawaitable(v) else v

    return await asyncio.gather(*(one(v) for v in values), return_exceptions=True)


def to_item(x: Any) -> float | None | Bad:
    """One returned value → float (maybe NaN), None, or :class:`Bad` naming what came back."""
    if x is None:
        return None
    if isinstance(x, (bool, int, float)):
        try:
            return float(x)
        except OverflowError:
            return float("inf")
    item = getattr(x, "item", None)
    if callable(item) and not isinstance(x, (str, bytes)):
        try:
            v = item()
        except Exception:  # noqa: BLE001 - a multi-element tensor: not a number
            return Bad("non_number", f"returned {show(x)}, expected a number")
        if isinstance(v, (bool, int, float)):
            return float(v)
    return Bad("non_number", f"returned {show(x)}, expected a number")


def to_items(result: Any, n: int) -> list[float | None | Bad] | Bad:
    """A batch result (list / tuple / tensor / array) → items; anything else is a whole-call error."""
    if isinstance(result, dict) and "rewards" in result:  # OpenRLHF's dict return
        result = result["rewards"]
    if not isinstance(result, (list, tuple)) and callable(getattr(result, "tolist", None)):
        result = result.tolist()
    if not isinstance(result, (list, tuple)):
        return Bad("wrong_length", f"returned {show(result)}, expected a list of {n} numbers")
    return [to_item(x) for x in result]


@dataclass
class TrainerState:
    """What TRL passes reward functions as ``trainer_state`` (the fields reward shaping reads)."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0


@dataclass
class CallResult:
    """What one call of a reward function gave back, in picklable form."""

    items: list[float | None | Bad] | Bad  # Bad = the whole call failed
    extras: dict[str, list[float]] = field(default_factory=dict)  # numbers logged as their mean
    columns: dict[str, list] = field(default_factory=dict)  # TRL log_extra: one value per row


# Columns the pipeline adds for its own use; never handed to a function as a data-set column.
INTERNAL = ("raw_prompt", "completion_ids", "_epoch")


def _row_error(e: BaseException) -> Bad:
    return Bad("exception", f"raised {type(e).__name__}: {e}")


def to_numbers(values: Any) -> list[float]:
    """A scalar, list or tensor of numbers → floats (non-numbers are left out)."""
    if callable(getattr(values, "tolist", None)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        values = [values]
    out = []
    for v in values:
        x = to_item(v)
        if isinstance(x, float) and math.isfinite(x):
            out.append(x)
    return out


def _as_state(state: TrainerState | int) -> TrainerState:
    return state if isinstance(state, TrainerState) else TrainerState(global_step=int(state))


def _conversational(columns: dict) -> bool:
    raw = columns.get("raw_prompt")
    return bool(raw) and all(isinstance(p, list) for p in raw)


def make_caller(
    fn: Callable, style: str = "auto", answer_key: str = "answer"
) -> Callable[[list, list, dict, TrainerState | int], CallResult]:
    """Wrap ``fn`` as ``call(prompts, completions, columns, state) -> CallResult`` for its style.

    ``trl`` hands what TRL 1.x hands: every data-set column as a keyword list, the prompts as the
    data set wrote them, conversational completions (``[{"role": "assistant", "content": ...}]``)
    when those prompts are messages, ``completion_ids``, ``trainer_state``, ``log_metric`` and
    ``log_extra``. ``rlpost`` (the built-ins) is the same with text prompts and completions.
    Exceptions raised by a batch-style function propagate (the caller reports them for the whole
    call); per-row functions (verl) report an exception on the row that raised it.
    """
    resolved = detect_style(fn) if style == "auto" else style

    def call_trl(prompts: list, completions: list, columns: dict, state: Any) -> CallResult:
        st = _as_state(state)
        metrics: dict[str, list[float]] = {}
        extra_cols: dict[str, list] = {}

        def log_metric(name: str, value: float) -> None:
            metrics.setdefault(str(name), []).extend(to_numbers(value))

        def log_extra(column: str, values: list) -> None:
            extra_cols.setdefault(str(column), []).extend(list(values))

        data = {k: v for k, v in columns.items() if k not in INTERNAL}
        raw = columns.get("raw_prompt")
        if resolved == "trl" and raw is not None and len(raw) == len(completions):
            prompts = list(raw)  # the data set's prompts as written, as TRL hands them
            if _conversational(columns):
                completions = [[{"role": "assistant", "content": c}] for c in completions]
        kwargs = {
            "prompts": prompts,
            "completions": completions,
            "completion_ids": columns.get("completion_ids"),
            **data,
            "trainer_state": st,
            "log_metric": log_metric,
            "log_extra": log_extra,
            "step": st.global_step,
        }
        items = to_items(_settle(fn(**_accepted(fn, kwargs))), len(completions))
        return CallResult(items, metrics, extra_cols)

    def call_openrlhf(prompts: list, completions: list, columns: dict, state: Any) -> CallResult:
        queries = [f"{p}{c}" for p, c in zip(prompts, completions)]
        labels = list(columns.get(answer_key, columns.get("answer", [None] * len(prompts))))
        data = {k: v for k, v in columns.items() if k not in INTERNAL}
        extra = _accepted(fn, {**data, "step": _as_state(state).global_step})
        for k in ("queries", "prompts", "labels"):
            extra.pop(k, None)
        out = _settle(fn(queries, prompts, labels, **extra))
        extras: dict[str, list[float]] = {}
        if isinstance(out, dict):  # {"rewards", "scores", "extra_logs"}: rewards train
            if "scores" in out:
                extras["scores"] = to_numbers(out["scores"])
            for k, v in (out.get("extra_logs") or {}).items():
                extras[str(k)] = to_numbers(v)
        return CallResult(to_items(out, len(prompts)), extras)

    def call_verl(prompts: list, completions: list, columns: dict, state: Any) -> CallResult:
        answers = columns.get(answer_key, columns.get("answer", [None] * len(prompts)))
        sources = columns.get("data_source", ["rlpost"] * len(prompts))
        given = columns.get("extra_info")  # verl's own column: handed over as the dict it is
        skip = {"data_source", answer_key, "answer", "extra_info", *INTERNAL}
        others = {k: v for k, v in columns.items() if k not in skip}
        raw: list[Any] = []
        for i, c in enumerate(completions):
            if given is not None and isinstance(given[i], dict):
                extra_info = dict(given[i])
            else:
                extra_info = {k: v[i] for k, v in others.items()}
            kwargs = {
                "data_source": sources[i],
                "solution_str": c,
                "ground_truth": answers[i],
                "extra_info": extra_info,
            }
            try:
                raw.append(fn(**_accepted(fn, kwargs)))
            except Exception as e:  # noqa: BLE001 - reported per row
                raw.append(e)
        if any(inspect.isawaitable(r) for r in raw):
            raw = asyncio.run(_gather(raw))
        items: list[float | None | Bad] = []
        extras: dict[str, list[float]] = {}
        for r in raw:
            if isinstance(r, BaseException):
                items.append(_row_error(r))
                continue
            if isinstance(r, dict):
                if "score" not in r:
                    items.append(Bad("non_number", f"returned a dict without 'score': {show(r)}"))
                    continue
                for k, v in r.items():
                    if k != "score" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        extras.setdefault(k, []).append(float(v))
                r = r["score"]
            items.append(to_item(r))
        return CallResult(items, extras)

    callers = {"trl": call_trl, "rlpost": call_trl, "verl": call_verl, "openrlhf": call_openrlhf}
    if resolved not in callers:
        raise ValueError(f"reward style '{resolved}': expected one of {sorted(callers)}")
    return callers[resolved]


# ------------------------------------------------------------------------------ validation


def check_items(
    function: str, result: CallResult | RewardError, n: int
) -> list[float | None | RewardError]:
    """Per row: a finite float, None (no score), or the :class:`RewardError` describing it."""
    if isinstance(result, RewardError):
        return [result] * n
    items = result.items
    if isinstance(items, Bad):
        return [RewardError(function, None, items.kind, items.detail, rows=n)] * n
    if len(items) != n:
        err = RewardError(
            function,
            None,
            "wrong_length",
            f"returned a list of {len(items)} values for {n} rows",
            rows=n,
        )
        return [err] * n
    out: list[float | None | RewardError] = []
    for i, it in enumerate(items):
        if isinstance(it, Bad):
            out.append(RewardError(function, i, it.kind, it.detail))
        elif it is not None and not math.isfinite(it):
            out.append(RewardError(function, i, "non_finite", f"returned {it}"))
        else:
            out.append(it)
    return out
