"""The README starts with the two commands, and CI runs the README's test command."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```(?:bash|console)?\n(.*?)```", text, re.S)]


def test_readme_starts_with_the_two_commands():
    head = README.split("\n---\n", 1)[0]
    blocks = _blocks(head)
    assert len(blocks) == 2, "the README starts with exactly two commands"
    serve, tests = blocks
    assert serve.startswith("python3 -m venv .venv") and serve.endswith("sessiongate serve")
    assert tests.startswith("python3 -m venv .venv") and "/tox run-parallel -m ci" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    tests = _blocks(README)[1]
    lines = [line.strip() for line in CI.splitlines()]
    assert tests in lines, ".ci/run must run the README's test command as written"


def test_ci_script_is_strict_and_handles_pytest_exit_5():
    assert "set -euo pipefail" in CI
    assert "exit 5" in CI
    assert "DEBIAN_FRONTEND=noninteractive" in CI and "apt-get update" in CI
    for package in ("slapd", "ldap-utils", "redis-server"):
        assert package in CI


def test_walkthrough_uses_the_documented_client_settings():
    for name in ("SESSIONGATE_CLIENT_KEY", "SESSIONGATE_CLIENT_SERVER",
                 ".sessiongate/bootstrap-admin.key"):
        assert name in README
    for command in ("sessiongate open", "sessiongate stream $SID",
                    "sessiongate invoke $SID write '{\"tag\":\"t\",\"value\":1}'",
                    "sessiongate close $SID"):
        assert command in README, command
