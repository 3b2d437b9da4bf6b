"""An installed rlpost is whole: the wheel carries the recipes, compare files and templates."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(600)
def test_wheel_ships_launch_files(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git needed to export the tree")
    src = tmp_path / "src"
    src.mkdir()
    # the tracked tree only (a clean export, as a release build sees it)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in archive)):
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        s = ROOT / rel
        if s.is_symlink():
            dst.symlink_to(s.readlink())
        elif s.is_file():
            shutil.copy2(s, dst)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist")],
        check=True, capture_output=True,
    )  # fmt: skip
    wheel = next((tmp_path / "dist").glob("rlpost-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        str(p.relative_to(ROOT / "launch")) for p in (ROOT / "launch").rglob("*") if p.is_file()
    }
    assert shipped and {f"rlpost/_launch/{s}" for s in shipped} <= names
    for must in ("recipes/grpo_tiny.yaml", "compare/smoke_nano.yaml", "slurm/rlpost.sbatch.in",
                 "kuberay/rayjob.template.yaml", "kuberay/ray.io_rayjobs.yaml"):  # fmt: skip
        assert f"rlpost/_launch/{must}" in names
