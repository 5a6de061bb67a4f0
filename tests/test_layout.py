"""The import rules between the project's packages (docs/architecture.md) and the install lists.

Every import statement is read from the source (also those inside functions), so a lazy import that breaks a
rule is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"spade", "spade_app", "spade_cli", "spade_lab", "spade_study", "tools", "pages", "benchmarks", "app",
               "tests"}
UI = {"streamlit", "plotly"}
DATABASE = {"sqlalchemy", "psycopg"}

# package -> (first-party packages it may import, third-party packages of UI / DATABASE it may import)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "spade": ({"spade"}, set()),
    "spade_lab": ({"spade", "spade_lab"}, set()),
    "spade_study": ({"spade", "spade_study"}, DATABASE),
    "spade_cli": ({"spade", "spade_cli", "spade_lab"}, set()),
    "spade_app": ({"spade", "spade_app", "spade_lab", "spade_study"}, UI | DATABASE),
    "pages": ({"spade", "spade_app"}, UI),
    "app.py": ({"spade", "spade_app"}, UI),
    "benchmarks": ({"spade", "spade_lab", "spade_cli"}, set()),
    "tools": ({"spade", "spade_lab", "spade_cli", "tools"}, set()),
}
# The one way out of the library: `python -m spade` starts the command line.
ENTRY_POINTS = {("spade/__main__.py", "spade_cli")}


def imported_roots(path: Path) -> set[str]:
    """The top-level names of every absolute import in a file."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def package_files(package: str) -> list[Path]:
    target = ROOT / package
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_only_what_its_layer_allows(package):
    allowed_first, allowed_third = RULES[package]
    assert package_files(package), f"{package} has no Python files"
    broken = []
    for path in package_files(package):
        relative = path.relative_to(ROOT).as_posix()
        for root in imported_roots(path):
            if (relative, root) in ENTRY_POINTS:
                continue
            if (root in FIRST_PARTY and root not in allowed_first) or (root in UI | DATABASE
                                                                        and root not in allowed_third):
                broken.append(f"{relative} imports {root}")
    assert not broken, "\n".join(broken)


def test_rules_cover_every_package_with_code():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))} - {"tests"}
    assert packages <= set(RULES), f"no import rule for {sorted(packages - set(RULES))}"


def test_importing_the_whole_library_loads_no_app_database_or_lab_module():
    """Import every spade module in a fresh interpreter and look at what came along."""
    code = """
import importlib, pkgutil, sys
import spade
for info in pkgutil.walk_packages(spade.__path__, "spade."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
banned = ("streamlit", "plotly", "sqlalchemy", "psycopg", "spade_app", "spade_lab", "spade_study", "spade_cli", "tools")
print(sorted(m for m in sys.modules if m.split(".")[0] in banned))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def requirement_name(spec: str) -> str:
    return re.split(r"[\[<>=!~ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_declared_dependency_is_pinned_in_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(s) for s in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {requirement_name(s) for s in extra if not s.startswith(project["name"])}
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pinned = {requirement_name(line): line for line in lines}
    assert declared <= set(pinned), f"not in requirements.txt: {sorted(declared - set(pinned))}"
    assert all("==" in pinned[name] for name in declared)
    assert set(pinned) <= declared, f"pinned but not declared in pyproject.toml: {sorted(set(pinned) - declared)}"
