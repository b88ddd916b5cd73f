"""A session another gateway node holds, as this node knows it (cluster).

Core has no cluster of its own: a plugin (the cluster plugin) keeps a directory of the
sessions other nodes hold and hands them to core as :class:`RemoteSession` objects
(``sg_list_remote_sessions``). Core authorizes them like its own sessions (their owner
and tag are what ``sg_authorize`` reads) and lists them with their node.
"""

from __future__ import annotations

import dataclasses

from sessiongate.v1 import gateway_pb2

__all__ = ["RemoteSession"]


@dataclasses.dataclass(frozen=True)
class RemoteSession:
    """What a node knows of another node's session: enough to list and authorize it.

    :param state: a ``SessionState`` name (``READY`` …).
    :param node: the gRPC address of the node that holds it (its advertise address).
    """

    session_id: str
    state: str
    owner_key_id: str
    tag: str
    last_sequence: int
    node: str

    #: like an ended session: no worker, no distributor, not live here
    live = False
    worker = None
    distributor = None

    def info(self) -> gateway_pb2.SessionInfo:
        return gateway_pb2.SessionInfo(
            session_id=self.session_id, state=gateway_pb2.SessionState.Value(self.state),
            owner_key_id=self.owner_key_id, tag=self.tag, last_sequence=self.last_sequence,
            node=self.node)
