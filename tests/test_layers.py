"""The layering of the tree, read from the imports with `ast` (ARCHITECTURE.md, README "Layout").

herald/core <- pure modules (graphs, contracts, policy, schedule, templates) <- models/ <- stores
and services <- activities/, api/, workflows/. Each rule names the module and the import that
breaks it, so a wrong import fails here with a line to fix rather than in a replay or a deploy.
"""

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("herald", "models", "workflows", "activities", "api")

# Third-party packages that make a module impure: a database session, the web framework, I/O.
IMPURE_LIBRARIES = ("sqlalchemy", "sqlmodel", "fastapi", "starlette", "httpx", "psycopg")
# Modules whose job is pure logic: they must stay pure (checked transitively).
MUST_BE_PURE = (
    "herald.core.clock",
    "herald.core.errors",
    "herald.core.ids",
    "herald.core.activity_failures",
    "herald.flows.graph",
    "herald.flows.contract",
    "herald.flows.steps",
    "herald.flows.schedule",
    "herald.flows.property_filters",
    "herald.campaigns.contract",
    "herald.campaigns.waves",
    "herald.analytics.rfm_scoring",
    "herald.delivery.policy",
    "herald.delivery.templates",
    "herald.delivery.html_text",
    "herald.segments.definition",
    "herald.profiles.normalize",
    "herald.ingest.catalogue",
)
# Enums and column types: pure for their importers although models.types names SQL types.
PURE_MODELS = ("models.enums", "models.types")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def all_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path)] = path
    found["worker"] = ROOT / "worker.py"
    return found


@cache
def imports_of(module: str) -> tuple[tuple[str, int], ...]:
    """(imported module, line) for every import in the module, at any depth (also inside
    functions and `imports_passed_through` blocks)."""
    tree = ast.parse(all_modules()[module].read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            # `from herald.core import search_attributes`: the submodule is what is imported.
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in all_modules():
                    found.append((submodule, node.lineno))
    return tuple(found)


def local(name: str) -> str | None:
    """The project module an import names (its longest known prefix), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in all_modules():
            return candidate
    return None


def under(name: str, *roots: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


@cache
def impurity(module: str) -> str | None:
    """Why `module` is not pure (the chain to the first impure import), or None."""
    for name, line in imports_of(module):
        where = f"{module}:{line} imports {name}"
        if under(name, *IMPURE_LIBRARIES):
            return where
        target = local(name)
        if target is None or target == module or target in PURE_MODELS:
            continue
        if under(target, "activities", "api", "workflows") or target == "worker":
            return where
        if under(target, "herald", "models"):  # a DTO module is pure when what it imports is
            deeper = impurity(target)
            if deeper:
                return f"{where}, and {deeper}"
    return None


def offending(modules, rule) -> list[str]:
    found = []
    for module in sorted(modules):
        for name, line in imports_of(module):
            problem = rule(module, name)
            if problem:
                found.append(f"{module}:{line} imports {name}: {problem}")
    return found


def test_workflows_import_no_activity_no_database_and_no_web_framework():
    def rule(_module: str, name: str) -> str | None:
        if under(name, "activities"):
            return "workflows import contracts and pure modules, never activities"
        if under(name, "sqlalchemy", "sqlmodel", "fastapi", "starlette", "api"):
            return "workflows are deterministic: no database session, no web framework"
        return None

    assert offending([m for m in all_modules() if under(m, "workflows")], rule) == []


def test_models_import_only_pure_herald_modules():
    def rule(_module: str, name: str) -> str | None:
        target = local(name)
        if target is None or not under(target, "herald"):
            return None
        why = impurity(target)
        return f"models import only pure herald modules ({why})" if why else None

    assert offending([m for m in all_modules() if under(m, "models")], rule) == []


@pytest.mark.parametrize("module", MUST_BE_PURE)
def test_pure_modules_stay_pure(module):
    assert module in all_modules(), f"{module} was moved: update MUST_BE_PURE"
    assert impurity(module) is None


def test_no_api_router_imports_another_router():
    def rule(module: str, name: str) -> str | None:
        target = local(name)
        if target and under(target, "api.routers") and target != module:
            return "routers do not import each other: share through herald/ or api/ modules"
        return None

    assert offending([m for m in all_modules() if under(m, "api.routers")], rule) == []


def test_herald_package_inits_are_empty():
    # The workflow sandbox re-imports parent packages: code there runs on every workflow start.
    inits = [p for p in (ROOT / "herald").rglob("__init__.py")] + [ROOT / "workflows/__init__.py"]
    assert [str(p.relative_to(ROOT)) for p in inits if p.read_text().strip()] == []


def test_the_rules_see_a_wrong_import():
    # The checker itself: a module importing an activity is reported with its line.
    assert under("activities.webhooks", "activities")
    assert local("herald.flows.graph.FlowDefinition") == "herald.flows.graph"
    assert impurity("herald.core.db") is not None
