"""Events on their way to subscribers: the per-session event log, subscriber cursors and
flow control.
"""
