"""The import rules docs/architecture.md states, checked on the source (ast, nothing imported).

Every ``import`` counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (they never run). A failure names the file, the line and the rule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("rlpost", "algorithms", "rewards", "envs")
DOC = ROOT / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import that can run."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if nested and top_level_only:
                continue
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.lineno, child.module))
                # ``from pkg import mod`` imports pkg.mod when mod is a submodule
                out.extend(
                    (child.lineno, f"{child.module}.{a.name}")
                    for a in child.names
                    if (ROOT / child.module.replace(".", "/") / f"{a.name}.py").exists()
                    or (ROOT / child.module.replace(".", "/") / a.name / "__init__.py").exists()
                )
            visit(child, depth + 1)

    visit(tree, 0)
    return out


def _sources() -> dict[str, tuple[Path, ast.AST]]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mods[_module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    return mods


SOURCES = _sources()


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# (rule, modules bound, modules of those exempt, imports forbidden, imports still allowed)
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    (
        "The objective layer is pure torch",
        ("rlpost.objective",),
        (),
        ("rlpost", "algorithms", "rewards", "envs"),
        ("rlpost.objective", "rlpost.registry", "rlpost.groups"),
    ),
    (
        "The runtime knows actors, never algorithms",
        ("rlpost.runtime",),
        (),
        ("algorithms", "rlpost.commands", "rlpost.cli", "rlpost.trainer"),
        (),
    ),
    (
        "The core never imports a user command",
        ("rlpost",),
        ("rlpost.commands", "rlpost.cli"),
        ("rlpost.commands", "rlpost.cli"),
        (),
    ),
    (
        "Outside algorithms/, only algorithms.base is imported",
        ("rlpost", "rewards", "envs"),
        (),
        ("algorithms",),
        ("algorithms.base",),
    ),
    (
        "Plug-ins build on the core",
        ("algorithms", "rewards", "envs"),
        (),
        ("rlpost.runtime", "rlpost.trainer", "rlpost.commands", "rlpost.cli"),
        (),
    ),
    (
        "Rewards and environments know no algorithm",
        ("rewards", "envs"),
        (),
        ("algorithms",),
        (),
    ),
]


def _violations(rule: tuple) -> list[str]:
    _, binds, exempt, forbidden, allowed = rule
    bad = []
    for mod, (path, tree) in SOURCES.items():
        if not _under(mod, *binds) or (exempt and _under(mod, *exempt)):
            continue
        for line, imp in _imports(tree):
            if imp == "algorithms" and "algorithms.base" in allowed:
                continue  # importing the package registers the built-ins; it names none
            if _under(imp, *forbidden) and not _under(imp, *allowed):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imp}")
    return sorted(set(bad))


@pytest.mark.parametrize("rule", RULES, ids=[r[0] for r in RULES])
def test_import_rule_holds(rule):
    bad = _violations(rule)
    assert not bad, f"{rule[0]} (docs/architecture.md):\n" + "\n".join(bad)


def test_models_are_loaded_only_through_rlpost_models_hf():
    loader = re.compile(r"AutoModel\w*\.from_pretrained|AutoTokenizer\.from_pretrained")
    bad = []
    for mod, (path, _) in SOURCES.items():
        if _under(mod, "rlpost.models") or _under(mod, "rlpost.commands.bench"):
            continue  # the loader itself, the tiny-model builder, TRL's side of the benchmark
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if loader.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "load models through rlpost.models.hf:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    """Module-level imports only: a cycle there makes the import order matter. Importing
    ``a.b.c`` runs ``a`` and ``a.b`` first, so those count as imported too (except a module's own
    parent packages, which are already being imported when it runs)."""
    graph: dict[str, set[str]] = {}
    for mod, (_, tree) in SOURCES.items():
        deps: set[str] = set()
        for _, imp in _imports(tree, top_level_only=True):
            parts = imp.split(".")
            for i in range(1, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in SOURCES and dep != mod and not mod.startswith(dep + "."):
                    deps.add(dep)
        graph[mod] = deps
    seen: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in seen and (cycle := walk(nxt)):
                return cycle
        seen[node] = 2
        stack.pop()
        return None

    cycles = [cycle for mod in sorted(graph) if mod not in seen and (cycle := walk(mod))]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the graph was really built


def test_core_and_runtime_name_no_algorithm():
    """Algorithm names appear in algorithms/ (and recipes), not in the engine's code."""
    names = {
        m.group(1)
        for path in (ROOT / "algorithms").glob("*.py")
        for m in re.finditer(r'^\s+name\s*=\s*"(\w+)"', path.read_text(), re.M)
    }
    assert {"grpo", "ppo", "dpo"} <= names
    alternatives = "|".join(sorted(names))
    pattern = re.compile(r"[\"'](" + alternatives + r")[\"']")
    bad = []
    for mod, (path, _) in SOURCES.items():
        if not _under(mod, "rlpost") or _under(mod, "rlpost.commands", "rlpost.cli"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and 'name: str = _f("grpo"' not in line:  # the default
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_architecture_doc_states_the_rules_checked_here():
    text = DOC.read_text()
    for rule, *_ in RULES:
        assert rule in text, f"docs/architecture.md should state the rule: {rule}"
