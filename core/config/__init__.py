"""Settings (dynaconf, validated all at once) and logging setup."""
