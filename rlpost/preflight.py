"""Checks that run before any actor starts: reward specs, algorithm files, data files.

``train``, ``submit``, ``launch slurm|kuberay`` and ``compare`` call :func:`check` right after the
config loads, so a misspelt reward file or a data set without its prompt column ends in one line
and exit code 2 within seconds, not 60 s later inside an actor. Each failure is a
:class:`ConfigError` naming the key and the file.

User reward files are imported in a short-lived subprocess (``python -m rlpost.preflight``), never
in the driver: user code does not run there, and a file that hangs on import cannot hang the CLI.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from algorithms.base import ALGORITHMS, Algorithm
from envs.base import get_task
from rewards.base import detect_style, is_builtin, resolve_function
from rlpost.checkpoint import latest
from rlpost.config import Config, ConfigError
from rlpost.data import (
    HUB_ID_RE,
    DataError,
    _format_of,
    _needs_answer,
    answer_key_for,
    load_table,
    lookup,
)
from rlpost.registry import absolute_spec

IMPORT_TIMEOUT_S = 60.0
# What a TRL-style function may ask for besides data-set columns.
TRL_KEYWORDS = {
    "prompts",
    "completions",
    "completion_ids",
    "trainer_state",
    "log_metric",
    "log_extra",
    "step",
    "answer",
}


def check(cfg: Config, data: bool = True) -> None:
    """Every pre-flight check for ``cfg``; raises ConfigError (one line) on the first failure.

    ``data=False`` skips the data files (a launcher whose files live on the cluster only).
    """
    check_algorithm(cfg)
    columns = check_data(cfg) if data else None
    check_rewards(cfg, columns)


# ------------------------------------------------------------------------------ algorithm


def check_algorithm(cfg: Config) -> None:
    """``algorithm.name=file.py:Class``: the file exists, loads, and holds an Algorithm subclass.

    Registry names are the config's to check (it knows them without importing torch)."""
    spec = cfg.algorithm.name
    if not spec:
        raise ConfigError("algorithm.name: required")
    if ":" not in spec:
        return
    target = spec.rpartition(":")[0]
    if (target.endswith(".py") or "/" in target) and not Path(target).expanduser().exists():
        raise ConfigError(f"algorithm.name: file not found: {target}")
    import algorithms  # noqa: F401  (registers the built-ins; a user class imports them anyway)

    try:
        cls = ALGORITHMS.get(absolute_spec(spec) if ":" in spec else spec)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's file: one line
        raise ConfigError(f"algorithm.name={spec}: {_one_line(e)}") from e
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ConfigError(f"algorithm.name={spec}: {cls!r} is not an rlpost Algorithm subclass")


# ------------------------------------------------------------------------------ data


def _looks_like_hub_id(spec: str) -> bool:

    return bool(HUB_ID_RE.match(spec.split("?", 1)[0])) and not spec.endswith(
        (".jsonl", ".json", ".parquet", ".csv", ".tsv")
    )


def data_columns(path: Path) -> tuple[list[str], dict]:
    """Column names and the first row of a data file, read cheaply (no full load)."""

    fmt = _format_of(path)
    if path.is_dir():
        rows, cols, _ = load_table(str(path))
        return cols, rows[0] if rows else {}
    if fmt is None:
        raise ConfigError(
            f"{path}: unknown file type '{path.suffix}' (use .jsonl, .json, .parquet, .csv, .tsv, "
            "or a saved datasets directory)"
        )
    if fmt == "parquet":
        pf = pq.ParquetFile(str(path))
        first = next(pf.iter_batches(batch_size=1), None)
        row = first.to_pylist()[0] if first is not None and first.num_rows else {}
        return list(pf.schema_arrow.names), row
    if fmt == "json" and not path.suffix.endswith(("gz", "bz2", "xz", "zst")):
        with path.open(encoding="utf-8", errors="replace") as f:
            if f.read(1) != "[":
                f.seek(0)
                for line in f:
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ConfigError(f"{path}: row 0 is not JSON: {e}") from e
                        if not isinstance(row, dict):
                            raise ConfigError(f"{path}: row 0 is not a JSON object")
                        return list(row), row
                raise ConfigError(f"{path}: no rows")

    rows, cols, _ = load_table(str(path))
    return cols, rows[0] if rows else {}


