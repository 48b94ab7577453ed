"""The layering the code keeps, checked on every import statement of the repository (read with ``ast`` by
tools/import_graph.py; ``python tools/import_graph.py`` prints the graph):

    lia_model (the pure core) <- lia_model[io] (profiles, inputs) <- {calibrate, runtime, studies} <- [cli]
                                                                    <- tests, tools, peers

An import may only point down or sideways (calibrate, runtime and studies may use each other); hwprofiles/ is
data that nothing imports; the core imports no torch and no module that reads files; and ``lia plan`` runs
without importing torch.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
graph = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = graph  # dataclasses look their module up while the class is built
_spec.loader.exec_module(graph)

RANK = {
    "lia_model": 0,
    "lia_model[io]": 1,
    "calibrate": 2,
    "runtime": 2,
    "studies": 2,
    "cli": 3,
    "tests": 4,
    "tools": 4,
    "peers": 4,
}
# Third-party and standard modules the pure core must not import: torch, and whatever reads or writes files or
# presents (the loaders and the CLI do that).
CORE_FORBIDDEN = {
    "torch",
    "pathlib",
    "io",
    "shutil",
    "tempfile",
    "glob",
    "csv",
    "pickle",
    "yaml",
    "subprocess",
    "socket",
    "urllib",
    "http",
    "pandas",
    "matplotlib",
    "typer",
    "rich",
    "safetensors",
    "transformers",
    "tokenizers",
}
# Exceptions, each with its reason: (module, imported) -> why.
CORE_ALLOWED = {("lia_model.optimizer.ilp", "os"): "silences HiGHS's C-level stdout (os.dup2 on fd 1); reads no file"}
CORE_OPEN_ALLOWED = {"lia_model.optimizer.ilp": "opens os.devnull to silence HiGHS"}


def _rank(layer: str) -> int:
    return RANK["cli"] if layer.endswith("[cli]") else RANK[layer]


def violations(imports: dict[str, list[graph.Edge]]) -> list[str]:
    """Every import that breaks a rule of the module docstring, as 'module:line -> target (why)'."""
    out = []
    for module, edges in imports.items():
        src = graph.layer(module)
        for e in edges:
            top = e.target.split(".")[0]
            where = f"{module}:{e.line} -> {e.target}"
            if top == "hwprofiles":
                out.append(f"{where} (hwprofiles/ is data: load it with lia_model.profiles)")
            elif top in graph.FIRST_PARTY:
                dst = graph.layer(e.target)
                if _rank(dst) > _rank(src):
                    out.append(f"{where} ({src} may not import {dst}, a layer above it)")
            elif src == "lia_model" and top in CORE_FORBIDDEN:
                out.append(f"{where} (the pure core imports no {top})")
            elif src == "lia_model" and top == "os" and (module, top) not in CORE_ALLOWED:
                out.append(f"{where} (the pure core does no I/O)")
    return out


def test_every_import_points_down_the_layers():
    found = violations(graph.module_imports())
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_the_core_opens_no_file():
    for path in graph.python_files():
        module = graph.module_name(path)
        if graph.layer(module) != "lia_model" or module in CORE_OPEN_ALLOWED:
            continue
        calls = [
            n.lineno
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"
        ]
        assert not calls, f"{module} calls open() at lines {calls}: file reading belongs in lia_model.profiles/inputs"


def test_hwprofiles_holds_data_only():
    files = sorted((ROOT / "hwprofiles").rglob("*.py"))
    assert [f.relative_to(ROOT).as_posix() for f in files] == ["hwprofiles/__init__.py"]
    body = ast.parse(files[0].read_text()).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), (
        "hwprofiles/__init__.py is a docstring only"
    )


def test_the_checker_catches_planted_violations(tmp_path):
    """The rules above on a small tree with one import of each forbidden kind (and allowed ones beside)."""
    files = {
        "lia_model/__init__.py": "",
        "lia_model/costterms.py": "import numpy\nfrom lia_model import plan\n"
        "def f():\n    import torch\n    from runtime import kernels\n",
        "lia_model/plan.py": "from pathlib import Path\nfrom hwprofiles import x\n",
        "lia_model/cli/report.py": "import rich\n",
        "lia_model/cli/common.py": "import typer\n",
        "lia_model/profiles.py": "import yaml\nfrom lia_model.plan import Plan\n",
        "runtime/__init__.py": "",
        "runtime/kernels.py": "import torch\nfrom lia_model import profiles\nfrom calibrate import host\n",
        "runtime/run.py": "from lia_model.cli.report import plan_json\n",
        "calibrate/__init__.py": "",
        "calibrate/host.py": "import importlib\ndef g():\n    importlib.import_module('lia_model.cli.common')\n",
        "hwprofiles/__init__.py": '"""data"""\n',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = sorted(violations(graph.module_imports(tmp_path)))
    assert found == sorted(
        [
            "calibrate.host:3 -> lia_model.cli.common (calibrate may not import lia_model[cli], a layer above it)",
            "lia_model.costterms:4 -> torch (the pure core imports no torch)",
            "lia_model.costterms:5 -> runtime.kernels (lia_model may not import runtime, a layer above it)",
            "lia_model.plan:1 -> pathlib (the pure core imports no pathlib)",
            "lia_model.plan:2 -> hwprofiles (hwprofiles/ is data: load it with lia_model.profiles)",
            "runtime.run:1 -> lia_model.cli.report (runtime may not import lia_model[cli], a layer above it)",
        ]
    )


def test_lia_plan_never_imports_torch():
    """The whole `lia plan` path in a fresh interpreter (the CLI registers every package's commands on import)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lia_model.cli import app\n"
        "result = CliRunner().invoke(app, ['plan', '--json'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["lia_model", "lia_model.profiles", "lia_model.optimizer"])
def test_the_core_imports_without_torch(module):
    code = f"import sys, {module}\nprint('torch' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# The runtime's execution stack, bottom up (issue 14's split of the executor): a module may import runtime modules
# of a lower rank only (imports under ``if TYPE_CHECKING`` are annotations, not dependencies).
RUNTIME_RANK = {
    "cudart": 0,  # ctypes CUDA calls
    "rope": 0,
    "graph": 0,  # the plan as passes, chunks and layer policies (torch-free)
    "backend": 1,  # devices, streams, events, copies
    "kernels": 1,  # the sublayers' math
    "hostmem": 2,  # host arenas
    "records": 2,  # instrumentation
    "pinned_pool": 2,  # page-locked host buffers of one hand-off
    "cpu_setup": 3,
    "weights": 3,  # the weight layout
    "streamer": 4,  # the weight feeder thread
    "cpu_worker": 4,  # the thread that runs CPU sublayers (LIA_CPU_WORKER=thread)
    "layerpass": 5,  # one layer of one pass, one chunk
    "mover": 5,  # activation copies
    "kvstore": 6,  # the KV cache
    "weight_stream": 6,  # GPU weight buffers and the prefetch schedule
    "dispatch": 7,  # the six-way sublayer dispatch
    "scheduler": 8,  # which chunk's sublayer of a layer runs next
    "executor": 9,  # builds and wires them, walks the passes
}


def _runtime_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "runtime" / f"{module}.py").read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "runtime":
            parts = node.module.split(".")
            found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("runtime.")}
    return found


@pytest.mark.parametrize("module", sorted(RUNTIME_RANK))
def test_the_runtime_execution_stack_imports_only_downwards(module: str) -> None:
    below = {m for m, rank in RUNTIME_RANK.items() if rank < RUNTIME_RANK[module]}
    wrong = sorted(_runtime_imports(module) - below)
    assert not wrong, f"runtime/{module}.py imports {wrong}, which are not below it in RUNTIME_RANK"


def test_the_runtime_stack_rule_catches_an_upward_import(tmp_path, monkeypatch) -> None:
    """The rule above is not vacuous: a backend that imported the executor would fail it."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "backend.py").write_text(
        "from typing import TYPE_CHECKING\nfrom runtime import cudart\nfrom runtime.executor import Executor\n"
        "if TYPE_CHECKING:\n    from runtime.kvstore import LayerKV\n"
    )
    assert _runtime_imports("backend") == {"cudart", "executor"}
    with pytest.raises(AssertionError, match="executor"):
        test_the_runtime_execution_stack_imports_only_downwards("backend")
