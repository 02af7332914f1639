"""Who may import whom: the library never reaches up into the command-line layer, a command does not
borrow from another command, and one module draws."""

from __future__ import annotations

import ast
from pathlib import Path

import bifit

PACKAGE = Path(bifit.__file__).parent


def _modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name, parsed."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = ast.parse(path.read_text(), filename=str(path))
    return modules


def _imports(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    """Absolute names of the modules (or names) `tree` imports, wherever the import stands (also inside
    functions, where the commands keep their heavy imports)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _all_imports() -> dict[str, set[str]]:
    modules = _modules()
    packages = {p for p in modules if (PACKAGE.parent / p.replace(".", "/") / "__init__.py").is_file()}
    return {name: _imports(name, tree, name in packages) for name, tree in modules.items()}


def test_the_scan_sees_relative_and_absolute_imports() -> None:
    imports = _all_imports()
    assert "bifit.commands.arguments.add_command" in imports["bifit.commands.segment"]  # from .arguments import
    assert "bifit.inference.core" in imports["bifit.inference.protocols"]  # from bifit.inference.core import
    assert "bifit.__version__" in imports["bifit.cli"]  # from . import __version__
    assert "bifit.data.targets.build_target" in imports["bifit.data"]  # a package's own relative import


def test_library_modules_never_import_the_commands() -> None:
    offenders = {
        name: sorted(i for i in found if i == "bifit.commands" or i.startswith("bifit.commands."))
        for name, found in _all_imports().items()
        if name != "bifit.cli" and not name.startswith("bifit.commands")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_a_command_imports_no_other_command() -> None:
    shared = "bifit.commands.arguments"
    offenders = {}
    for name, found in _all_imports().items():
        if not name.startswith("bifit.commands."):
            continue
        others = {i for i in found if i.startswith("bifit.commands.") and not i.startswith(shared)
                  and not i.startswith(name)}
        if others:
            offenders[name] = sorted(others)
    assert offenders == {}


def test_the_data_layer_does_not_import_inference_or_training() -> None:
    """Datasets and transforms sit below the predictors and the training loop, which build on them."""
    offenders = {
        name: sorted(i for i in found if i.startswith(("bifit.inference", "bifit.training")))
        for name, found in _all_imports().items()
        if name.startswith("bifit.data")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_only_the_visualisation_module_draws() -> None:
    drawing = {name for name, found in _all_imports().items() if {"PIL.ImageDraw", "PIL.ImageFont"} & found}
    assert drawing == {"bifit.inference.visualize"}
