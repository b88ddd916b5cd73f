"""The gateway's side of worker processes: launch, handshake, commands, heartbeats, spares,
and stopping them.
"""
