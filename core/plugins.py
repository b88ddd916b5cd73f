"""The plugin host: builds the pluggy manager and calls hooks with isolation.

Built-in plugins (fanout, reconnect, acl, reattach) register through this
distribution's own entry points, exactly like third-party ones (devpi's model).
A plugin switched off in settings is *blocked before loading*, so its module is
never imported and its hooks never run.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any

import pluggy

from sessiongate.core import PROJECT, hookspecs
from sessiongate.core.errors import GatewayError, Internal
from sessiongate.core.settings import Setting, Settings, load_settings

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "Hooks",
    "installed_plugin_names",
    "load",
    "make_plugin_manager",
    "plugin_listing",
]

log = logging.getLogger("sessiongate.plugins")

ENTRY_POINT_GROUP = "sessiongate.plugins"
#: name → module; the name is also the settings key, the entry point and the tox factor.
BUILTIN_PLUGINS: dict[str, str] = {
    "fanout": "sessiongate.plugins.fanout",
    "reconnect": "sessiongate.plugins.reconnect",
    "acl": "sessiongate.plugins.acl",
    "reattach": "sessiongate.plugins.reattach",
}
CORE_PLUGIN = "sessiongate.core.defaults"
DISABLED_ENV = "SESSIONGATE_DISABLED_PLUGINS"
TRACE_ENV = "SESSIONGATE_TRACE_HOOKS"


def _switched_off(settings: Settings | None) -> set[str]:
    off = {n.strip() for n in os.environ.get(DISABLED_ENV, "").split(",") if n.strip()}
    if settings is not None:
        for name, table in (settings.get("plugins") or {}).items():
            if hasattr(table, "get") and table.get("enabled") is False:
                off.add(str(name).lower())
    return off


def make_plugin_manager(
    settings: Settings | None,
    *,
    load_entrypoints: bool = True,
    extra_plugins: Iterable[Any] = (),
) -> pluggy.PluginManager:
    """Build a fresh manager (never a module global).

    1. add the hookspecs; 2. block every plugin switched off (settings
    ``plugins.<name>.enabled = false`` or ``SESSIONGATE_DISABLED_PLUGINS``);
    3. register core's defaults; 4. load entry points (blocked ones are not even
    imported); 5. register built-ins whose entry point is missing (a source tree
    with stale metadata); 6. ``extra_plugins`` (tests); 7. ``check_pending()``.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in _switched_off(settings):
        pm.set_blocked(name)
    pm.register(importlib.import_module(CORE_PLUGIN), name="core")
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for name, module in BUILTIN_PLUGINS.items():
            if not pm.is_blocked(name) and pm.get_plugin(name) is None:
                pm.register(importlib.import_module(module), name=name)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    for caller in pm.hook.__dict__.values():
        if isinstance(caller, pluggy.HookCaller):
            for impl in caller.get_hookimpls():
                if impl.hookwrapper or impl.wrapper:
                    raise ValueError(
                        f"plugin {impl.plugin_name!r}: hook wrappers are not supported "
                        f"on {caller.name} (sessiongate calls implementations one by one)"
                    )
    if os.environ.get(TRACE_ENV) == "1":
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    return pm


def installed_plugin_names(extra_plugins: Iterable[Any] = ()) -> set[str]:
    """Every name a ``plugins.<name>`` settings table may have: the built-in plugins, the
    installed entry points (read from metadata, nothing imported) and ``extra_plugins``,
    whether switched on or off."""
    names = set(BUILTIN_PLUGINS)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None)  # pluggy's canonical name
        if isinstance(name, str):
            names.add(name)
    return {name.lower() for name in names}


