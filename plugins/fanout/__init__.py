"""The fanout plugin (see its issue; not implemented yet: registers no hooks)."""
