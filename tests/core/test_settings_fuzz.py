"""Settings fuzz: whatever the TOML file and the environment say, ``check-config`` exits
0 or 2 and never shows a traceback.

Random TOML documents (the shipped keys, tables where values belong, values where
tables belong, misspelt plugins, nan/inf/huge numbers, dynaconf's ``@`` markers, broken
syntax, bytes that are not UTF-8) and random ``SESSIONGATE_*`` variables. Most examples
run the CLI's own entry point in-process (``sessiongate.core.cli.commands.main``, exactly what
``python -m sessiongate`` calls); a handful run the real command in a child process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pathlib
import subprocess
import sys
import tomllib
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sessiongate.core.cli.commands import main
from sessiongate.core.config.settings import defaults_path, flatten
from sessiongate.testing import toml_key, toml_value

with open(defaults_path(), "rb") as _fh:
    SHIPPED: dict[str, Any] = flatten(tomllib.load(_fh))

PLUGIN_NAMES = ("fanout", "reconnect", "acl", "reattach")
TABLES = sorted({k.rsplit(".", 1)[0] for k in SHIPPED if "." in k})
KEYS = sorted(SHIPPED) + TABLES + [
    "plugins.fanuot.enabled", "plugins.clustr.enabled", "plugins.audit.file",
    "plugins.fanout.typo", "sessions.no_such_key", "plugins", "sessions", "dynaconf_merge",
]
MARKERS = [
    "@int abc", "@int 5", "@float x", "@float 1e400", "@json {", "@json []",
    '@json {"a": 1}', "@bool x", "@bool true", "@str 5", "@format {this.NOPE}",
    "@format {this.sessions.max_sessions}", "@get nope", "@get sessions.max_sessions",
    "@jinja {{ this.x }}", "@del", "@reset", "@merge 1", "@merge [1]", "@insert 0 x",
    "@note x", "@empty", "@none", "@null", "@upper", "@int @format {this.workers.spare_workers}",
    "@read_file /nonexistent", "@", "@@",
]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)
ENV_TEXT = st.one_of(
    TEXT, st.sampled_from(MARKERS),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "1e308", "-0", "0x10", "10" * 15, "[1,2",
                     "{a=1}", "{a = 1}", "[]", "true", "True", "false", "''", '"x"',
                     "1", "0", "-1", "3.5", "1800", "[[1]]", "{}", "null"]),
    st.integers().map(str), st.floats().map(repr))

SCALARS = st.one_of(
    st.integers(), st.integers(min_value=-2, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), TEXT,
    st.sampled_from(MARKERS), st.sampled_from([v for v in SHIPPED.values() if v != {}]),
    st.dates(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6)
TAME = st.tuples(st.sampled_from(sorted(SHIPPED)),
                 st.one_of(st.sampled_from(list(SHIPPED.values())),
                           st.integers(min_value=0, max_value=100),
                           st.floats(min_value=0.5, max_value=100)))
KEY = st.one_of(st.sampled_from(KEYS),
                TEXT.map(lambda k: f"plugins.reattach.{k}"),  # off: its table is not checked
                st.lists(st.sampled_from(["plugins", "sessions", "acl", "x", "ENABLED",
                                          "Max_Sessions", ""]) | TEXT,
                         min_size=1, max_size=3).map(".".join))


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """Mostly valid TOML with hostile content; sometimes broken text or bytes."""
    lines = []
    seen: set[str] = set()
    pairs = st.one_of(TAME, TAME, st.tuples(KEY, VALUES))
    for key, value in draw(st.lists(pairs, max_size=8)):
        parts = key.split(".")
        # TOML refuses a key defined twice or both as a value and a table
        if any(".".join(parts[:i]) in seen for i in range(1, len(parts) + 1)) or any(
                s.startswith(key + ".") for s in seen):
            continue
        seen.add(key)
        lines.append(f"{toml_key(key)} = {toml_value(value)}")
    text = "\n".join(lines) + "\n"
    mode = draw(st.sampled_from(["toml"] * 6 + ["cut", "insert", "bytes"]))
    if mode == "cut" and text:
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + text[at + draw(st.integers(1, 5)):]
    elif mode == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["[", "]", '"', "=", "\n", "[sessions",
                                                 "[[plugins]]", "\\", "'''"])) + text[at:]
    elif mode == "bytes":
        return draw(st.binary(max_size=40)) + text.encode()
    return text.encode()


ENV_NAMES = st.one_of(
    st.sampled_from(["SESSIONGATE_" + "__".join(p.upper() for p in k.split("."))
                     for k in KEYS if k]),
    st.sampled_from([f"SESSIONGATE_PLUGINS__{n.upper()}__ENABLED" for n in PLUGIN_NAMES]),
    st.sampled_from(["SESSIONGATE_SETTINGS_FILE", "SESSIONGATE_DISABLED_PLUGINS",
                     "SESSIONGATE_", "SESSIONGATE___", "SESSIONGATE_PLUGINS__",
                     "SESSIONGATE_plugins__fanout__enabled"]),
    st.from_regex(r"SESSIONGATE_[A-Z][A-Z_]{0,15}", fullmatch=True),
)
ENVIRONMENTS = st.one_of(st.just({}), st.dictionaries(ENV_NAMES, ENV_TEXT, max_size=4))


def _without_ours(environ: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any ``SESSIONGATE_*`` (tox sets some)."""
    return {k: v for k, v in environ.items() if not k.startswith("SESSIONGATE_")}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def check_config_in_process(config: pathlib.Path, env: dict[str, str]
                            ) -> tuple[int, str, str, list[logging.LogRecord]]:
    """``sessiongate check-config --config FILE`` through the CLI's own ``main``."""
    saved = dict(os.environ)
    out, err, handler = io.StringIO(), io.StringIO(), _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        os.environ.clear()
        os.environ.update({**_without_ours(saved), **env})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as on the command line: not errors
            rc = main(["check-config", "--config", str(config)])
    finally:
        root.removeHandler(handler)
        os.environ.clear()
        os.environ.update(saved)
    return rc, out.getvalue(), err.getvalue(), handler.records


def _assert_clean_outcome(rc: int, out: str, err: str) -> None:
    assert rc in (0, 2), (rc, out, err)
    assert "Traceback" not in err, err
    if rc == 0:
        assert err.splitlines()[-1:] == ["settings are valid"], err
        assert all(" = " in line for line in out.splitlines()), out
    else:
        assert out == "", out
        lines = err.splitlines()
        assert lines[0] == "invalid settings:", err
        assert len(lines) > 1 and all(line.startswith("  - ") and line[4:].strip()
                                      for line in lines[1:]), err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=documents(), env=ENVIRONMENTS)
def test_check_config_exits_0_or_2_in_process(workdir, document, env):
    config = workdir / "fuzz.toml"
    config.write_bytes(document)
    rc, out, err, records = check_config_in_process(config, env)
    _assert_clean_outcome(rc, out, err)
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records]


@settings(max_examples=5, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: each run is a process
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=documents(), env=ENVIRONMENTS)
def test_check_config_exits_0_or_2_as_a_command(workdir, document, env):
    config = workdir / "fuzz-child.toml"
    config.write_bytes(document)
    result = subprocess.run(
        [sys.executable, "-m", "sessiongate", "check-config", "--config", str(config)],
        cwd=workdir, env={**_without_ours(dict(os.environ)), **env}, capture_output=True, text=True,
        errors="replace", timeout=60, stdin=subprocess.DEVNULL)
    _assert_clean_outcome(result.returncode, result.stdout, result.stderr)
