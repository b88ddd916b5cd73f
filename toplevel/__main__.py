"""``python -m sessiongate`` runs the same CLI as the ``sessiongate`` script."""

from sessiongate.core.cli.commands import main

raise SystemExit(main())
