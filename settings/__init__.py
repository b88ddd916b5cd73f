"""The shipped defaults (``settings.toml``), installed as ``sessiongate.settings``."""
