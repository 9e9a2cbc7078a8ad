"""The house plan in the README ("Layout") is the code's: imports run down the floors only.

Every module of `app` has a floor; a module may import modules of its own floor or below,
never above (imports under TYPE_CHECKING and inside functions count too). A new module
must be given a floor here and in the README's map.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"

FLOORS: dict[str, int] = {
    # 0: pure or process-wide helpers, nothing of ours below them but each other
    "app.config": 0,
    "app.clock": 0,
    "app.catalog": 0,
    "app.normalize": 0,
    "app.alert_rules": 0,
    "app.expectations": 0,
    "app.logs": 0,
    "app.metrics": 0,
    "app.tasks": 0,
    # 1: the two sides of the service: the upstream, and the store (the bottom of data)
    "app.upstream": 1,
    "app.store": 1,
    # 2: the features, over the store and the upstream
    "app.refresh": 2,
    "app.alerts": 2,
    "app.access": 2,
    "app.integrations": 2,
    # 3: what clients meet
    "app.api": 3,
    # the pages for people, beside the API: they read through its answers
    "app.board": 3,
    # 4: the process: wiring, server, commands; the simulator stands beside everything
    "app.main": 4,
    "app.server": 4,
    "app.cli": 4,
    "app.__main__": 4,
    "app.simulator": 4,
    "app": 0,
}


def floor_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in FLOORS:
            return FLOORS[name]
    raise AssertionError(f"{module} has no floor: give it one here and in the README's Layout")


def module_of(path: Path) -> str:
    rel = path.relative_to(APP.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    me = module_of(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("app"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name == "app" or name.startswith("app."):
                found.add(name)
                found.update(f"{name}.{a.name}" for a in node.names if name == "app")
    return found


MODULES = sorted(p for p in APP.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(APP.parent)))
def test_imports_run_down_the_floors(path: Path) -> None:
    me = module_of(path)
    mine = floor_of(me)
    upward = sorted(
        f"{name} (floor {floor_of(name)})"
        for name in imports_of(path)
        if name != "app.__version__" and floor_of(name) > mine
    )
    assert not upward, f"{me} (floor {mine}) imports up: {', '.join(upward)}"
