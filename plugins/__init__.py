"""Built-in plugins; each one is an independent package switched by settings."""
