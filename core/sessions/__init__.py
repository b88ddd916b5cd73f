"""The session domain: a session's state machine and lease, and the manager that opens and
ends them.
"""
