"""Commands a plugin adds to the ``sessiongate`` command line (``sg_cli_commands``)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["PluginCommand"]


@dataclass(frozen=True)
class PluginCommand:
    """One top-level subcommand, e.g. acl's ``sessiongate tokens …``.

    ``add_arguments`` fills the command's parser (sub-actions with ``add_subparsers``);
    core has already added ``--config``. ``run(args, settings)`` does the work with
    the validated settings and returns the exit status; it may be a coroutine function.
    Output meant for scripts goes to stdout, everything for people to stderr.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Any], int | Awaitable[int]]
