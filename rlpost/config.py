"""Typed config tree: YAML recipes, dotted command-line overrides, validation before any actor starts.

Every field carries its meaning in ``field(metadata={"help": ...})`` so docs/configuration.md can be
checked against the dataclasses by a test.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from rlpost.models import tiny
from rlpost.objective import CONFIG_REGISTRIES
from rlpost.registry import Registry, absolute_spec


class ConfigError(ValueError):
    """A config problem; the CLI prints it on one line and exits with code 2."""


def option(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its meaning; plug-ins declare their ``Options`` fields with it too."""
    return _f(default, help, **kw)


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    if dataclasses.is_dataclass(default):
        return field(default_factory=type(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    path: str = _f("", "policy model: a local Hugging Face directory or a hub id")
    tokenizer: str = _f("", "tokenizer dir or hub id; empty = same as model.path")
    dtype: str = _f(
        "auto", "learner weights dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16"
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    trust_remote_code: bool = _f(False, "passed to from_pretrained")


@dataclass
class DataConfig:
    train: str = _f(
        "", "prompts: jsonl/parquet/csv file, a saved datasets dir, a hub id, or task:NAME"
    )
    eval: str = _f(
        "", "eval prompts, same forms as data.train; empty = the task's eval split if any"
    )
    prompt_key: str = _f("prompt", "column holding the prompt (text or chat messages)")
    answer_key: str = _f(
        "answer", "column copied to the rows' 'answer' for rewards; '' = data has no answers"
    )
    chat_template: bool = _f(True, "render prompts through the tokenizer's chat template")
    system_prompt: str = _f("", "system message prepended when chat_template is on")
    max_prompt_len: int = _f(256, "max prompt tokens")
    overlong: Literal["error", "skip", "truncate"] = _f(
        "error", "longer prompts: error, skip (counted), truncate (keep the last tokens)"
    )
    task_size: int = _f(2000, "rows generated for a task:NAME train split")
    eval_size: int = _f(200, "rows generated for a task:NAME eval split")
    shuffle: bool = _f(True, "shuffle prompts each epoch (seeded by trainer.seed)")
    env: str = _f(
        "", "multi-turn environment: a registry name (calculator) or file.py:Class; '' = off"
    )
    max_turns: int = _f(3, "multi-turn: max model turns per episode")

    def __post_init__(self) -> None:
        for key in ("max_prompt_len", "task_size", "max_turns"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key}: must be >= 1, got {getattr(self, key)}")
        if self.eval_size < 0:
            raise ConfigError(f"data.eval_size: must be >= 0, got {self.eval_size}")
        if not self.prompt_key:
            raise ConfigError("data.prompt_key: must name a column")


@dataclass
class RolloutConfig:
    backend: Literal["vllm", "hf"] = _f("vllm", "vllm engines, or HF generate (debug fallback)")
    engines: int = _f(1, "number of vLLM engine actors; prompts are split across them")
    tensor_parallel: int = _f(1, "tensor-parallel size per engine (GPU)")
    n: int = _f(8, "samples per prompt")
    max_new_tokens: int = _f(128, "max response tokens")
    temperature: float = _f(1.0, "sampling temperature")
    top_p: float = _f(1.0, "nucleus sampling")
    top_k: int = _f(-1, "top-k sampling, -1 = off")
    stop: list[str] = _f([], "stop strings")
    seed: int = _f(0, "sampling seed (engine i uses seed + i)")
    dtype: str = _f(
        "auto",
        "vLLM weights dtype: auto (bf16 on a GPU or a CPU with bf16 instructions, else fp32), "
        "float32, bfloat16",
    )
    kv_cache_gb: float = _f(1.0, "VLLM_CPU_KVCACHE_SPACE on CPU")
    gpu_memory_utilization: float = _f(0.5, "vLLM GPU memory share (GPU only)")
    enforce_eager: bool = _f(True, "skip graph capture/compile (fast start)")
    max_model_len: int = _f(1024, "vLLM max sequence length")
    sync_every: int = _f(1, "sync learner weights into the engines every k optimizer steps")
    sync_bucket_mb: float = _f(64.0, "weight-sync bucket size, MB (a larger tensor gets its own)")
    sync_transport: Literal["auto", "collective", "ipc", "object_store"] = _f(
        "auto",
        "weight sync: collective (weight-update group: gloo on CPU, NCCL on GPU), ipc (CUDA IPC, "
        "colocated GPUs) or Ray's object store (fallback); auto picks from where actors run",
    )
    verify_sync: bool = _f(False, "after each sync compare per-tensor checksums learner vs engines")
    cpus_per_engine: float = _f(1.0, "Ray CPUs reserved per engine")
    gpus_per_engine: float = _f(0.0, "Ray GPUs per engine (0 on CPU)")


@dataclass
class LearnerConfig:
    ranks: int = _f(1, "DeepSpeed data-parallel ranks, one Ray actor each")
    zero_stage: int = _f(2, "ZeRO stage 0, 1, 2 or 3")
    offload: bool = _f(False, "ZeRO CPU offload of optimizer state (and params at stage 3)")
    lr: float = _f(1e-5, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: list[float] = _f([0.9, 0.999], "AdamW betas")
    warmup_steps: int = _f(0, "linear LR warm-up, optimizer steps")
    lr_schedule: Literal["constant", "linear", "cosine"] = _f("constant", "LR decay after warm-up")
    grad_clip: float = _f(1.0, "max gradient norm, 0 = off")
    mini_batch_size: int = _f(0, "sequences per optimizer step; 0 = the whole rollout batch")
    micro_batch_size: int = _f(8, "sequences per forward/backward on one rank")
    epochs: int = _f(1, "passes over each rollout batch")
    cpus_per_rank: float = _f(1.0, "Ray CPUs per learner rank")
    gpus_per_rank: float = _f(0.0, "Ray GPUs per learner rank (0 on CPU)")
    torch_threads: int = _f(0, "torch intra-op threads per rank, 0 = from cpus_per_rank")
    logprob_chunk: int = _f(
        4096,
        "tokens per chunk of the output layer + log-softmax (whole logits never made); 0 = off",
    )
    autocast: Literal["off", "bf16"] = _f(
        "off", "bf16 autocast of the forward (CPU learners whose CPU has bf16 instructions)"
    )
    sort_by_length: bool = _f(True, "cut micro-batches from rows sorted by length (less padding)")


@dataclass
class ReferenceConfig:
    path: str = _f("", "frozen reference model; empty = model.path")
    enabled: Literal["auto", "on", "off"] = _f(
        "auto", "auto = load only when the algorithm needs it"
    )


@dataclass
class TeacherConfig:
    path: str = _f("", "frozen teacher model (KDRL); must share the student's tokenizer")


@dataclass
class CriticConfig:
    path: str = _f("", "value model init; empty = model.path with a fresh value head")
    lr: float = _f(1e-5, "critic learning rate")
    value_clip: float = _f(0.2, "value clipping epsilon")
    zero_stage: int = _f(2, "critic ZeRO stage")
    ranks: int = _f(1, "critic data-parallel ranks")


@dataclass
class EnsembleConfig:
    mode: Literal["mean", "wco", "uwo"] = _f(
        "mean", "how reward-model scores combine: mean, wco = min, uwo = mean - lambda * variance"
    )
    uwo_lambda: float = _f(1.0, "UWO variance penalty")
    normalize: Literal["none", "running", "calibration"] = _f("running", "per-member normalisation")
    calibration: str = _f(
        "", "jsonl of {prompt, completion} rows giving fixed per-member statistics (calibration)"
    )


@dataclass
class RewardConfig:
    functions: list[str] = _f(
        [], "reward functions: registry names, file.py:function, pkg.module:function or task:NAME"
    )
    weights: list[float] = _f(
        [], "one weight per source: each function, the model ensemble, each remote; empty = all 1"
    )
    style: Literal["auto", "trl", "verl", "openrlhf"] = _f(
        "auto", "call convention of user functions (built-ins are always trl); auto = by signature"
    )
    models: list[str] = _f([], "sequence-classification reward model dirs (an ensemble if several)")
    ensemble: EnsembleConfig = _f(EnsembleConfig(), "reward-model ensemble")
    remote: list[str] = _f(
        [], "URLs of `rlpost reward-server` instances, one source each; a|b = replicas of one"
    )
    timeout_s: float = _f(30.0, "per-call timeout for a reward function (and per HTTP request)")
    on_error: Literal["fail", "drop", "zero"] = _f(
        "fail", "bad reward output: stop, drop sample, 0"
    )
    workers: int = _f(1, "reward worker processes; 0 = run in the reward actor itself (debug)")
    rm_batch_size: int = _f(16, "reward-model scoring batch size")
    remote_batch_size: int = _f(64, "rows per request to a reward server")
    remote_retries: int = _f(3, "retries per request to a reward server (exponential backoff)")

    def __post_init__(self) -> None:
        # Made absolute here, in the driver, so a reward actor with another working directory
        # loads the same file.py:function.
        self.functions = [
            s if s.startswith("task:") or "(" in s else absolute_spec(s) for s in self.functions
        ]


@dataclass
class KLConfig:
    beta: float = _f(0.04, "KL coefficient (initial value for adaptive)")
    estimator: str = _f("k3", "per-token KL estimator (objective KL_ESTIMATORS registry)")
    placement: Literal["auto", "in_loss", "in_reward"] = _f(
        "auto", "KL in the loss or the reward; auto = the algorithm's own"
    )
    controller: Literal["fixed", "adaptive", "schedule"] = _f("fixed", "how beta evolves")
    target: float = _f(6.0, "adaptive: target KL")
    horizon: int = _f(10000, "adaptive: horizon")
    start: float = _f(0.0, "schedule: beta at the start")
    end: float = _f(0.04, "schedule: beta at the end")
    shape: Literal["linear", "cosine", "step"] = _f("linear", "schedule shape")
    warmup: float = _f(0.1, "schedule: fraction of steps held at start")
    clamp: float = _f(20.0, "clamp of the log-ratio before the estimate")


@dataclass
class AlgorithmConfig:
    """The keys every algorithm shares (the objective layer's knobs). An algorithm's own knobs are
    declared next to its code (its ``Options`` dataclass), set as ``algorithm.<option>`` like these,
    checked against the configured algorithm, and read as ``cfg.algorithm.<option>``."""

    name: str = _f("grpo", "registry name, or file.py:Class for a user's algorithm")
    kl: KLConfig = _f(KLConfig(), "KL regularisation")
    advantage: str = _f("group", "advantage estimator (objective ADVANTAGES registry)")
    scale: Literal["std", "none"] = _f("std", "group advantage scaling (none = Dr.GRPO)")
    agg: str = _f("token-mean", "loss aggregation mode (objective AGGREGATIONS registry)")
    clip_low: float = _f(0.2, "PPO ratio clip below")
    clip_high: float = _f(0.2, "PPO ratio clip above (clip-higher when larger)")
    dual_clip: float = _f(0.0, "dual-clip constant c > 1, 0 = off")
    is_cap: float = _f(
        2.0,
        "cap C of the truncated importance weight min(π_old/π_rollout, C) that corrects "
        "samples generated ahead of the learner (trainer.off_policy_steps > 0)",
    )
    policy_loss: str = _f("clipped", "policy loss (objective POLICY_LOSSES registry)")
    gamma: float = _f(1.0, "GAE discount")
    lam: float = _f(0.95, "GAE lambda")
    value_coef: float = _f(0.5, "critic loss weight")
    dynamic_sampling: bool = _f(False, "drop groups whose scores are all equal")
    beta: float = _f(0.1, "preference-loss beta")
    loss_kind: str = _f("sigmoid", "preference loss (objective PREFERENCE_LOSSES registry)")
    label_smoothing: float = _f(0.0, "preference-loss label smoothing (cDPO)")
    preference_data: str = _f("", "offline preference pairs: file with prompt/chosen/rejected")
    options: dict[str, Any] = _f(
        {}, "the configured algorithm's own options, set as algorithm.<option> (tables below)"
    )

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: forward to the algorithm's own options. Dunder
        # and ``options`` lookups must fail plainly, or unpickling (Ray) would recurse.
        if name.startswith("__") or name == "options":
            raise AttributeError(name)
        opts = self.__dict__.get("options") or {}
        if name in opts:
            return opts[name]
        raise AttributeError(
            f"algorithm.{name}: not a shared key nor an option of {self.__dict__.get('name')!r}"
        )


@dataclass
class TrainerConfig:
    steps: int = _f(10, "optimizer steps (rollout batches)")
    prompts_per_step: int = _f(8, "prompts sampled per step")
    seed: int = _f(0, "global seed")
    save_every: int = _f(0, "checkpoint every k steps; 0 = only at the end")
    eval_every: int = _f(0, "evaluate every k steps; 0 = off")
    eval_prompts: int = _f(64, "eval prompts per evaluation")
    output_dir: str = _f("runs", "parent of run directories")
    run_name: str = _f("", "run directory name; empty = algorithm-timestamp")
    resume: bool = _f(False, "continue from the latest checkpoint in the run directory")
    export_hf: bool = _f(True, "export the final policy in Hugging Face format")
    max_steps_this_run: int = _f(0, "stop after this many steps this invocation (0 = no limit)")
    max_restarts: int = _f(
        3, "restarts per actor group after an actor dies (a learner death reloads the checkpoint)"
    )
    actor_timeout_s: float = _f(
        1800.0, "longest wait on any actor call before failing (its node may be gone, or it hung)"
    )
    start_timeout_s: float = _f(1800.0, "longest wait for an actor to start and load its model")
    off_policy_steps: int = _f(
        0,
        "generate up to k steps ahead of the learner: 0 = synchronous, 1 = the next batch is "
        "generated while the learner trains on this one (samples then lag by <= k weight "
        "versions and are corrected by truncated importance weights, algorithm.is_cap)",
    )


@dataclass
class PlacementConfig:
    mode: Literal["split", "colocate"] = _f("split", "own devices per group, or shared with sleep")
    ray_address: str = _f("", "Ray cluster address; empty = RAY_ADDRESS or a local cluster")
    num_cpus: int = _f(0, "CPUs for a local Ray cluster; 0 = all")
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = _f(
        "PACK", "placement-group strategy"
    )
    aux_cpus: float = _f(0.25, "Ray CPUs for each small actor: reference, teacher, reward")
    aux_gpus: float = _f(
        0.0, "Ray GPUs for reference and teacher (and reward when reward.models is set)"
    )
    node_resources: dict[str, str] = _f(
        {},
        "group -> custom Ray resource a node must offer to host that group's actors, e.g. "
        "{rollout: rlpost_node_0, learner: rlpost_node_1}; groups: rollout, learner, "
        "reference, teacher, critic, reward",
    )
    timeout_s: float = _f(60.0, "seconds to wait for the placement group before failing")

    def __post_init__(self) -> None:
        # Checked here (not in validate) so a typo fails while the config is built, naming the key.
        groups = ("rollout", "learner", "reference", "teacher", "critic", "reward")
        if not isinstance(self.node_resources, dict):
            raise ConfigError(
                f"placement.node_resources: expected a mapping group -> resource name, "
                f"got {self.node_resources!r}"
            )
        for group, name in self.node_resources.items():
            if group not in groups:
                raise ConfigError(
                    f"placement.node_resources.{group}: unknown group (known: {', '.join(groups)})"
                )
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(
                    f"placement.node_resources.{group}: expected a resource name, got {name!r}"
                )
        for key in ("aux_cpus", "aux_gpus"):
            if getattr(self, key) < 0:
                raise ConfigError(f"placement.{key}: must be >= 0, got {getattr(self, key)}")
        if self.timeout_s <= 0:
            raise ConfigError(f"placement.timeout_s: must be > 0, got {self.timeout_s}")


@dataclass
class LoggingConfig:
    wandb: bool = _f(False, "log to Weights & Biases")
    wandb_project: str = _f("rlpost", "wandb project")
    wandb_mode: str = _f("", "wandb mode: online, offline; empty = WANDB_MODE or online")
    tensorboard: bool = _f(False, "also write tensorboard events")
    progress: bool = _f(True, "live progress bar on a terminal")
    log_every: int = _f(1, "print a line every k steps when not a TTY")


@dataclass
class Config:
    model: ModelConfig = _f(ModelConfig(), "policy model")
    data: DataConfig = _f(DataConfig(), "prompts")
    rollout: RolloutConfig = _f(RolloutConfig(), "generation")
    learner: LearnerConfig = _f(LearnerConfig(), "DeepSpeed policy learners")
    reference: ReferenceConfig = _f(ReferenceConfig(), "frozen reference policy")
    teacher: TeacherConfig = _f(TeacherConfig(), "frozen teacher")
    critic: CriticConfig = _f(CriticConfig(), "value model")
    reward: RewardConfig = _f(RewardConfig(), "rewards")
    algorithm: AlgorithmConfig = _f(AlgorithmConfig(), "algorithm")
    trainer: TrainerConfig = _f(TrainerConfig(), "loop")
    placement: PlacementConfig = _f(PlacementConfig(), "Ray placement")
    logging: LoggingConfig = _f(LoggingConfig(), "tracking")


# ---------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert one leaf value; strings from the command line are parsed as YAML first."""
    origin = get_origin(tp)
    if origin is Literal:
        # YAML 1.1 reads a bare on/off (or yes/no, true/false) as a boolean
        if isinstance(value, bool) and {"on", "off"} <= set(get_args(tp)):
            value = "on" if value else "off"
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (list, typing.List):  # noqa: UP006
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin in (types.UnionType, typing.Union):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fields and cls is AlgorithmConfig:
            kwargs.setdefault("options", {})[k] = v  # checked against the algorithm's Options
            continue
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{key}'{hint}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v or {}, f"{key}.")
        elif cls is AlgorithmConfig and k == "options":
            kwargs.setdefault("options", {}).update(v or {})
        else:
            kwargs[k] = _coerce(key, v, tp)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{p}' is not a section")
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if value is None:
        value = ""
    return key.strip(), value


def to_dict(cfg: Any) -> dict:
    """Plain dict; the algorithm's options are written flat under ``algorithm`` as users set them."""
    d = dataclasses.asdict(cfg)
    if isinstance(cfg, Config):
        d["algorithm"].update(d["algorithm"].pop("options"))
    return d


def load_config(
    recipe: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    validate_paths: bool = True,
) -> Config:
    """Recipe YAML + dotted overrides → validated Config. Raises ConfigError naming the key."""
    tree: dict = {}
    if recipe:
        path = Path(recipe)
        if not path.exists():
            raise ConfigError(f"recipe file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: YAML does not parse: {e}".replace("\n", " ")) from e
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides:
        k, v = parse_override(item)
        _set_dotted(tree, k, v)
    cfg = config_from_dict(tree)
    if validate_paths:
        resolve_tiny_models(cfg)
    validate(cfg, check_paths=validate_paths)
    return cfg


def resolve_tiny_models(cfg: Config) -> None:
    """``tiny:PRESET`` names a tiny model built offline on first use (cached under RLPOST_CACHE)."""

    def fix(v: str) -> str:
        return str(tiny.ensure(v.split(":", 1)[1])) if v.startswith("tiny:") else v

    for sec in (cfg.model, cfg.reference, cfg.teacher, cfg.critic):
        sec.path = fix(sec.path)
    cfg.model.tokenizer = fix(cfg.model.tokenizer)
    cfg.reward.models = [fix(m) for m in cfg.reward.models]


def config_from_dict(tree: dict) -> Config:
    cfg = _build(Config, tree, "")
    resolve_algorithm(cfg)
    return cfg


def resolve_algorithm(cfg: Config) -> None:
    """Type the algorithm's own options against its ``Options`` dataclass (defaults filled in,
    unknown keys refused with the closest name), then run its ``validate`` hook."""
    # The plug-in package is imported here, not at the top: algorithm modules import this one.
    from algorithms.base import algorithm_class

    a = cfg.algorithm
    try:
        cls = algorithm_class(a.name)
    except (KeyError, TypeError, ValueError, OSError, AttributeError, ImportError) as e:
        raise ConfigError(f"algorithm.name: {str(e).strip(chr(34) + chr(39))}") from e
    opts_cls = cls.Options
    given = dict(a.options)
    known = [f.name for f in dataclasses.fields(opts_cls)]
    for k in given:
        if k not in known:
            shared = [f.name for f in dataclasses.fields(AlgorithmConfig) if f.name != "options"]
            close = difflib.get_close_matches(str(k), known + shared, n=1)
            hint = f"; did you mean 'algorithm.{close[0]}'?" if close else ""
            mine = ", ".join(known) or "none"
            raise ConfigError(f"unknown key 'algorithm.{k}'{hint} ({a.name} options: {mine})")
    a.options = dataclasses.asdict(_build(opts_cls, given, "algorithm."))
    cls.validate(cfg)
    if cfg.trainer.off_policy_steps and not cls(cfg).needs().off_policy:
        raise ConfigError(
            f"trainer.off_policy_steps: {a.name} learns on-policy only (its loss applies no "
            "importance correction to samples generated ahead); set it to 0"
        )


def _model_exists(name: str) -> bool:
    """A local dir, or something that looks like a hub id (org/name)."""
    if Path(name).expanduser().exists():
        return True
    return "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1


def validate(cfg: Config, check_paths: bool = True) -> None:
    """Cross-field checks; each failure names the key."""
    r, lrn, a, t = cfg.rollout, cfg.learner, cfg.algorithm, cfg.trainer
    if not cfg.model.path:
        raise ConfigError("model.path: required (a local model dir or a hub id)")
    if check_paths:
        for key, val in [
            ("model.path", cfg.model.path),
            ("model.tokenizer", cfg.model.tokenizer),
            ("reference.path", cfg.reference.path),
            ("teacher.path", cfg.teacher.path),
            ("critic.path", cfg.critic.path),
        ] + [(f"reward.models[{i}]", m) for i, m in enumerate(cfg.reward.models)]:
            if val and not _model_exists(val):
                raise ConfigError(f"{key}: model not found: {val}")
    for key, val in [
        ("trainer.steps", t.steps),
        ("trainer.prompts_per_step", t.prompts_per_step),
        ("rollout.n", r.n),
        ("rollout.engines", r.engines),
        ("rollout.max_new_tokens", r.max_new_tokens),
        ("learner.ranks", lrn.ranks),
        ("learner.micro_batch_size", lrn.micro_batch_size),
        ("learner.epochs", lrn.epochs),
        ("rollout.sync_every", r.sync_every),
    ]:
        if val < 1:
            raise ConfigError(f"{key}: must be >= 1, got {val}")
    if t.off_policy_steps < 0:
        raise ConfigError(f"trainer.off_policy_steps: must be >= 0, got {t.off_policy_steps}")
    if t.off_policy_steps and cfg.placement.mode == "colocate":
        raise ConfigError(
            "trainer.off_policy_steps: generation cannot run ahead when engines and learners "
            "share devices (placement.mode=colocate: the engines sleep while learners train)"
        )
    if a.is_cap <= 0:
        raise ConfigError(f"algorithm.is_cap: must be > 0, got {a.is_cap}")
    if t.max_restarts < 0:
        raise ConfigError(f"trainer.max_restarts: must be >= 0, got {t.max_restarts}")
    for key, secs in [
        ("trainer.actor_timeout_s", t.actor_timeout_s),
        ("trainer.start_timeout_s", t.start_timeout_s),
    ]:
        if secs <= 0:
            raise ConfigError(f"{key}: must be > 0 seconds, got {secs}")
    if lrn.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"learner.zero_stage: must be 0, 1, 2 or 3, got {lrn.zero_stage}")
    rows = t.prompts_per_step * r.n
    mini = lrn.mini_batch_size or rows
    if rows % mini:
        raise ConfigError(
            f"learner.mini_batch_size: {mini} does not divide the rollout batch "
            f"trainer.prompts_per_step*rollout.n = {rows}"
        )
    if r.temperature <= 0:
        raise ConfigError(f"rollout.temperature: must be > 0, got {r.temperature}")
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"rollout.top_p: must be in (0, 1], got {r.top_p}")
    if cfg.placement.mode == "colocate" and r.gpus_per_engine == 0 and lrn.gpus_per_rank == 0:
        raise ConfigError(
            "placement.mode: colocate needs GPUs (vLLM sleeps while learners train); "
            "use split on CPU"
        )
    if r.sync_transport == "ipc" and (r.gpus_per_engine == 0 or lrn.gpus_per_rank == 0):
        raise ConfigError(
            "rollout.sync_transport: ipc (CUDA IPC) needs engines and learners on GPUs "
            "(rollout.gpus_per_engine, learner.gpus_per_rank)"
        )
    w = cfg.reward
    n_sources = len(w.functions) + (1 if w.models else 0) + len(w.remote)
    if w.weights and len(w.weights) != n_sources:
        raise ConfigError(
            f"reward.weights: {len(w.weights)} weights for {n_sources} reward sources"
        )
    shared = {
        "algorithm.advantage": a.advantage,
        "algorithm.agg": a.agg,
        "algorithm.loss_kind": a.loss_kind,
        "algorithm.policy_loss": a.policy_loss,
        "algorithm.kl.estimator": a.kl.estimator,
    }
    for key, value in shared.items():
        check_registered(key, value, CONFIG_REGISTRIES[key])
    if a.kl.beta < 0:
        raise ConfigError(f"algorithm.kl.beta: must be >= 0, got {a.kl.beta}")
    if a.dual_clip and a.dual_clip <= 1:
        raise ConfigError(f"algorithm.dual_clip: must be > 1 (or 0 = off), got {a.dual_clip}")


def check_registered(key: str, value: str, registry: Registry) -> None:
    """A name the registry knows, or a user's ``file.py:name`` / ``module:name`` (loaded later)."""
    if value not in registry and ":" not in value:
        raise ConfigError(f"{key}: {registry.unknown(value)}")


def field_docs(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every leaf field; the source of docs/configuration.md."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows += field_docs(tp, key + ".")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        rows.append((key, _type_name(tp), repr(default), f.metadata.get("help", "")))
    return rows


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
