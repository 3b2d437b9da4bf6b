"""Docs that run: every `rlpost ...` command in README.md and docs/*.md parses with the real
argument parser, and the repository files it names exist (nothing is trained)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rlpost import cli, resources

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Shipped top-level folders: not the ignored outputs (runs/ exists once `make demo` has run, and
# the docs' runs/... paths name what a command will write there).
_IGNORED = {
    ln.strip().strip("/")
    for ln in (ROOT / ".gitignore").read_text().splitlines()
    if ln.strip().endswith("/")
}
TOP = {
    p.name
    for p in ROOT.iterdir()
    if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED
}
PLACEHOLDER = re.compile(r"<[^>]*>|\.\.\.|…|\[--|\b[A-Z][A-Z_]{2,}\b")
# A command starts the line: env assignments, then rlpost (.venv/bin/rlpost, python -m rlpost.cli).
STARTS = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(?:\S*/)?(?:rlpost|python3? -m rlpost\.cli)(\s|$)")


def _commands(path: Path) -> list[tuple[int, str, bool]]:
    """(line, command text, from a code block) for each rlpost command in a markdown file."""
    out: list[tuple[int, str, bool]] = []
    in_block, pending, start = False, "", 0
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            text = (pending + " " + line.strip()) if pending else line.strip()
            if text.endswith("\\"):
                pending, start = text[:-1], start or i
                continue
            pending = ""
            text = re.sub(r"\s+#.*$", "", text).lstrip("$ ").strip()
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", text):
                part = re.sub(r"^(?:do|then)\s+", "", part)
                if STARTS.match(part) and not re.search(r"rlpost \S+:", part):  # not output
                    out.append((start or i, re.sub(r"\$\{?\w+\}?", "0", part), True))
            start = 0
        else:
            for m in re.finditer(r"`([^`]*\brlpost [^`]*)`", line):
                if STARTS.match(m.group(1)):
                    out.append((i, m.group(1), False))
    return out


def _argv(cmd: str) -> list[str] | None:
    try:
        toks = shlex.split(cmd)
    except ValueError:
        return None
    for j, t in enumerate(toks):
        if t == "rlpost" or t.endswith("/rlpost") or t == "rlpost.cli":
            return toks[j + 1 :]
    return None


CASES = [(p, line, cmd, block) for p in DOCS for line, cmd, block in _commands(p)]


def test_docs_show_commands():
    assert len(CASES) > 20


@pytest.mark.parametrize(
    "path, line, cmd, block",
    CASES,
    ids=[f"{p.name}:{line}" for p, line, _, _ in CASES],
)
def test_doc_command_parses_and_its_files_exist(path, line, cmd, block, capsys):
    argv = _argv(cmd)
    assert argv is not None, f"{path.name}:{line}: cannot split {cmd!r}"
    where = f"{path.name}:{line}: `{cmd}`"
    commands = set(cli.build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    if not block and all(re.fullmatch(r"[a-z][a-z-]*", a) for a in argv[:2]) and len(argv) <= 2:
        # an inline mention of a command by name (`rlpost compare`, `rlpost launch slurm`)
        assert not argv or argv[0] in commands, f"{where}: no such command"
        return
    assert argv and argv[0] in commands, f"{where}: no such command"
    if PLACEHOLDER.search(" ".join(argv)):
        return  # a usage pattern like `rlpost compare launch/compare/<name>.yaml`
    try:
        args = cli.parse_args(argv)
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        assert e.code == 0, f"{where}: {err[-1] if err else e.code}"
        return
    for tok in [*argv[1:], *getattr(args, "overrides", [])]:
        value = tok.split("=", 1)[-1].strip("[]")
        for piece in value.split(","):
            piece = piece.split(":", 1)[0] if ".py:" in piece else piece
            if PLACEHOLDER.search(piece) or piece.split("/", 1)[0] not in TOP or "/" not in piece:
                continue
            assert (ROOT / piece).exists() or resources.find(piece).exists(), (
                f"{where}: names {piece}, which does not exist"
            )
    recipe = getattr(args, "recipe", None)
    if argv[0] == "train" and recipe and not PLACEHOLDER.search(recipe):
        assert resources.find(recipe, "recipe").exists(), f"{where}: no recipe {recipe}"
