"""The plugin host: builds the pluggy manager and calls hooks with isolation.

Every plugin, the built-in ones (fanout, reconnect, acl, reattach) included, is
found through the entry-point group ``sessiongate.plugins`` (devpi's model): the
built-ins are this distribution's own entry points. A plugin switched off in
settings is *blocked before loading*, so its module is never imported and its
hooks never run.
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

from sessiongate.core import ENTRY_POINT_GROUP, PROJECT, hookspecs
from sessiongate.core.config.settings import (
    Setting,
    Settings,
    builtin_plugins,
    installed_plugin_names,
    load_settings,
)
from sessiongate.core.errors import GatewayError, Internal

__all__ = [
    "CoreHookError",
    "Hooks",
    "load",
    "make_plugin_manager",
    "plugin_listing",
]

log = logging.getLogger("sessiongate.plugins")

CORE_PLUGIN = "sessiongate.core.pluginhost.defaults"
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
    3. register core's defaults; 4. load the entry points, built-in and third-party
    alike (blocked ones are not even imported); 5. ``extra_plugins`` (tests);
    6. ``check_pending()``.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in _switched_off(settings):
        pm.set_blocked(name)
    pm.register(importlib.import_module(CORE_PLUGIN), name="core")
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
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
    """Calls hooks through pluggy, one implementation at a time, so one plugin cannot
    take down the rest.

    Each implementation is run by the plugin manager's hook executor (the function
    ``pm.hook.<name>(...)`` runs), given that implementation alone: pluggy's tracing
    (``SESSIONGATE_TRACE_HOOKS=1``) and call monitoring see every call. pluggy has no
    public per-implementation call, and its subset callers need hashable plugins, so
    this is the one place that uses ``PluginManager._hookexec``
    (``tests/core/test_plugins_host.py`` checks it still traces). Every hook whose
    specification takes ``gateway`` gets the
    :class:`~sessiongate.core.plugin_api.GatewayAPI` given here. An argument core failed
    to pass is core's bug, reported as such (``INTERNAL``), never blamed on a plugin.
    """

    def __init__(self, pm: pluggy.PluginManager, gateway: Any = None) -> None:
        self.pm = pm
        self.gateway = gateway

    def _impls(self, name: str) -> list[pluggy.HookImpl]:
        # pluggy calls the last registered first; tryfirst/trylast are already ordered.
        return list(reversed(getattr(self.pm.hook, name).get_hookimpls()))

    def _kwargs(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        spec = getattr(self.pm.hook, name).spec
        if self.gateway is not None and spec is not None and "gateway" in spec.argnames:
            return {"gateway": self.gateway, **kwargs}
        return kwargs

    @staticmethod
    def _where(kwargs: dict[str, Any]) -> str:
        session = kwargs.get("session")
        sid = getattr(session, "session_id", None)
        return f" (session {sid})" if sid else ""

    def _one(self, impl: pluggy.HookImpl, name: str, kwargs: dict[str, Any]) -> Any:
        """Call one implementation; its result (None when it returned None)."""
        missing = [arg for arg in impl.argnames if arg not in kwargs]
        if missing:  # core did not pass what the specification declares: our bug
            log.error("core called %s with the wrong arguments: %s missing", name,
                      ", ".join(missing))
            raise CoreHookError(name)
        return self.pm._hookexec(name, [impl], kwargs, True)

    async def _one_awaited(self, impl: pluggy.HookImpl, name: str,
                           kwargs: dict[str, Any]) -> Any:
        result = self._one(impl, name, kwargs)
        return await result if inspect.isawaitable(result) else result

    def _failed(self, impl: pluggy.HookImpl, name: str, kwargs: dict[str, Any],
                outcome: str) -> None:
        log.exception("plugin %s failed in %s%s; %s", impl.plugin_name, name,
                      self._where(kwargs), outcome)

    def collect(self, name: str, **kwargs: Any) -> list[Any]:
        """Observer, sync: every non-None result; a raising implementation is logged."""
        return [result for _plugin, result in self.collect_by_plugin(name, **kwargs)]

    def collect_by_plugin(self, name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """:meth:`collect`, each result with the name of the plugin that gave it."""
        kwargs = self._kwargs(name, kwargs)
        results = []
        for impl in self._impls(name):
            try:
                result = self._one(impl, name, kwargs)
            except CoreHookError:
                raise
            except Exception:
                self._failed(impl, name, kwargs, "ignored")
                continue
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def notify_sync(self, name: str, **kwargs: Any) -> None:
        """Observer, sync hook called where awaiting is impossible."""
        self.collect(name, **kwargs)

    async def notify(self, name: str, **kwargs: Any) -> None:
        """Observer, maybe-async: awaited in order; failures logged and ignored."""
        await self.gather(name, **kwargs)

    async def gather(self, name: str, **kwargs: Any) -> list[Any]:
        """Observer, maybe-async, with results: every non-None result, awaited in order;
        a raising implementation is logged and left out."""
        kwargs = self._kwargs(name, kwargs)
        results = []
        for impl in self._impls(name):
            try:
                result = await self._one_awaited(impl, name, kwargs)
            except CoreHookError:
                raise
            except Exception:
                self._failed(impl, name, kwargs, "ignored")
                continue
            if result is not None:
                results.append(result)
        return results

    async def veto(self, name: str, **kwargs: Any) -> None:
        """Veto, maybe-async: a GatewayError refuses; any other exception fails closed."""
        await self._first(name, kwargs, veto=True)

    async def decide(self, name: str, **kwargs: Any) -> Any:
        """Decision (firstresult), maybe-async: the first non-None result, awaited if it
        is awaitable (datasette's ``await_me_maybe``); an exception fails closed."""
        return await self._first(name, kwargs, veto=False)

    async def _first(self, name: str, kwargs: dict[str, Any], *, veto: bool) -> Any:
        kwargs = self._kwargs(name, kwargs)
        for impl in self._impls(name):
            try:
                result = await self._one_awaited(impl, name, kwargs)
            except CoreHookError:
                raise
            except GatewayError as refusal:
                if veto:
                    log.info("plugin %s refused %s%s: %s", impl.plugin_name, name,
                             self._where(kwargs), refusal.message)
                raise
            except Exception:
                self._failed(impl, name, kwargs, "request refused")
                raise Internal(f"plugin {impl.plugin_name} failed; request refused") from None
            if result is not None and not veto:
                return result
        return None


class CoreHookError(Internal):
    """Core called a hook without an argument its specification declares: a core bug."""

    def __init__(self, hook: str) -> None:
        super().__init__(f"internal error calling {hook} (see the gateway log)")


def plugin_listing(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Every known plugin (built-in, installed entry point, or registered), with its hooks."""
    builtin = builtin_plugins()
    names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    rows = []
    registered = {pm.get_name(p): p for p in pm.get_plugins()}
    for name in sorted(set(names) | set(registered)):
        plugin = registered.get(name)
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or []) if plugin else []
        rows.append({
            "name": name,
            "module": names.get(name) or getattr(plugin, "__name__", repr(plugin)),
            "enabled": plugin is not None,
            "builtin": name in builtin or name == "core",
            "hooks": hooks,
        })
    return rows
