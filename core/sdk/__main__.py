"""Entry point of a worker process: ``python -m sessiongate.core.sdk``.

A module of its own so that ``sessiongate.core.sdk.worker`` is imported under its real
name (running it as ``__main__`` would give backends a second ``Backend`` class).
"""

from sessiongate.core.sdk.worker import main

raise SystemExit(main())
