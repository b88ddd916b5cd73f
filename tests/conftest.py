pytest_plugins = ["sessiongate.core.testing"]