def check_data(cfg: Config) -> set[str] | None:
    """``data.train`` / ``data.eval`` / ``algorithm.preference_data``: the file exists, has the
    prompt column, and the answer column when one is named or needed. Returns the train columns
    (None when they are not known without loading: a task or a hub id)."""

    d = cfg.data
    columns: set[str] | None = None
    for key, spec in (("data.train", d.train), ("data.eval", d.eval)):
        if not spec or spec.startswith("task:"):
            continue
        path = Path(spec).expanduser()
        if not path.exists():
            if _looks_like_hub_id(spec):
                continue  # a hub id: checked when it downloads
            raise ConfigError(f"{key}: file not found: {spec}")
        try:
            cols, first = data_columns(path)
        except DataError as e:
            raise ConfigError(f"{key}: {_one_line(e)}") from e
        if d.prompt_key not in cols:
            raise ConfigError(
                f"{key}: {spec} has no prompt column '{d.prompt_key}' (data.prompt_key; "
                f"columns: {', '.join(cols)})"
            )
        akey = answer_key_for(cfg, first)
        if akey and not lookup(first, akey)[0]:
            raise ConfigError(
                f"data.answer_key: {spec} has no column '{akey}' (columns: {', '.join(cols)}; "
                "set data.answer_key='' if there are no reference answers)"
            )
        if not akey:
            if _needs_answer(cfg):
                raise ConfigError(
                    f"reward.functions: {_needs_answer(cfg)} compare against reference answers "
                    f"but {spec} has no '{d.answer_key or 'answer'}' column (columns: "
                    f"{', '.join(cols)}); set data.answer_key=COLUMN"
                )
        if key == "data.train":
            columns = set(cols) | {"answer"}
    pref = getattr(cfg.algorithm, "preference_data", "")
    if pref and not Path(pref).expanduser().exists():
        raise ConfigError(f"algorithm.preference_data: file not found: {pref}")
    return columns


# ------------------------------------------------------------------------------ rewards


def check_rewards(cfg: Config, columns: set[str] | None = None) -> None:
    """Each ``reward.functions`` spec: the file exists, imports, has the function, and its
    signature is one rlpost can call (checked in a subprocess: user code never runs here)."""

    user: list[str] = []
    for i, spec in enumerate(cfg.reward.functions):
        key = f"reward.functions[{i}]"
        spec = spec.strip()
        if spec.startswith("task:"):
            try:
                get_task(spec[5:])
            except Exception as e:  # noqa: BLE001 - a bad task name or option: one line
                raise ConfigError(f"{key}={spec}: {_one_line(e)}") from e
            continue
        try:
            builtin = is_builtin(spec)
        except ValueError as e:
            raise ConfigError(f"{key}={spec}: {_one_line(e)}") from e
        if builtin:
            try:
                resolve_function(spec)  # ours: safe to build here
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"{key}={spec}: {_one_line(e)}") from e
            continue
        target, sep, attr = spec.rpartition(":")
        if not sep:
            try:
                resolve_function(spec)  # raises KeyError listing the known names
            except KeyError as e:
                raise ConfigError(f"{key}: {_one_line(e)}") from e
        if target.endswith(".py") or "/" in target:
            if not Path(target).expanduser().exists():
                raise ConfigError(f"{key}: reward file not found: {target}")
        user.append(spec)
    if not user:
        return
    results = _probe(user, cfg.reward.style, sorted(columns) if columns is not None else None)
    for i, spec in enumerate(cfg.reward.functions):
        spec = spec.strip()
        if spec in results and results[spec]:
            raise ConfigError(f"reward.functions[{i}]={spec}: {results[spec]}")


