"""Code versions that cannot be forgotten, and no import cycles.

Every asset's output is keyed by its `code_version` (given to `@asset`): change the code that
makes an output without bumping it and every store serves the old output as a cache hit, and
training resumes old checkpoints. `code_versions.lock.json` beside this file keeps, per asset,
the code version and a fingerprint of the source it depends on: the syntax trees (no comments,
formatting or docstrings) of what the asset uses: in the Dagster layer (facepipe.assets) the
functions, classes and constants it names, followed name by name; elsewhere every facepipe module
it reaches and everything those import — except the modules below, which only move bytes around
and cannot change an output. The test fails, naming the asset and its modules, when that source changed and the
version did not. After bumping, refresh the lock (or, for a change that cannot alter that
asset's output — a function added to a module it also uses — refresh it without a bump: the
lock's diff in the commit is the record of that decision):

    FACEPIPE_UPDATE_CODE_LOCK=1 .venv/bin/python -m pytest facepipe_tests/test_code_versions.py

(The fingerprint is of Python's `ast.dump`, so it is tied to the pinned Python minor version.)
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import textwrap
import types
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import facepipe
from facepipe.assets import ASSETS
from facepipe.assets.stage import store_name

LOCK = Path(__file__).with_name("code_versions.lock.json")
PACKAGE_ROOT = Path(facepipe.__file__).parent
# Modules that never change what an asset writes: where outputs are kept and fetched, how a
# step is wired into Dagster, retried or scheduled. Everything else an asset reaches counts.
NOT_OUTPUT_CODE = ("facepipe.store", "facepipe.object_storage", "facepipe.checkpoint_mirror", "facepipe.resources",
                   "facepipe.partitions", "facepipe.registry", "facepipe.pairs", "facepipe.assets.failures",
                   "facepipe.assets.stage", "facepipe.automation", "facepipe.train.interrupts", "facepipe.slots",
                   "facepipe.disk")


def module_path(name: str) -> Path:
    return Path(importlib.util.find_spec(name).origin)


def facepipe_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported_modules(name: str) -> set[str]:
    """The facepipe modules `name` imports anywhere in its source (functions included)."""
    known, found = set(facepipe_modules()), set()
    package = name if module_path(name).name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(module_path(name).read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {module for module in found if module in known and module != name}


def counts(module: str) -> bool:
    return not any(module == skip or module.startswith(skip + ".") for skip in NOT_OUTPUT_CODE)


def syntax(source: str) -> str:
    """The syntax tree without docstrings (comments and formatting are not in it anyway)."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def referenced_values(thing) -> list:
    """The objects a function or class names: globals, closure cells and, for a class, its bases."""
    if inspect.isclass(thing):
        scope = vars(sys.modules[thing.__module__])
        names = {node.id for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(thing))))
                 if isinstance(node, ast.Name)}
        return [*thing.__bases__, *(scope[name] for name in sorted(names) if name in scope)]
    codes, names = [thing.__code__], set()
    while codes:
        code = codes.pop()
        names |= set(code.co_names) | set(code.co_freevars)
        codes += [const for const in code.co_consts if isinstance(const, types.CodeType)]
    cells = dict(zip(thing.__code__.co_freevars, [cell.cell_contents for cell in thing.__closure__ or ()]))
    scope = {**thing.__globals__, **cells}
    return [scope[name] for name in sorted(names) if name in scope]


def module_of(value) -> str | None:
    module = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    return module if isinstance(module, str) and module.startswith("facepipe") else None


def compute_function(assets_def) -> types.FunctionType:
    return inspect.unwrap(assets_def.op.compute_fn.decorated_fn)


