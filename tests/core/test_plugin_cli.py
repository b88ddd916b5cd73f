"""Commands plugins add to the command line (``sg_cli_commands``), in-process ``main``."""

from __future__ import annotations

import argparse
import types

import pytest

from sessiongate.core import PluginCommand, hookimpl
from sessiongate.core.cli import commands
from sessiongate.core.errors import InvalidArgument
from sessiongate.core.pluginhost import host
from sessiongate.testing import write_config

pytestmark = pytest.mark.once


def _plugin(name: str, *offered: PluginCommand) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def sg_cli_commands() -> list[PluginCommand]:
        return list(offered)

    module.sg_cli_commands = sg_cli_commands  # type: ignore[attr-defined]
    return module


def _echo(name: str, seen: list[tuple[str, str]]) -> PluginCommand:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("word")

    async def run(args: argparse.Namespace, settings) -> int:
        seen.append((args.word, str(settings.state_dir)))
        if args.word == "bad":
            raise InvalidArgument("bad is not a word this command takes")
        return 0

    return PluginCommand(name=name, help="echo a word", add_arguments=add_arguments, run=run)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Stand-ins for installed entry-point plugins, for the CLI and the settings loader."""
    plugins: list[types.ModuleType] = []
    real = host.make_plugin_manager

    def manager(settings, *, load_entrypoints: bool = True, extra_plugins=()):
        return real(settings, load_entrypoints=load_entrypoints,
                    extra_plugins=(*extra_plugins, *plugins))

    real_names = host.installed_plugin_names
    monkeypatch.setattr(host, "make_plugin_manager", manager)
    monkeypatch.setattr(host, "installed_plugin_names",
                        lambda extra=(): real_names([*extra, *plugins]))
    return plugins


def test_a_plugin_command_runs_with_the_validated_settings(installed, tmp_path, capsys):
    seen: list[tuple[str, str]] = []
    installed.append(_plugin("echoer", _echo("echo", seen)))
    config = write_config(tmp_path / "s.toml", {"state_dir": str(tmp_path / "state")})
    assert commands.main(["echo", "hello", "--config", str(config)]) == 0
    assert seen == [("hello", str(tmp_path / "state"))]
    assert commands.main(["echo", "bad", "--config", str(config)]) == 2
    assert "bad is not a word" in capsys.readouterr().err
    assert "echo a word (plugin echoer)" in _help(capsys)


def test_a_switched_off_plugin_command_is_refused_naming_the_switch(installed, tmp_path, capsys):
    seen: list[tuple[str, str]] = []
    installed.append(_plugin("echoer", _echo("echo", seen)))
    config = write_config(tmp_path / "s.toml", {"plugins.echoer.enabled": False})
    assert commands.main(["echo", "hello", "--config", str(config)]) == 2
    assert "plugins.echoer.enabled = true" in capsys.readouterr().err
    assert seen == []


def test_a_taken_name_is_left_out_with_a_warning(installed, capsys):
    installed.append(_plugin("first", _echo("echo", [])))
    installed.append(_plugin("second", _echo("echo", []), _echo("serve", [])))
    found = commands.plugin_commands(["--help"])
    # pluggy calls the plugin registered last first: it gets the name
    assert found["echo"][0] == "second" and "serve" not in found
    err = capsys.readouterr().err
    assert "command 'serve' is already defined by core" in err
    assert "command 'echo' is already defined by" in err


def test_core_commands_do_not_load_plugins(installed, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("plugins loaded for a core command")

    monkeypatch.setattr(host, "make_plugin_manager", refuse)
    assert commands.plugin_commands(["get", "--config", "x.toml", "sid"]) == {}


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        commands.main(["--help"])
    return capsys.readouterr().out