def _probe(specs: list[str], style: str, columns: list[str] | None) -> dict[str, str]:
    """Load the specs in a subprocess: {spec: '' if fine, else the one-line problem}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p or os.getcwd() for p in sys.path))
    arg = json.dumps({"specs": specs, "style": style, "columns": columns})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rlpost.preflight", arg],
            capture_output=True,
            text=True,
            timeout=IMPORT_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise ConfigError(
            f"reward.functions: importing {specs} took over {IMPORT_TIMEOUT_S:.0f} s"
        ) from e
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"reward.functions: checking {specs} failed: {tail}")
    return json.loads(lines[-1])


def signature_problem(fn: Any, style: str, columns: list[str] | None) -> str:
    """'' when rlpost can call ``fn`` in ``style``; else what is wrong, in one line."""

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ""  # a builtin or C callable: nothing to check
    resolved = detect_style(fn) if style == "auto" else style
    params = sig.parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [
        p.name
        for p in params
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if resolved == "verl":
        verl = ("data_source", "solution_str", "ground_truth", "extra_info")
        missing = [n for n in required if n not in verl]
        return f"verl-style function needs unknown argument(s) {missing}" if missing else ""
    if resolved == "openrlhf":
        if len(positional) < 3 and not any(p.kind is p.VAR_POSITIONAL for p in params):
            return "OpenRLHF-style function must take (queries, prompts, labels, **kwargs)"
        return ""
    known = TRL_KEYWORDS | set(columns or ())
    missing = [n for n in required if n not in known]
    if missing and columns is not None:
        return (
            f"needs argument(s) {missing}, which no data column provides "
            f"(columns: {', '.join(sorted(set(columns) - {'answer'}))})"
        )
    if "completions" not in {p.name for p in params} and not any(
        p.kind is p.VAR_KEYWORD for p in params
    ):
        return "a TRL-style function takes 'completions' (or **kwargs)"
    return ""


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = text.strip() or type(e).__name__
    return " ".join(text.split())


def _probe_main(arg: str) -> None:
    """Subprocess side of :func:`_probe`: one JSON line {spec: problem or ''}."""

    req = json.loads(arg)
    out: dict[str, str] = {}
    for spec in req["specs"]:
        try:
            fn = resolve_function(spec)
        except Exception as e:  # noqa: BLE001 - the user's import error, in one line
            out[spec] = f"cannot load: {type(e).__name__}: {_one_line(e)}"
            continue
        out[spec] = signature_problem(fn, req["style"], req["columns"])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    _probe_main(sys.argv[1])


# ------------------------------------------------------------------------------ resume


def resumable_run(cfg: Config) -> str:
    """The run ``--resume`` continues: ``trainer.run_name`` if set, else the latest run in
    ``trainer.output_dir`` of the same recipe (same algorithm, model and data), judged by its
    newest checkpoint. Refuses, naming where it looked, when there is none: a resume never
    silently starts fresh."""

    out = Path(cfg.trainer.output_dir)
    if cfg.trainer.run_name:
        run = out / cfg.trainer.run_name
        if latest(run / "checkpoints") is None:
            raise ConfigError(
                f"--resume: no checkpoint in {run / 'checkpoints'} (trainer.run_name="
                f"{cfg.trainer.run_name}); drop --resume to start a new run"
            )
        return cfg.trainer.run_name
    want = (cfg.algorithm.name, cfg.model.path, cfg.data.train)
    found: list[tuple[float, str]] = []
    for run in out.iterdir() if out.is_dir() else []:
        ckpt = latest(run / "checkpoints")
        conf = run / "config.yaml"
        if ckpt is None or not conf.exists():
            continue
        try:
            tree = yaml.safe_load(conf.read_text()) or {}
        except yaml.YAMLError:
            continue
        have = (
            tree.get("algorithm", {}).get("name"),
            tree.get("model", {}).get("path"),
            tree.get("data", {}).get("train"),
        )
        if have == want:
            found.append((ckpt.stat().st_mtime, run.name))
    if not found:
        raise ConfigError(
            f"--resume: no run of this recipe with a checkpoint in {out} (algorithm "
            f"{want[0]}, model {want[1]}, data {want[2] or '-'}); set trainer.run_name=NAME or "
            "drop --resume to start a new run"
        )
    return max(found)[1]
