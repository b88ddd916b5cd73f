"""The suite's test policy: what a tox env runs.

``SG_TEST_SCOPE`` (set by tox.ini; not ``SESSIONGATE_``: that prefix is settings):

* ``all`` (default; the env with the shipped plugin defaults, on each Python):
  every test.
* ``matrix`` (every other plugin combination): only what depends on the plugin set,
  so each thing is tested once: the plugins' own tests (``tests/plugins/``) except
  modules marked ``once`` (pure unit tests), tests that need a plugin switched off
  (``requires_no_plugin``) or one the shipped defaults leave off, and tests marked
  ``matrix`` (core behaviour that plugins change, such as shutdown under reattach).
"""

from __future__ import annotations

import os
import pathlib
import tomllib

import pytest

from sessiongate.core.config.settings import defaults_path

pytest_plugins = ["sessiongate.testing"]

SCOPE_ENV = "SG_TEST_SCOPE"
PLUGIN_TESTS = pathlib.Path(__file__).parent / "plugins"


def shipped_plugins() -> set[str]:
    """The plugins the shipped settings switch on (whatever the environment says)."""
    plugins = tomllib.loads(defaults_path().read_text())["plugins"]
    return {name for name, table in plugins.items() if table.get("enabled") is True}


def _depends_on_plugins(item: pytest.Item, shipped: set[str]) -> bool:
    if item.get_closest_marker("once"):
        return False
    if item.get_closest_marker("matrix") or item.get_closest_marker("requires_no_plugin"):
        return True
    for marker in item.iter_markers("requires_plugin"):
        if set(marker.args) - shipped:
            return True
    return PLUGIN_TESTS in item.path.parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    scope = os.environ.get(SCOPE_ENV, "all")
    if scope == "all":
        return
    if scope != "matrix":
        raise pytest.UsageError(f"{SCOPE_ENV} must be 'all' or 'matrix', not {scope!r}")
    shipped = shipped_plugins()
    keep = [item for item in items if _depends_on_plugins(item, shipped)]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep

