"""The layering rules of the repository, checked on the source (no imports executed).

data_prep -> Parquet -> pipeline (reader, trainer) -> models; launch/ only wires;
experiments/ drives the trainer. `models/` is the lowest library layer: it imports nothing
from pipeline/, data_prep/, launch/ or experiments/, and no module imports itself back
through a cycle.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "pipeline", "data_prep", "launch", "experiments")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every tracked .py file of the library packages."""
    files = subprocess.run(
        ["git", "ls-files", "--", *[f"{p}/*.py" for p in PACKAGES]],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    modules = {}
    for name in files:
        parts = Path(name).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = ROOT / name
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (at any depth in the file, TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in modules:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_models_import_nothing_from_the_layers_above(graph: dict[str, set[str]]) -> None:
    bad = {
        (module, target)
        for module, targets in graph.items()
        if module.split(".")[0] == "models"
        for target in targets
        if target.split(".")[0] != "models"
    }
    assert not bad, f"models/ imports from above: {sorted(bad)}"


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    """Depth-first search for a back edge; the message names the cycle."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checks_see_the_real_graph(graph: dict[str, set[str]]) -> None:
    """Guards the two tests above against an empty or wrong graph."""
    assert "models.features" in graph["models.ctr"]
    assert "models.zoo" in graph["pipeline.train"] or any(
        "models.zoo" in graph[m] for m in graph if m.startswith("pipeline.")
    )


def test_serving_and_interest_arches_need_torch_only() -> None:
    """Serving hosts and the GPU check have torch but no torchrec or fbgemm: the scorer,
    the bucketizer and every interest arch import without them."""
    import sys

    light = ["models.features", "models.scorer", "models.buckets", "models.dta", "models.interest"]
    light += [f"models.{name}" for name in ("ta", "dmf", "ta_early", "ta_late", "sasrec")]
    light += [f"models.{name}" for name in ("din", "bfs_mf", "simtier", "make", "dnn")]
    light += ["pipeline.bench_serving"]  # what the GPU check runs
    code = (
        f"import sys\nfor m in {light!r}: __import__(m)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchrec', 'fbgemm_gpu'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
