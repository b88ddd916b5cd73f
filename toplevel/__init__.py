"""sessiongate: a session gateway fronting per-session worker processes.

Kept import-free on purpose: worker processes import ``sessiongate.core.sdk.worker``
and must start fast (see bench/).
"""

__version__ = "0.1.0"
