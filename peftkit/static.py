"""Values read from peftkit's own source without importing it.

The command line shows `TrainConfig`'s defaults and the strategy registry in its help and in
``peftkit ls``; the modules that define them import torch. Reading their literal values from
the source (``ast``) keeps ``peftkit --help`` light while they stay defined in one place.
tests/test_cli_polish.py checks these readings against the imported modules.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
_MISSING = object()


@cache
def _tree(module: str) -> ast.Module:
    """The parsed source of ``peftkit.<module>`` (a dotted name; a package reads its __init__)."""
    path = PACKAGE.joinpath(*module.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(file.read_text(), filename=str(file))


def _literals(body: list[ast.stmt], names: dict[str, Any] | None = None) -> dict[str, Any]:
    """name -> value for each ``name = <literal>`` / ``name: T = <literal>`` in ``body``; a value that is
    a bare name is looked up in ``names`` (the module's constants, for a class body)."""
    out: dict[str, Any] = {}
    for node in body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            continue
        if isinstance(value, ast.Name) and names and value.id in names:
            out[name] = names[value.id]
            continue
        try:
            out[name] = ast.literal_eval(value)
        except ValueError:
            out[name] = _MISSING  # not a literal (a call, a name): unknown here
    return {k: v for k, v in out.items() if v is not _MISSING}


def constants(module: str) -> dict[str, Any]:
    """The module-level literal constants of ``peftkit.<module>``."""
    return _literals(_tree(module).body)


def class_attributes(module: str, class_name: str) -> dict[str, Any]:
    """The literal class attributes (dataclass field defaults) of ``class_name`` in ``peftkit.<module>``."""
    for node in _tree(module).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return _literals(node.body, constants(module))
    raise LookupError(f"peftkit.{module} defines no class {class_name}")


@cache
def train_defaults() -> dict[str, Any]:
    """`peftkit.training.config.TrainConfig`'s field defaults."""
    return class_attributes("training.config", "TrainConfig")


@cache
def strategy_catalog() -> dict[str, dict[str, Any]]:
    """strategy name -> {"summary", "default_lr", "plan_rank"}, in the order of `peftkit.strategies.STRATEGIES`
    (the classes listed in its ``CLASSES`` tuple, each known by its ``name`` attribute)."""
    base = class_attributes("strategies.base", "Strategy")
    found = {}
    for file in sorted((PACKAGE / "strategies").glob("*.py")):
        for node in _tree(f"strategies.{file.stem}").body:
            if isinstance(node, ast.ClassDef):
                attrs = _literals(node.body)
                if isinstance(attrs.get("name"), str):
                    found[node.name] = {"name": attrs["name"], "summary": attrs.get("summary", base["summary"]),
                                        "default_lr": attrs.get("default_lr", base["default_lr"]),
                                        "plan_rank": attrs.get("plan_rank", base["plan_rank"])}
    entries = [found[name] for name in _class_list("strategies", "CLASSES")]
    return {e.pop("name"): e for e in entries}


def planner_order() -> tuple[str, ...]:
    """`peftkit.strategies.planner_order` read from the source."""
    catalog = strategy_catalog()
    return tuple(sorted(catalog, key=lambda name: catalog[name]["plan_rank"]))


def _class_list(module: str, constant: str) -> list[str]:
    """The names in a module-level tuple of names, ``constant = (A, B, ...)`` (annotated or not)."""
    for node in _tree(module).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == constant and isinstance(node.value, ast.Tuple):
            return [element.id for element in node.value.elts if isinstance(element, ast.Name)]
    raise LookupError(f"peftkit.{module} defines no tuple {constant} of names")


@cache
def task_catalog() -> dict[str, dict[str, Any]]:
    """task name -> its literal class attributes (inherited ones included: ``columns``,
    ``optional_columns``, ``options``, ``summary`` ...), for the Task classes in ``peftkit/tasks/*.py``,
    in the order `peftkit.tasks.TASKS` registers them (its ``FIRST`` modules, then the others)."""
    first = constants("tasks")["FIRST"]
    files = sorted((PACKAGE / "tasks").glob("*.py"), key=lambda f: (f.stem not in first, first.index(f.stem) if f.stem in first else 0, f.stem))
    classes: dict[str, tuple[ast.ClassDef, dict[str, Any]]] = {}
    for file in files:
        if file.stem != "__init__":
            for node in _tree(f"tasks.{file.stem}").body:
                if isinstance(node, ast.ClassDef):
                    classes[node.name] = (node, _literals(node.body))

    def attributes(name: str) -> dict[str, Any]:
        node, own = classes[name]
        inherited: dict[str, Any] = {}
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                inherited.update(attributes(base.id))
        return {**inherited, **own}

    return {attrs["name"]: attrs for cls, (_, own) in classes.items() if own.get("name") for attrs in [attributes(cls)]}
