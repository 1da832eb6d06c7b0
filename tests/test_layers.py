"""Imports run one way: down the layers of liveanim/, never up.

Every module of liveanim/ is read with `ast` (nothing is imported) and every import in it is
checked: at any depth (lazy imports inside functions, those under TYPE_CHECKING), relative ones,
and `importlib.import_module(...)` or `__import__(...)` of a literal name (an f-string by its
literal start). A module may import its own layer and the ones below it. An import of a higher
layer fails, naming the file, the line and both layers; so does a module that no layer holds (a
new package is given its place here first).

    rank  layer     modules                                   what it holds
    0     errors    liveanim.errors, liveanim.files,          the exception types every layer raises,
                    liveanim (its __init__)                   files written whole or not at all
    1     core      liveanim.model, liveanim.motion,          the network, its checkpoints and
                    liveanim.weights                          downloads, motion arithmetic on arrays
    2     face      liveanim.face                             face tracking and the crop (its face
                                                              model is fetched through weights)
    3     contract  liveanim.contract                         what engines and export share: graph and
                                                              tensor names, batch helpers
    4     export    liveanim.export                           LIA-X -> ONNX
    5     engines   liveanim.engines                          the backends behind one by-name interface
    6     pipeline  liveanim.pipeline                         the animator, offline modes, the live loop
    7     ui        liveanim.app.ui, liveanim.app             the desktop window
    8     cli       liveanim.app.cli                          the commands (`live --preview` and the
                                                              bare command open the window)

Ranks 0-2 are the ground floor. Within a rank imports may go either way: model and weights
import each other (`LIAX.from_checkpoint` reads through weights, and weights checks a
checkpoint against the model's layout).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "liveanim"


@dataclass(frozen=True)
class Layer:
    name: str
    rank: int
    modules: tuple[str, ...]  # a module belongs to the layer of its longest prefix here


LAYERS = (
    Layer("errors", 0, ("liveanim.errors", "liveanim.files")),
    Layer("core", 1, ("liveanim.model", "liveanim.motion", "liveanim.weights")),
    Layer("face", 2, ("liveanim.face",)),
    Layer("contract", 3, ("liveanim.contract",)),
    Layer("export", 4, ("liveanim.export",)),
    Layer("engines", 5, ("liveanim.engines",)),
    Layer("pipeline", 6, ("liveanim.pipeline",)),
    Layer("ui", 7, ("liveanim.app.ui", "liveanim.app")),
    Layer("cli", 8, ("liveanim.app.cli",)),
)


def layer_of(module: str) -> Layer | None:
    """The layer of a dotted module name; the package's own __init__ is the ground."""
    if module == PACKAGE:
        return LAYERS[0]
    held = [(len(prefix), layer) for layer in LAYERS for prefix in layer.modules
            if module == prefix or module.startswith(prefix + ".")]
    return max(held, key=lambda found: found[0])[1] if held else None


def package_modules(root: Path) -> dict[str, Path]:
    """Every module of the package under `root`: dotted name -> file."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in `tree`, however it is made."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            # `from liveanim import weights` imports the module liveanim.weights
            yield from ((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
                        for alias in node.names)
        elif isinstance(node, ast.Call) and (name := _imported_by_name(node)) is not None:
            yield node.lineno, name


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a `from ... import` names; `from ..x import y` in a.b.c names a.x."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    package = parts[:len(parts) - (node.level - 1) - (not is_package)]
    return ".".join(package + ([node.module] if node.module else []))


def _imported_by_name(call: ast.Call) -> str | None:
    """The module that `importlib.import_module(...)` or `__import__(...)` names literally, if any."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        start = str(arg.values[0].value)  # f"liveanim.app.cli.{name}": a module of liveanim.app.cli
        return start.rstrip(".") if start.endswith(".") else start.rpartition(".")[0]
    return None


def upward_imports(root: Path) -> list[str]:
    """'file:line: layer (rank) imports module of layer (rank)' for every import that runs up."""
    modules = package_modules(root)
    found = []
    for module, path in modules.items():
        layer = layer_of(module)
        if layer is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target in sorted(set(imports(tree, module, path.name == "__init__.py", set(modules)))):
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            above = layer_of(target)
            if above is not None and above.rank > layer.rank:
                found.append(f"{path.relative_to(root).as_posix()}:{line}: {layer.name} (rank {layer.rank}) "
                             f"imports {target} of {above.name} (rank {above.rank})")
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = [path.relative_to(REPO).as_posix() for module, path in package_modules(REPO).items()
                if layer_of(module) is None]
    assert not unplaced, f"give these a layer in tests/test_layers.py: {unplaced}"


def test_no_layer_imports_a_higher_one() -> None:
    found = upward_imports(REPO)
    assert not found, "imports that run up the layers:\n" + "\n".join(found)


def test_lazy_relative_and_by_name_imports_are_caught(tmp_path: Path) -> None:
    """The checker itself: the imports a quick read misses are named with their line and layers."""
    files = {
        "__init__.py": "",
        "errors.py": "",
        "engines/__init__.py": "",
        "engines/bench.py": "",
        "pipeline/__init__.py": "",
        "pipeline/live.py": "",
        "app/__init__.py": "",
        "app/ui/__init__.py": "",
        "app/ui/main_window.py": "",
        "face/__init__.py": "from liveanim import errors\n",
        "face/crop.py": ("import importlib\n"
                         "from liveanim.errors import Fix\n"
                         "def show():\n"
                         "    from liveanim.app.ui import main_window\n"
                         "engine = importlib.import_module(f'liveanim.engines.{\"bench\"}')\n"
                         "from ..pipeline import live\n"
                         "from liveanim import pipeline\n"),
    }
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert upward_imports(tmp_path) == [
        "liveanim/face/crop.py:4: face (rank 2) imports liveanim.app.ui.main_window of ui (rank 7)",
        "liveanim/face/crop.py:5: face (rank 2) imports liveanim.engines of engines (rank 5)",
        "liveanim/face/crop.py:6: face (rank 2) imports liveanim.pipeline.live of pipeline (rank 6)",
        "liveanim/face/crop.py:7: face (rank 2) imports liveanim.pipeline of pipeline (rank 6)",
    ]
