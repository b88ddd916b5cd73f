"""The import contracts of docs/architecture.md hold (import-linter, ``.importlinter``).

Core's subsystems import downward only, the worker SDK and the gateway side stay apart,
plugins import only the public API (``sessiongate.core``, ``sessiongate.core.errors``,
``sessiongate.v1``) and no plugin imports another.

import-linter only walks the folder of the root package, and setuptools' package-dir
maps ``sessiongate`` to toplevel/ but ``sessiongate.core`` to core/ (and so on), so the
test builds a view of the package as installed, symlinks laid out by pyproject's
package-dir, and puts it first on ``PYTHONPATH``. ``python tests/platform/test_architecture.py``
runs the same check from a shell.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"
PACKAGE_DIR: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())[
    "tool"]["setuptools"]["package-dir"]


def build_view(into: pathlib.Path) -> pathlib.Path:
    """Symlink the package's folders into ``into`` as they sit in an installed wheel."""
    for name, folder in sorted(PACKAGE_DIR.items(), key=lambda item: item[0].count(".")):
        source = ROOT / folder
        target = into.joinpath(*name.split("."))
        if "." not in name:  # the root package: a real folder of links to its entries
            target.mkdir(parents=True)
            for entry in source.iterdir():
                if entry.name != "__pycache__":
                    (target / entry.name).symlink_to(entry)
        elif target.exists():  # already there through its parent's link (sessiongate.v1)
            assert target.resolve() == source.resolve(), (name, target, source)
        else:
            target.symlink_to(source, target_is_directory=True)
    return into


def lint_imports(view: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(view), env.get("PYTHONPATH")]))
    command = [str(pathlib.Path(sys.executable).parent / "lint-imports"),
               "--no-cache", "--no-logo", str(CONFIG)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _forbidden(contract: str) -> set[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CONFIG)
    return set(parser[f"importlinter:contract:{contract}"]["forbidden_modules"].split())


def _core_children() -> set[str]:
    core = ROOT / PACKAGE_DIR["sessiongate.core"]
    return {f"sessiongate.core.{path.stem}" for path in core.iterdir()
            if (path.suffix == ".py" and path.stem != "__init__")
            or (path / "__init__.py").is_file()}


@pytest.mark.once
def test_import_contracts_hold(tmp_path):
    if importlib.util.find_spec("importlinter") is None:
        message = "import-linter is not installed: pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = lint_imports(build_view(tmp_path / "view"))
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.once
@pytest.mark.parametrize(("contract", "allowed"), [
    ("plugins-public-api", {"sessiongate.core.errors"}),
    ("sdk-apart", {"sessiongate.core.errors", "sessiongate.core.protocol",
                   "sessiongate.core.sdk", "sessiongate.core.worker"}),
])
def test_forbidden_lists_name_every_other_core_module(contract, allowed):
    """A module added to core/ is forbidden to plugins and the SDK until allowed here."""
    children = _core_children()
    assert allowed <= children
    listed = {name for name in _forbidden(contract) if name.startswith("sessiongate.core.")}
    assert listed == children - allowed, {"unlisted": sorted(children - allowed - listed),
                                          "stale": sorted(listed - children)}


@pytest.mark.once
def test_every_public_name_resolves():
    core = importlib.import_module("sessiongate.core")
    missing = [name for name in core.__all__ if not hasattr(core, name)]
    assert not missing, f"sessiongate.core.__all__ names what it cannot give: {missing}"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        completed = lint_imports(build_view(pathlib.Path(tmp) / "view"))
    sys.stdout.write(completed.stdout + completed.stderr)
    sys.exit(completed.returncode)
