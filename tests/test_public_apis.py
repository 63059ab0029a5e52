"""The package uses no private attribute of Ray, Optuna or any other library: any release may break them.

Read from the source (AST), not by importing: a `._name` access is allowed only on `self`/`cls` for a name
the enclosing class defines itself (an attribute it assigns or a method it has, not one it inherits from a
library's base class) and on the project's own modules; no import reaches into a private module or name
of a library.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "deptune"
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}  # namedtuple's documented API


def _private(name: str) -> bool:
    return (
        name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in PUBLIC_UNDERSCORED
    )


def _own_names(cls: ast.ClassDef) -> set[str]:
    """What a class defines itself: its methods, class attributes and `self.x = ...` assignments."""
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node in cls.body:
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for leaf in ast.walk(target):
                    if (
                        isinstance(leaf, ast.Attribute)
                        and isinstance(leaf.value, ast.Name)
                        and leaf.value.id in ("self", "cls")
                    ):
                        names.add(leaf.attr)
                    elif isinstance(leaf, ast.Name) and node in cls.body:
                        names.add(leaf.id)
    return names


def private_uses(source: str, where: str = "<source>") -> list[str]:
    """'file:line: what' for every private attribute of something that is not ours."""
    tree = ast.parse(source)
    own_modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            own_modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("deptune")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deptune"):
            own_modules |= {a.asname or a.name for a in node.names}
    found = []

    def visit(node: ast.AST, own: set[str]) -> None:
        if isinstance(node, ast.ClassDef):
            own = _own_names(node)
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if not ((base in ("self", "cls") and node.attr in own) or base in own_modules):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("deptune") and node.level == 0:
            if any(_private(p) for p in (node.module or "").split(".")) or any(_private(a.name) for a in node.names):
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found.extend(
                f"{where}:{node.lineno}: import {a.name}"
                for a in node.names
                if any(_private(p) for p in a.name.split(".")) and not a.name.startswith("deptune")
            )
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        for child in ast.iter_child_nodes(node):
            visit(child, own)

    visit(tree, set())
    return found


def test_the_check_catches_private_uses():
    bad = """
from ray.tune.search.optuna import OptunaSearch
from ray._private import services
import optuna._imports
from optuna.trial._state import TrialState

class Searcher(OptunaSearch):
    def __init__(self):
        self._mine = 1
    def suggest(self, trial_id):
        return self._ot_study, self._mine, self._helper()   # inherited private: flagged; ours: fine
    def _helper(self):
        return 0

def f(study, trial, searcher):
    return study._storage, trial._trial_id, searcher._ot_study, getattr(study, "_study_id")
"""
    found = [line.split(": ", 1)[1] for line in private_uses(bad)]
    assert found == [
        "from ray._private import ...",
        "import optuna._imports",
        "from optuna.trial._state import ...",
        "self._ot_study",
        "study._storage",
        "trial._trial_id",
        "searcher._ot_study",
        "getattr(study, '_study_id')",
    ]


def test_the_package_uses_no_private_attribute_of_a_library():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    found = [use for path in files for use in private_uses(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert found == []
