"""Entry point of a worker process: ``python -m sessiongate.core.workerproc``.

A module of its own so that ``sessiongate.core.worker`` is imported under its real
name (running it as ``__main__`` would give backends a second ``Backend`` class).
"""

from sessiongate.core.worker import main

raise SystemExit(main())
