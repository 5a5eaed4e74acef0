"""The architecture holds: dependencies point one way (study -> lm -> core), the core imports only
torch and the standard library, and the README's layout table names every module."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ercref"
CORE = sorted(p for p in PKG.glob("*.py") if p.name != "train.py")   # train.py is the CLI entry point
# (numpy is not listed: torch itself imports it)
THIRD_PARTY_HEAVY = ("matplotlib", "seaborn", "pandas", "transformers", "datasets", "ipywidgets", "tyro")


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
    return out


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_only_torch_and_the_standard_library(path):
    allowed = set(sys.stdlib_module_names) | {"torch", "ercref", "__future__"}
    bad = {m for m in _imports(path) if m.split(".")[0] not in allowed
           or (m.startswith("ercref.") and m.split(".")[1] in ("lm", "study", "integrations", "train"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_importing_the_core_loads_no_heavy_third_party_module():
    code = ("import sys, ercref, ercref.fused_head, ercref.metrics, ercref.paths; "
            f"print(sorted(m for m in {THIRD_PARTY_HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


@pytest.mark.parametrize("path", sorted((PKG / "lm").glob("*.py")), ids=lambda p: p.name)
def test_engine_never_imports_the_study_layer(path):
    assert not {m for m in _imports(path) if m.startswith("ercref.study")}, path.name


def test_readme_layout_table_names_every_module():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    table = table[: table.find("\n## ", 5)] if "\n## " in table[5:] else table
    missing = [str(p.relative_to(ROOT)) for p in sorted(PKG.rglob("*.py"))
               if p.name != "__init__.py" and p.name not in table and str(p.relative_to(ROOT)) not in table]
    assert not missing, f"README layout table does not mention {missing}"


READ_PATH = ("ercref/train.py", "ercref/lm/config.py", "ercref/lm/trainer.py", "ercref/lm/rollout.py",
             "ercref/lm/batching.py")


def test_the_engine_read_path_stays_short():
    """`python -m ercref.train` reads as one path: CLI -> config -> trainer -> rollout -> batching
    (then the core). Its non-blank lines stay within what a learner reads in one sitting."""
    lines = {p: sum(1 for line in (ROOT / p).read_text().splitlines() if line.strip()) for p in READ_PATH}
    assert sum(lines.values()) <= 1200, lines


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _all_imports(path: Path) -> set[str]:
    """Every ercref module ``path`` imports, at module level or inside a function (absolute names)."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base_pkg = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(base_pkg + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("ercref")}


def test_no_import_cycle_in_the_package():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {i for i in _all_imports(p) if i in files and i != m and not m.startswith(i + ".")}
             for m, p in files.items()}
    graph = {m: {i for i in deps if not (files[i].name == "__init__.py")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle.extend(stack[stack.index(d):] + [m, d] if d in stack else [m, d])
                return True
            if d not in state and visit(d, stack + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if m not in state and visit(m, []):
            break
    assert not cycle, " -> ".join(cycle)
