"""The code's shape: stages import only earlier ones (data -> train -> align -> merge/quantize -> engines -> eval -> rag/serve -> push),
and generation does not drag in the later stages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medtune"
ORDER = ["base", "models", "data", "train", "align", "merge", "quantize", "engines", "eval", "rag", "serve", "push", "top"]
BASE = {"io", "recipe", "records", "prompts", "logs", "sentences"}  # schemas and helpers every stage uses
TOP = {"pipeline", "cli", "quickstart", "testing"}  # wire the stages together


def stage(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or parts[0] in BASE:
        return "base"
    if parts[0] in ("models", "predict"):  # finding, loading and generating with a model: every stage does it
        return "models"
    return "top" if parts[0] in TOP else parts[0]


def imports(path: Path) -> list[tuple[str, int]]:
    """Every medtune module `path` imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medtune"):
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("medtune")]
    return found


def test_no_stage_imports_a_later_one():
    assert set(ORDER[1:-1]) - {"models"} <= {p.name for p in SRC.iterdir() if p.is_dir()}  # the stages exist
    later = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(("medtune", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        if module == "medtune":  # the package facade: medtune.load() imports generation lazily
            continue
        for name, line in imports(path):
            if ORDER.index(stage(name)) > ORDER.index(stage(module)):
                later.append(f"{path.relative_to(SRC)}:{line} imports {name}")
    assert later == []


def test_generation_imports_no_quantize_or_merge():
    code = ("import sys, medtune.predict; "
            "print(sorted(m for m in sys.modules if m.startswith(('medtune.quantize', 'medtune.merge', 'medtune.train'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_stage_map_sees_a_violation(tmp_path):
    """The check above can fail: a data module importing the serving stage is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from medtune.serve.app import create_app\n")
    assert [(stage(name), line) for name, line in imports(bad)] == [("serve", 2)]
    assert ORDER.index("serve") > ORDER.index(stage("medtune.data.bad"))
