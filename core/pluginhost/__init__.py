"""The plugin host: the pluggy manager, hook calls with isolation, and core's default hook
implementations.
"""
