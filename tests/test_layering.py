"""Imports flow one way: model, data and scaling know nothing of train, eval or sweep; train
knows nothing of eval; and no function-local import inside llmjax hides an import cycle."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "llmjax")


def _imported_after(statement: str) -> set[str]:
    code = (f"import sys, json\n{statement}\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('llmjax'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=120, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_model_data_scaling_import_no_train_eval_or_sweep():
    mods = _imported_after("import llmjax.model, llmjax.data, llmjax.scaling")
    bad = sorted(m for m in mods if m.split(".")[1:2] and m.split(".")[1] in
                 ("train", "eval", "sweep", "report", "config", "run"))
    assert not bad, bad


def test_no_training_module_imports_eval():
    """The probe hook is registered from above (llmjax.run); train never reaches into eval."""
    train_dir = os.path.join(PKG, "train")
    offenders = []
    for name in sorted(os.listdir(train_dir)):
        if name.endswith(".py"):
            top, local = _imports(os.path.join(train_dir, name))
            offenders += [f"{name}: {m}" for m in top | local if m.startswith("llmjax.eval")]
    assert not offenders, offenders


def _module_of(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel.removesuffix(".__init__")


def _imports(path: str) -> tuple[set[str], set[str]]:
    """(module-level llmjax imports, function-local llmjax imports) of one file."""
    tree = ast.parse(open(path).read())
    top, local = set(), set()

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        return []

    for node in tree.body:
        top.update(n for n in names(node) if n.startswith("llmjax"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                local.update(n for n in names(inner) if n.startswith("llmjax"))
    return top, local


def test_no_function_local_import_hides_a_cycle():
    files = [os.path.join(d, f) for d, _, fs in os.walk(PKG) for f in fs if f.endswith(".py")]
    modules = {_module_of(f): f for f in files}
    # A submodule's `from llmjax.pkg import sub` names its parent package: not an edge back.
    graph = {m: {n for n in _imports(f)[0] if n in modules and not m.startswith(n + ".")}
             for m, f in modules.items()}

    def reaches(src: str, dst: str) -> bool:
        seen, todo = set(), [src]
        while todo:
            m = todo.pop()
            if m == dst:
                return True
            if m in seen:
                continue
            seen.add(m)
            todo.extend(graph.get(m, ()))
        return False

    hidden = []
    for m, f in modules.items():
        for target in _imports(f)[1]:
            target = target if target in modules else target.rsplit(".", 1)[0]
            if (target in modules and target != m and not m.startswith(target + ".")
                    and not target.startswith(m + ".") and reaches(target, m)):
                hidden.append(f"{m} -> {target}")
    assert not hidden, hidden