def load(
    config_file: str | None = None,
    *,
    load_entrypoints: bool = True,
    extra_plugins: Sequence[Any] = (),
) -> tuple[Settings, pluggy.PluginManager]:
    """Load settings and plugins together, validating everything at once."""
    holder: dict[str, pluggy.PluginManager] = {}

    def plugin_rules(settings: Settings) -> list[Setting]:
        pm = make_plugin_manager(settings, load_entrypoints=load_entrypoints,
                                 extra_plugins=extra_plugins)
        holder["pm"] = pm
        rules: list[Setting] = []
        for contributed in Hooks(pm).collect("sg_add_validators", settings=settings):
            rules.extend(contributed)
        return rules

    settings = load_settings(config_file, plugin_rules=plugin_rules,
                             installed_plugins=installed_plugin_names(extra_plugins))
    return settings, holder["pm"]


class Hooks:
    """Calls hooks one implementation at a time so one plugin cannot take down the rest."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    def _impls(self, name: str) -> list[pluggy.HookImpl]:
        # pluggy calls the last registered first; tryfirst/trylast are already ordered.
        return list(reversed(getattr(self.pm.hook, name).get_hookimpls()))

    @staticmethod
    def _args(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> list[Any]:
        return [kwargs[a] for a in impl.argnames]

    @staticmethod
    def _where(kwargs: dict[str, Any]) -> str:
        session = kwargs.get("session")
        sid = getattr(session, "session_id", None)
        return f" (session {sid})" if sid else ""

    def implemented(self, name: str) -> bool:
        return bool(self._impls(name))

    def collect(self, name: str, **kwargs: Any) -> list[Any]:
        """Observer, sync: every non-None result; a raising implementation is logged."""
        results = []
        for impl in self._impls(name):
            try:
                result = impl.function(*self._args(impl, kwargs))
            except Exception:
                log.exception("plugin %s failed in %s%s; ignored", impl.plugin_name, name,
                              self._where(kwargs))
                continue
            if result is not None:
                results.append(result)
        return results

    def notify_sync(self, name: str, **kwargs: Any) -> None:
        """Observer, sync hook called where awaiting is impossible."""
        self.collect(name, **kwargs)

    async def notify(self, name: str, **kwargs: Any) -> None:
        """Observer, maybe-async: awaited in order; failures logged and ignored."""
        for impl in self._impls(name):
            try:
                result = impl.function(*self._args(impl, kwargs))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %s failed in %s%s; ignored", impl.plugin_name, name,
                              self._where(kwargs))

    async def veto(self, name: str, **kwargs: Any) -> None:
        """Veto, maybe-async: a GatewayError refuses; any other exception fails closed."""
        for impl in self._impls(name):
            try:
                result = impl.function(*self._args(impl, kwargs))
                if inspect.isawaitable(result):
                    await result
            except GatewayError as refusal:
                log.info("plugin %s refused %s%s: %s", impl.plugin_name, name,
                         self._where(kwargs), refusal.message)
                raise
            except Exception:
                log.exception("plugin %s failed in %s%s; request refused", impl.plugin_name,
                              name, self._where(kwargs))
                raise Internal(f"plugin {impl.plugin_name} failed; request refused") from None

    def decide(self, name: str, **kwargs: Any) -> Any:
        """Decision (firstresult), sync: first non-None; an exception fails closed."""
        for impl in self._impls(name):
            try:
                result = impl.function(*self._args(impl, kwargs))
            except GatewayError:
                raise
            except Exception:
                log.exception("plugin %s failed in %s%s; request refused", impl.plugin_name,
                              name, self._where(kwargs))
                raise Internal(f"plugin {impl.plugin_name} failed; request refused") from None
            if result is not None:
                return result
        return None


def plugin_listing(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Every known plugin (built-in, installed entry point, or registered), with its hooks."""
    names: dict[str, str] = dict(BUILTIN_PLUGINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name, ep.value)
    rows = []
    registered = {pm.get_name(p): p for p in pm.get_plugins()}
    for name in sorted(set(names) | set(registered)):
        plugin = registered.get(name)
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or []) if plugin else []
        rows.append({
            "name": name,
            "module": names.get(name) or getattr(plugin, "__name__", repr(plugin)),
            "enabled": plugin is not None,
            "builtin": name in BUILTIN_PLUGINS or name == "core",
            "hooks": hooks,
        })
    return rows
