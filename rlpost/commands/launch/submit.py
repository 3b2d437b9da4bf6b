"""Ray Jobs submission: turn ``rlpost train RECIPE overrides`` into a job with its files.

The job runs in a copy of ``--working-dir`` (Ray uploads it; .gitignore and ``excludes`` apply).
User code named as ``file.py:Name`` anywhere in the config (algorithm.name, reward.functions ...)
must exist on the cluster too:

* a file inside the working dir travels with it; its spec is rewritten relative to the working
  dir when the local path was relative to somewhere else;
* a file outside it is copied into a staging package shipped as a ``py_modules`` entry, and the
  spec becomes ``rlpost_staged_<hash>.<module>:Name`` (``load_object`` imports module specs), so
  every actor of the job can import it on every node. Such a file must be self-contained.

A recipe outside the working dir is staged the same way and found through the package path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from ray.job_submission import JobSubmissionClient

from rlpost.config import ConfigError, load_config, parse_override
from rlpost.runtime.placement import use_ray_token_auth

SPEC_RE = re.compile(r"^(?P<path>[^:=\s]+\.py):(?P<name>[A-Za-z_]\w*(\(.*\))?)$")
DEFAULT_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "runs",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class JobRequest:
    """What ``JobSubmissionClient.submit_job`` gets, plus the staging dir to delete afterwards."""

    entrypoint: str
    runtime_env: dict[str, Any]
    staged: Path | None = None
    rewritten: dict[str, str] = field(default_factory=dict)  # key -> new value, for the report

    def cleanup(self) -> None:
        if self.staged is not None:
            shutil.rmtree(self.staged.parent, ignore_errors=True)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


class _Stager:
    """Collects files from outside the working dir into one importable package."""

    def __init__(self) -> None:
        self.files: dict[Path, str] = {}  # source -> module / file name inside the package

    def add(self, path: Path, module: bool) -> str:
        if path in self.files:
            return self.files[path]
        if not module:
            self.files[path] = path.name
            return path.name
        stem = re.sub(r"\W", "_", path.stem)
        if not stem or stem[0].isdigit():
            stem = "m_" + stem
        taken = set(self.files.values())
        name, k = stem, 2
        while name in taken or name == "__init__":
            name, k = f"{stem}_{k}", k + 1
        self.files[path] = name
        return name

    @property
    def package(self) -> str:
        h = hashlib.sha256()
        for src, name in sorted(self.files.items(), key=lambda kv: kv[1]):
            h.update(name.encode() + b"\0" + src.read_bytes() + b"\0")
        return f"rlpost_staged_{h.hexdigest()[:10]}"

    def write(self) -> Path | None:
        if not self.files:
            return None
        root = Path(tempfile.mkdtemp(prefix="rlpost-submit-")) / self.package
        root.mkdir()
        (root / "__init__.py").write_text('"""Files staged by `rlpost submit`."""\n')
        for src, name in self.files.items():
            dst = root / (name if "." in name else f"{name}.py")  # modules: bare names
            shutil.copy2(src, dst)
        return root


_PKG = "\x00staged\x00"  # stands for the staging package's name until all files are known


def _is_spec(v: Any) -> bool:
    """``file.py:Name``, or ``key=file.py:Name`` (an override inside a compare file)."""
    return isinstance(v, str) and bool(SPEC_RE.match(v) or SPEC_RE.match(v.partition("=")[2]))


def _rewrite_spec(value: str, cwd: Path, wd: Path, stager: _Stager) -> str:
    """One ``file.py:Name`` spec -> the form that resolves inside the job."""
    m = SPEC_RE.match(value)
    if not m:
        key, eq, rest = value.partition("=")
        if eq and SPEC_RE.match(rest):
            return f"{key}={_rewrite_spec(rest, cwd, wd, stager)}"
        return value
    path = (cwd / Path(m["path"]).expanduser()).resolve()
    if not path.is_file():
        raise ConfigError(f"{value}: file {path} does not exist")
    if _inside(path, wd):
        return f"{path.relative_to(wd).as_posix()}:{m['name']}"
    return f"{_PKG}.{stager.add(path, module=True)}:{m['name']}"


def _walk(tree: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(key path, leaf) for every leaf; lists of scalars are leaves, lists of mappings are not."""
    if isinstance(tree, dict):
        items: list[tuple[Any, Any]] = list(tree.items())
    elif isinstance(tree, list) and any(isinstance(v, (dict, list)) for v in tree):
        items = list(enumerate(tree))
    else:
        return [(path, tree)]
    out = []
    for k, v in items:
        out += _walk(v, (*path, k))
    return out


