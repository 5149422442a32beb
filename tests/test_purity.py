"""The layers hold: the pure core and the contracts import only what they may.

Two checks. Statically, every import statement in ``cluster/contract`` and ``learner/algo``
(function-level ones included) names only the standard library, torch, pyarrow, numpy, yaml
and, for the weight contract's digests and bucket format, xxhash and safetensors; contracts
import no other duet package and the core only itself. At run time, those modules (and the
reward functions) import in a fresh interpreter where ray, deepspeed and vllm cannot load.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIRD_PARTY = {"torch", "pyarrow", "numpy", "yaml"}
WEIGHT_FORMAT = {"xxhash", "safetensors"}  # the bucket digest and serialisation, no deps
HUB = {"huggingface_hub"}  # hub ids resolved through its cache (cluster/contract/hub.py)
FORBIDDEN = {"actors", "learner", "ray", "deepspeed", "vllm"}
LAYERS = {  # folder -> (the duet package it may import from, extra third-party names)
    "cluster/contract": ("cluster.contract", THIRD_PARTY | WEIGHT_FORMAT | HUB),
    "learner/algo": ("learner.algo", THIRD_PARTY),
}


def imports_of(path: Path):
    """(line, dotted module) for every import in a source file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def layer_violations(folder: str):
    own, allowed = LAYERS[folder]
    problems = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for line, module in imports_of(path):
            top = module.split(".")[0]
            ok = (top in sys.stdlib_module_names or top in allowed or top == "__future__"
                  or module == own or module.startswith(own + "."))
            if not ok or (folder == "cluster/contract" and top in FORBIDDEN):
                problems.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return problems


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_layer_imports_only_what_it_may(folder):
    assert layer_violations(folder) == []


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    bad = tmp_path / "cluster" / "contract"
    bad.mkdir(parents=True)
    (bad / "leak.py").write_text("def f():\n    from actors.rollout import RolloutWorker\n")
    (bad / "heavy.py").write_text("import ray\nfrom cluster.loop import driver\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert layer_violations("cluster/contract") == [
        "cluster/contract/heavy.py:1 imports ray",
        "cluster/contract/heavy.py:2 imports cluster.loop",
        "cluster/contract/leak.py:2 imports actors.rollout",
    ]


PROBE = """
import importlib, pkgutil, sys
sys.modules["ray"] = sys.modules["deepspeed"] = sys.modules["vllm"] = None
import cluster.contract, learner.algo, actors.reward
for pkg in (cluster.contract, learner.algo):
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
heavy = [m for m in ("ray", "deepspeed", "vllm") if sys.modules.get(m) is not None]
assert not heavy, heavy
print("pure")
"""


def test_core_imports_without_heavy_packages():
    # A fresh interpreter: this test process may already hold ray or vllm from other tests.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pure"
