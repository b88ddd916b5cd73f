"""Packaging guards (CONVENTIONS §4.3-4.4): the explicit package list stays right.

The wheel silently drops a subpackage missing from ``[tool.setuptools] packages``
while an editable install still imports it, so only this test (and the tox envs,
which test the built wheel) notice.
"""

from __future__ import annotations

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _found() -> set[str]:
    found = set()
    for prefix, folder in SETUPTOOLS["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            if any(part.startswith((".", "__")) for part in rel):
                continue
            found.add(".".join((prefix, *rel)))
    return found


def test_every_package_dir_is_listed():
    listed = set(SETUPTOOLS["packages"])
    found = _found()
    assert found <= listed, {"missing from pyproject packages": sorted(found - listed)}
    stale = {p for p in listed - found
             if not any(p == prefix for prefix in SETUPTOOLS["package-dir"])}
    assert not stale, {"listed but no __init__.py": sorted(stale)}


def test_core_and_every_builtin_plugin_is_mapped():
    assert SETUPTOOLS["package-dir"]["sessiongate.core"] == "core"
    assert SETUPTOOLS["package-dir"]["sessiongate.plugins"] == "plugins"
    for name in ("fanout", "reconnect", "acl", "reattach"):
        assert (ROOT / "plugins" / name / "__init__.py").is_file()
        assert f"sessiongate.plugins.{name}" in SETUPTOOLS["packages"]


def test_builtin_plugins_register_through_our_own_entry_points():
    from sessiongate.core import ENTRY_POINT_GROUP
    from sessiongate.core.config.settings import builtin_plugins

    declared = PYPROJECT["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == builtin_plugins()


def test_no_tests_inside_the_packages():
    """Tests live in tests/ only: inside core/ or plugins/ they import duplicate modules."""
    strays = [str(p.relative_to(ROOT)) for folder in ("core", "plugins")
              for p in (ROOT / folder).rglob("test_*.py")]
    assert not strays


def _folder(package: str) -> pathlib.Path:
    """Where a package's files live, by its longest mapped prefix."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in SETUPTOOLS["package-dir"]:
            return ROOT / SETUPTOOLS["package-dir"][prefix] / "/".join(parts[n:])
    return ROOT / "/".join(parts)


def test_package_data_files_exist():
    for package, patterns in SETUPTOOLS.get("package-data", {}).items():
        for pattern in patterns:
            assert list(_folder(package).glob(pattern)), f"{package}: nothing matches {pattern!r}"
