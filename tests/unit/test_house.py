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


# The store has floors of its own, on the same rule: at the bottom the tables and the plan
# runner (`plans`: raw SQL as plans, values as drivers take them), then one module per kind
# of record (and the writer), then what a merge or sweep tells and the merge itself, then the
# reads over all of it. A new module of the store must be given a floor here too.
STORE_FLOORS: dict[str, int] = {
    # 0: the bottom floor
    "app.store.tables": 0,
    "app.store.plans": 0,
    "app.store.outage": 0,
    # 1: engines, the writer, and one module per kind of record
    "app.store.db": 1,
    "app.store.writer": 1,
    "app.store.versions": 1,
    "app.store.jobs": 1,
    "app.store.snapshots": 1,
    "app.store.events": 1,
    "app.store.outbox": 1,
    "app.store.alerts": 1,
    "app.store.objects": 1,
    "app.store.maintenance": 1,
    "app.store.leases": 1,
    "app.store.tickets": 1,
    "app.store.keys": 1,
    "app.store.ratelimits": 1,
    "app.store.watermarks": 1,
    "app.store.digests": 1,
    "app.store.retention": 1,
    # 2: what a merge or sweep tells, and the merge of a walk
    "app.store.telling": 2,
    "app.store.sweep": 2,
    "app.store.stage": 2,
    "app.store.merge": 2,
    # 3: the reads, and the package's own face
    "app.store.repo": 3,
    "app.store": 3,
}

STORE = sorted((APP / "store").glob("*.py"))


def store_floor_of(module: str) -> int:
    if module in STORE_FLOORS:
        return STORE_FLOORS[module]
    parts = module.split(".")
    for n in range(len(parts), 2, -1):  # a name inside a module: the module's floor
        name = ".".join(parts[:n])
        if name in STORE_FLOORS:
            return STORE_FLOORS[name]
    raise AssertionError(f"{module} has no floor in the store: give it one here")


def store_imports_of(path: Path) -> set[str]:
    """The store's modules `path` imports, `from app.store import plans` included."""
    found = {name for name in imports_of(path) if name.startswith("app.store.")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module == "app.store":
            found.update(f"app.store.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("path", STORE, ids=lambda p: str(p.relative_to(APP.parent)))
def test_the_store_runs_down_its_own_floors(path: Path) -> None:
    me = module_of(path)
    mine = store_floor_of(me)
    upward = sorted(
        f"{name} (floor {store_floor_of(name)})"
        for name in store_imports_of(path)
        if store_floor_of(name) > mine
    )
    assert not upward, f"{me} (store floor {mine}) imports up: {', '.join(upward)}"


def test_the_plan_runner_is_the_bottom_floor() -> None:
    """Everything in the store builds on `plans`; it builds on nothing of ours but tables."""
    path = APP / "store" / "plans.py"
    ours = {name for name in imports_of(path) if name != "app.__version__"}
    ours |= store_imports_of(path)
    assert ours <= {"app.store.tables"}, f"app.store.plans imports {sorted(ours)}"
