"""The platform package knows no service: nothing under nurture/ imports services, the gateway or the
command line (which may import all of them). Read from the source (every `import` and `from` in every
module's syntax tree, the ones inside functions included), so an import done late or lazily counts too."""

from __future__ import annotations

import ast
from pathlib import Path

PLATFORM = Path(__file__).resolve().parents[3] / "nurture"
FORBIDDEN = ("services", "gateway", "cli")


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and _literal_name(node):
            # importlib.import_module("services.x") / __import__("services.x") with a literal name
            names.append((node.lineno, str(node.args[0].value)))  # type: ignore[attr-defined]
    return names


def _literal_name(call: ast.Call) -> bool:
    return bool(call.args) and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)


def _is_dynamic_import(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("__import__", "import_module"))


def _violations(source: str, where: str) -> list[str]:
    return [f"{where}:{line} imports {name}" for line, name in _imported(ast.parse(source))
            if name.split(".")[0] in FORBIDDEN]


def test_the_platform_package_imports_no_service_gateway_or_cli() -> None:
    modules = sorted(p for p in PLATFORM.rglob("*.py") if "api" not in p.relative_to(PLATFORM).parts[:1])
    assert len(modules) > 10  # the walk found the package (a wrong path would pass vacuously)
    found = [v for path in modules for v in _violations(path.read_text(), str(path.relative_to(PLATFORM.parent)))]
    assert found == []


def test_the_check_sees_every_form_of_import() -> None:
    source = (
        "import services.journeys\n"
        "from gateway.app import create_app\n"
        "def late():\n"
        "    from cli.up import up\n"
        "    import importlib\n"
        "    importlib.import_module('services.journeys.simulate_cli')\n"
        "from nurture import rpc\n"
        "from . import clock\n"
        "import servicesmith\n"
    )
    assert [v.split(" imports ")[1] for v in _violations(source, "x.py")] == [
        "services.journeys", "gateway.app", "cli.up", "services.journeys.simulate_cli"]