def asset_source(assets_def) -> tuple[list[str], list[str]]:
    """What an asset's output depends on: in the Dagster layer (facepipe.assets), the syntax of
    the very functions, classes and constants the asset uses, followed name by name; elsewhere
    whole modules with everything they import. Returns (layer syntax, module names)."""
    pending, seen, layer, modules = [compute_function(assets_def)], set(), [], set()
    while pending:
        thing = pending.pop()
        if id(thing) in seen:
            continue
        seen.add(id(thing))
        layer.append(syntax(inspect.getsource(thing)))
        for value in referenced_values(thing):
            module = module_of(value)
            if module is None or not counts(module):
                if isinstance(value, (str, int, float, tuple)) and not isinstance(value, bool):
                    layer.append(repr(value))  # a constant the asset uses, e.g. a file name
                continue
            if module.startswith("facepipe.assets") and (inspect.isfunction(value) or inspect.isclass(value)):
                pending.append(value)
            elif not module.startswith("facepipe.assets"):
                modules.add(module)
    closure = set()
    while modules:
        module = modules.pop()
        if module not in closure:
            closure.add(module)
            modules |= {m for m in imported_modules(module) if counts(m) and not m.startswith("facepipe.assets")}
    return sorted(layer), sorted(closure)


def dependencies(assets_def) -> list[str]:
    """The facepipe modules (outside the Dagster layer) whose code makes this asset's output."""
    return asset_source(assets_def)[1]


def source_fingerprint(assets_def) -> str:
    layer, modules = asset_source(assets_def)
    digest = hashlib.sha256("\n".join(layer).encode())
    for module in modules:
        digest.update(f"\n{module}\n{syntax(module_path(module).read_text())}".encode())
    return digest.hexdigest()[:16]


def current_versions() -> dict[str, dict[str, str]]:
    return {store_name(a.key): {"code_version": a.code_versions_by_key[a.key], "source": source_fingerprint(a)}
            for a in ASSETS}


def test_every_code_change_bumps_its_asset_code_version():
    now = current_versions()
    if os.environ.get("FACEPIPE_UPDATE_CODE_LOCK"):
        LOCK.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
    locked = json.loads(LOCK.read_text())
    problems = []
    for asset, current in sorted(now.items()):
        was = locked.get(asset)
        modules = ", ".join(dependencies(next(a for a in ASSETS if store_name(a.key) == asset)))
        if was is None:
            problems.append(f"{asset}: not in {LOCK.name}; refresh the lock")
        elif was["source"] != current["source"] and was["code_version"] == current["code_version"]:
            problems.append(f"{asset}: its code changed ({modules}) but its code_version is still "
                            f"{current['code_version']!r}: bump it in its @asset, then refresh the lock (refresh "
                            "without a bump only when you are sure its output cannot change, e.g. a function "
                            "added to a module it uses: the lock's diff records that decision)")
        elif was != current:
            problems.append(f"{asset}: code_version {was['code_version']!r} -> {current['code_version']!r}: refresh the lock")
    assert not problems, "\n".join(problems) + "\n(refresh: FACEPIPE_UPDATE_CODE_LOCK=1 pytest " \
                                                "facepipe_tests/test_code_versions.py)"


def test_the_lock_sees_a_change_in_a_module_an_asset_imports(monkeypatch):
    faces_asset = next(a for a in ASSETS if store_name(a.key) == "identity/faces")
    assert "facepipe.align" in dependencies(faces_asset)  # reached through facepipe.faces
    assert "facepipe.store" not in dependencies(faces_asset)
    # followed name by name in the Dagster layer: the profile, defined beside the identity model,
    # does not depend on the model's code
    by_name = {store_name(a.key): a for a in ASSETS}
    assert "facepipe.models.autoencoder" in dependencies(by_name["identity/identity_model"])
    assert "facepipe.models.autoencoder" not in dependencies(by_name["identity/identity_profile"])
    before = source_fingerprint(faces_asset)
    real = Path.read_text

    def edited(path: Path, *args, **kwargs) -> str:
        text = real(path, *args, **kwargs)
        return text + "\nTEMPLATE_SHIFT = 1\n" if path == module_path("facepipe.align") else text

    monkeypatch.setattr(Path, "read_text", edited)
    assert source_fingerprint(faces_asset) != before
    monkeypatch.setattr(Path, "read_text", lambda path, *a, **k: real(path, *a, **k) + "\n# a comment\n")
    assert source_fingerprint(faces_asset) == before  # comments do not count


def test_facepipe_has_no_import_cycles():
    graph = {module: imported_modules(module) for module in facepipe_modules()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
