"""The ``sessiongate`` command line: serve, check-config, plugins, keys, login and a client
for people.
"""

from sessiongate.core.cli.commands import main

__all__ = ["main"]
