"""The shape of the code a reader relies on: config is the floor (it imports nothing above it),
validating and resolving a config loads no model or SDK, and no two modules import each other."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ttsf_core", "ttsf", "flows", "tasks")
HEAVY = ("torch", "diffusers", "transformers", "google.genai", "openai", "prefect", "pandas")
# What ttsf_core.config may import of ttsf_core: its own split files and the model defaults table.
CONFIG_FLOOR = {"ttsf_core", "ttsf_core.config", "ttsf_core.config_base", "ttsf_core.config_errors",
                "ttsf_core.config_files", "ttsf_core.config_prompts", "ttsf_core.model_defaults"}


def _fresh(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def test_every_module_imports_in_a_fresh_interpreter():
    names = [name for name in _modules() if name != "ttsf.__main__"]
    loaded = json.loads(_fresh("import importlib, json\n"
                               f"names = {names!r}\n"
                               "[importlib.import_module(name) for name in names]\n"
                               "print(json.dumps(len(names)))"))
    assert loaded == len(names) > 60


def test_config_imports_nothing_above_it():
    found = json.loads(_fresh("import json, sys\nimport ttsf_core.config\n"
                              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                              f"{PACKAGES!r})))"))
    assert set(found) <= CONFIG_FLOOR, sorted(set(found) - CONFIG_FLOOR)


def test_validating_and_resolving_configs_loads_no_model_library_or_sdk(tiny_flux_dir):
    configs = [{}, {"pretrained_model_name_or_path": "tiny-flux", "verifier_args": {"name": "imagestats"}},
               {"verifier_args": {"name": "openai"}}, {"verifier_args": {"name": "qwen"}},
               {"verifier_args": {"name": "clip,image_reward,laion_aesthetic,pickscore"}},
               {"search_args": {"search_method": "zero-order", "draft_steps": 3}}]
    code = ("import json, sys\nfrom ttsf_core.config import build_config\nfrom ttsf_core.resolve import resolve\n"
            f"hashes = [resolve(build_config(data)).identity_hash for data in {configs!r}]\n"
            f"heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {HEAVY!r}))\n"
            "print(json.dumps([len(set(hashes)), heavy]))")
    distinct, heavy = json.loads(_fresh(code))
    assert heavy == [] and distinct == len(configs)


def _imports_at_load(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `name` imports when it is loaded: module-level statements only (an import
    inside a function runs when called, which is how an upper layer is reached lazily on purpose)."""
    tree, found = ast.parse(path.read_text(), str(path)), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _load_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in known and module != name}


def _load_time_nodes(body: list[ast.stmt]):
    """Every node run while the module loads: not function bodies, not `if TYPE_CHECKING:` blocks."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _load_time_nodes(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _load_time_nodes(getattr(node, field, []))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_two_modules_import_each_other_at_load():
    modules = _modules()
    graph = {name: _imports_at_load(path, name, set(modules)) for name, path in modules.items()}
    # A package's __init__ re-exporting its children is not an arrow back: children never import it.
    graph = {name: {target for target in targets if not (target.startswith(name + "."))} for name, targets in graph.items()}
    assert sum(map(len, graph.values())) > 100  # the parser sees the imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def _imports_anywhere(path: Path) -> set[str]:
    """Every module `path` imports, at load or inside a function (a lazy import is still an arrow)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found |= {node.module or ""} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


# Each layer of ttsf_core and what it must never import: the arrows point down (README, Layout).
# Below resolving, a run arrives resolved: nothing there calls ttsf_core.resolve (its data, ResolvedRun,
# lives in ttsf_core.resolved).
LAYERS = {"ttsf_core.storage": ("ttsf_core.engine", "ttsf_core.usecases", "ttsf_core.resolve"),
          "ttsf_core.engine": ("ttsf_core.usecases", "ttsf_core.resolve"),
          "ttsf_core.search": ("ttsf_core.engine", "ttsf_core.usecases", "ttsf_core.resolve"),
          "ttsf_core.budget": ("ttsf_core.resolve",), "ttsf_core.allocation": ("ttsf_core.resolve",),
          "ttsf_core": ("prefect", "flows", "tasks", "ttsf")}


def test_each_layer_imports_nothing_above_it():
    found = []
    for name, path in _modules().items():
        for layer, above in LAYERS.items():
            if name == layer or name.startswith(layer + "."):
                found += [f"{name} imports {target}" for target in sorted(_imports_anywhere(path))
                          if any(target == up or target.startswith(up + ".") for up in above)]
    assert len([name for name in _modules() if name.startswith("ttsf_core.engine.")]) >= 6
    assert found == []


def test_the_layers_below_resolving_take_only_a_resolved_run(tiny_flux_dir, tmp_path):
    from ttsf_core.config import build_config
    from ttsf_core.engine.executors import ThreadExecutor
    from ttsf_core.engine.search_engine import SearchEngine
    from ttsf_core.resolve import resolve
    from ttsf_core.search import build_strategy
    from ttsf_core.storage.records import RunLayout
    from ttsf_core.storage.store import Store

    config = build_config({"pretrained_model_name_or_path": "tiny-flux", "output_dir": str(tmp_path),
                           "verifier_args": {"name": "imagestats"}})
    makers = {"Store": Store, "RunLayout": RunLayout, "build_strategy": build_strategy,
              "SearchEngine": lambda run: SearchEngine(run, None, grade_chunk=1),
              "ThreadExecutor": lambda run: ThreadExecutor(run, None, None)}
    for name, make in makers.items():  # handed a RunConfig, each says what it wants instead
        with pytest.raises(TypeError, match=rf"^{name}\(run\): received a RunConfig, allowed: a ResolvedRun"):
            make(config)
    run = resolve(config)
    assert RunLayout(run).run_dir.name == run.identity_hash and build_strategy(run).name == "random"
    assert Store(run).images_dir.is_relative_to(tmp_path)
