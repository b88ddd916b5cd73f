"""tox.ini's ci label tests every plugin on and off, each valid combination of the
built-in plugins once, and the shipped defaults on every supported Python."""

from __future__ import annotations

import configparser
import itertools
import pathlib
import re
import tomllib

import pytest

from sessiongate.core.config.settings import defaults_path
from sessiongate.testing import PLUGINS

pytestmark = pytest.mark.once

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _expand(entry: str) -> list[str]:
    """tox's brace factors: ``a-{b,c}-{d,e}`` -> four names."""
    parts = re.split(r"(\{[^}]*\})", entry)
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c).strip() for c in itertools.product(*choices)]


def _split_top_level(value: str) -> list[str]:
    out, depth, current = [], 0, ""
    for char in value:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += char
    return [*out, current]


def ci_envs() -> list[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "tox.ini")
    labels = {key.strip(): value.strip() for key, value in
              (line.split("=", 1) for line in parser["tox"]["labels"].strip().splitlines())}
    return [name for entry in _split_top_level(labels["ci"])
            for name in _expand(entry.strip())]


def plugins_of(env: str) -> dict[str, bool] | None:
    """The plugin switches an env runs with (None: not a test env)."""
    factors = env.split("-")
    if not re.fullmatch(r"py3\d+", factors[0]):
        return None
    if len(factors) == 1:  # the shipped defaults
        shipped = tomllib.loads(defaults_path().read_text())["plugins"]
        return {name: shipped[name]["enabled"] for name in PLUGINS}
    return {name: name in factors for name in PLUGINS}


def test_every_plugin_runs_on_and_off_somewhere():
    switches = [s for s in map(plugins_of, ci_envs()) if s is not None]
    for name in PLUGINS:
        assert {s[name] for s in switches} == {True, False}, name


def test_each_valid_combination_exactly_once_and_no_invalid_one():
    combos = [tuple(sorted(n for n, on in s.items() if on))
              for env in ci_envs() if env in ("py311",) or "-" in env
              if (s := plugins_of(env)) is not None]
    valid = [tuple(sorted(c)) for r in range(len(PLUGINS) + 1)
             for c in itertools.combinations(PLUGINS, r)
             if not ("reconnect" in c and "fanout" not in c)]
    assert sorted(combos) == sorted(valid)


def test_the_shipped_defaults_run_on_each_supported_python():
    assert {"py311", "py312", "py313", "lint"} <= set(ci_envs())
