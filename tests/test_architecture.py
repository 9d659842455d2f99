"""The house rules that the import graph can show: no import circle anywhere (imports inside
functions count), ``polylens`` and ``sae`` never import each other, neither imports ``cli``, and the
command modules reach the packages only through calls (they import no other command)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("polylens", "sae", "cli")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports, at any depth of its code."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    graph = _graph()
    assert "cli.experiments.compare_toys" in graph["cli.commands.compare"]  # lazy imports are read too
    assert "polylens.capture" in graph["cli.experiments.cache"]
    assert _cycles(graph) == []


def test_polylens_and_sae_never_import_each_other_nor_cli():
    for name, targets in _graph().items():
        top = name.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if top in ("polylens", "sae"):
                assert other == top, f"{name} imports {target}: {top} may import only itself"


def test_commands_import_no_other_command():
    for name, targets in _graph().items():
        if name.startswith("cli.commands."):
            others = {t for t in targets if t.startswith("cli.commands.") and t != "cli.commands"}
            assert not others, f"{name} imports the command modules {sorted(others)}; share code through cli/ helpers"


def test_the_command_line_starts_without_torch():
    code = "import sys, cli.main; cli.main.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_resolve_and_import_polylens_needs_no_torch():
    code = (
        "import sys, polylens, sae; assert 'torch' not in sys.modules, 'import polylens imported torch'; "
        "[getattr(polylens, n) for n in polylens.__all__]; [getattr(sae, n) for n in sae.__all__]; "
        "from sklearn.base import clone; "
        "[clone(c()) for c in (polylens.ActivationPCA, polylens.GradientPCA, polylens.LIB, polylens.HDBSCAN, "
        "polylens.KMedoids, polylens.Agglomerative)]; print(len(polylens.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 20