def _specs_in(value: Any) -> bool:
    return any(_is_spec(v) for v in (value if isinstance(value, list) else [value]))


def _finish(value: Any, package: str) -> Any:
    if isinstance(value, list):
        return [_finish(v, package) for v in value]
    return value.replace(_PKG, package) if isinstance(value, str) else value


def _override(key: str, value: Any) -> str:
    # JSON is YAML: quoted strings survive the override parser unchanged (no "yes" -> True).
    return f"{key}={json.dumps(value)}"


def _staged_path_expr(package: str, filename: str) -> str:
    """Shell word for a staged file's path inside the job (the package's install dir)."""
    code = f"import os, {package} as m; print(os.path.dirname(m.__file__))"
    return f'"$(python -c {shlex.quote(code)})/{filename}"'


def build_train_job(
    recipe: str,
    overrides: list[str] | tuple[str, ...] = (),
    working_dir: str = ".",
    *,
    command: str = "train",
    rlpost_cmd: str = "rlpost",
    env_vars: dict[str, str] | None = None,
    excludes: list[str] | None = None,
) -> JobRequest:
    """``rlpost train|compare`` job for ``recipe``; validates the recipe locally first.

    ``command="compare"`` ships a compare config instead: its YAML tree is scanned the same way.
    """
    here = Path.cwd()  # relative specs resolve from here, as load_config resolves them
    wd = (here / working_dir).resolve()
    if not wd.is_dir():
        raise ConfigError(f"--working-dir: {wd} is not a directory")
    recipe_path = (here / recipe).resolve()
    if not recipe_path.is_file():
        raise ConfigError(f"recipe file not found: {recipe}")
    stager = _Stager()
    extra: dict[tuple, Any] = {}
    if command == "train":
        load_config(str(recipe_path), list(overrides), validate_paths=False)  # fail fast
    try:
        tree: Any = yaml.safe_load(recipe_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{recipe}: YAML does not parse: {e}".replace("\n", " ")) from e
    if command == "train":
        # the specs as the user wrote them (the built config has already made them absolute)
        for item in overrides:
            key, value = parse_override(item)
            node = tree
            *parents, last = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
    for key, value in _walk(tree):
        if command == "train" and isinstance(value, str) and "," in value:
            value = [v for v in value.split(",") if v]  # a list given as "a,b" on the command line
        if not _specs_in(value):
            continue
        if isinstance(value, list):
            new: Any = [
                _rewrite_spec(v, here, wd, stager) if isinstance(v, str) else v for v in value
            ]
        else:
            new = _rewrite_spec(value, here, wd, stager)
        if new != value:
            extra[key] = new
    if command != "train":  # overrides of a compare apply to every run: same rewriting
        overrides = [_rewrite_spec(o, here, wd, stager) for o in overrides]
    compare_rewrite = command != "train" and bool(extra)
    if not _inside(recipe_path, wd) or compare_rewrite:
        stager.add(recipe_path, module=False)
    package = stager.package if stager.files else ""
    extra = {k: _finish(v, package) for k, v in extra.items()}
    staged = stager.write()
    if staged is not None and compare_rewrite:
        data = yaml.safe_load(recipe_path.read_text()) or {}
        for (*parents, last), value in extra.items():
            node = data
            for p in parents:
                node = node[p]
            node[last] = value
        (staged / recipe_path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    if recipe_path in stager.files:
        recipe_arg = _staged_path_expr(package, recipe_path.name)
    else:
        recipe_arg = shlex.quote(recipe_path.relative_to(wd).as_posix())
    dotted = {".".join(str(p) for p in k): v for k, v in extra.items()}
    kept = [_finish(o, package) for o in overrides if o.split("=", 1)[0].strip() not in dotted]
    args = kept + ([_override(k, v) for k, v in dotted.items()] if command == "train" else [])
    entrypoint = " ".join(
        [shlex.quote(w) for w in shlex.split(rlpost_cmd)]
        + [command, recipe_arg]
        + [shlex.quote(a) for a in args]
    )
    runtime_env: dict[str, Any] = {
        "working_dir": str(wd),
        "excludes": list(DEFAULT_EXCLUDES if excludes is None else excludes),
    }
    if staged is not None:
        runtime_env["py_modules"] = [str(staged)]
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return JobRequest(entrypoint, runtime_env, staged, {k: str(v) for k, v in dotted.items()})


def build_command_job(
    entrypoint: str,
    working_dir: str = ".",
    *,
    env_vars: dict[str, str] | None = None,
    excludes: list[str] | None = None,
) -> JobRequest:
    """Any shell command with the same runtime env (``rlpost submit --entrypoint``)."""
    wd = Path(working_dir).resolve()
    if not wd.is_dir():
        raise ConfigError(f"--working-dir: {wd} is not a directory")
    env: dict[str, Any] = {
        "working_dir": str(wd),
        "excludes": list(DEFAULT_EXCLUDES if excludes is None else excludes),
    }
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return JobRequest(entrypoint, env)


# ------------------------------------------------------------------------------ talking to Ray


def client(address: str | None):  # -> JobSubmissionClient (import kept lazy: ray is slow)

    use_ray_token_auth()
    try:
        return JobSubmissionClient(address or None)
    except Exception as e:  # noqa: BLE001 - connection, auth, bad URL: all "cannot reach"
        where = address or os.environ.get("RAY_ADDRESS") or "(no --address, no RAY_ADDRESS)"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConnectionError(f"cannot reach the Ray Jobs API at {where}: {msg}") from e


@contextlib.contextmanager
def _quiet_upload_logs() -> Iterator[None]:
    """Ray logs every skipped .gitignore and its new default excludes at upload; hide that."""
    names = ("ray._private.runtime_env", "ray.dashboard.modules.dashboard_sdk")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def submit(
    address: str | None, job: JobRequest, submission_id: str | None = None, **kw: Any
) -> str:
    """Submit and return the submission id; the staging dir is removed once uploaded."""
    try:
        with _quiet_upload_logs():
            return client(address).submit_job(
                entrypoint=job.entrypoint,
                runtime_env=job.runtime_env,
                submission_id=submission_id,
                **kw,
            )
    finally:
        job.cleanup()


def follow(address: str | None, job_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    c = client(address)

    async def tail() -> None:
        async for lines in c.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return wait(address, job_id, timeout_s=30, c=c)


def wait(address: str | None, job_id: str, timeout_s: float = 3600, c: Any = None) -> str:
    """Poll until the job is terminal (or ``timeout_s``); returns the last status seen."""
    c = c or client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def list_jobs(address: str | None) -> list[dict[str, Any]]:
    rows = []
    for j in client(address).list_jobs():
        rows.append(
            {
                "id": j.submission_id or j.job_id or "",
                "status": str(getattr(j.status, "value", j.status)),
                "start": j.start_time,
                "end": j.end_time,
                "entrypoint": j.entrypoint,
                "message": j.message or "",
            }
        )
    rows.sort(key=lambda r: r["start"] or 0)
    return rows


def logs(address: str | None, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def stop(address: str | None, job_id: str) -> bool:
    return bool(client(address).stop_job(job_id))


def status(address: str | None, job_id: str) -> dict[str, Any]:
    info = client(address).get_job_info(job_id)
    return {
        "id": job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "message": info.message or "",
        "entrypoint": info.entrypoint,
    }
