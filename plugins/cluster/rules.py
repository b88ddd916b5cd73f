"""The cluster plugin's settings rules (``plugins.cluster.*``) and their typed values.

The defaults live in ``settings/settings.toml``; these rules only judge values (every
problem of every key is reported at once, exit 2). The plugin is blocked when switched
off, so they apply exactly when it is on: ``advertise_address`` is then required.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from typing import TYPE_CHECKING, Any

from sessiongate.core import Setting, string

if TYPE_CHECKING:
    from sessiongate.core import Settings

__all__ = ["SECRET_KEYS", "ClusterSettings", "rules"]

P = "plugins.cluster"
#: the Redis URL may carry a password: never printed by check-config
SECRET_KEYS = (f"{P}.redis_url",)
STREAM_PATTERN = r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}"
NODE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def _redis_url(value: Any) -> bool:
    """``redis://`` or ``rediss://`` (TLS) with a host, an optional port and database."""
    if not isinstance(value, str):
        return False
    try:
        url = urllib.parse.urlsplit(value)
        port = url.port
    except ValueError:
        return False
    database = url.path.lstrip("/")
    return (url.scheme in ("redis", "rediss") and bool(url.hostname)
            and (port is None or 0 < port < 65536)
            and (database == "" or (database.isdigit() and int(database) < 16384))
            and not url.query and not url.fragment)


def _advertise_address(value: Any) -> bool:
    """host:port a client can dial: a name or an address, not 0.0.0.0 or [::]."""
    if not isinstance(value, str) or ":" not in value:
        return False
    host, _, port = value.rpartition(":")
    if not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return True  # a host name


def rules(settings: Settings) -> list[Setting]:
    """Every ``plugins.cluster.*`` key with its rule (sg_add_validators)."""
    return [
        Setting(f"{P}.redis_url",
                "a redis:// or rediss:// (TLS) URL with a host, an optional port and "
                "database number (redis://127.0.0.1:6379/0)",
                _redis_url, "The Redis every node of the cluster shares (a password in the "
                "URL is a secret: never logged or printed).", secret=True),
        string(f"{P}.stream",
               "The Redis Stream of session snapshots (the directory and a public "
               "lifecycle stream); keys starting with it and ':' are the plugin's too "
               "(docs/plugins/cluster.md).", pattern=STREAM_PATTERN,
               rule="1 to 128 of A-Z a-z 0-9 : . _ -, starting with a letter or digit"),
        Setting(f"{P}.node_id", "empty, or 1 to 64 of A-Z a-z 0-9 . _ -, starting with a "
                "letter or digit", lambda v: isinstance(v, str) and (
                    v == "" or re.fullmatch(NODE_ID_PATTERN, v) is not None),
                "This node's name in the cluster (its consumer group, its sessions' "
                "owner). Empty: the reattach instance id, else a random id kept in "
                "state_dir/cluster-node-id. Unique per node."),
        Setting(f"{P}.advertise_address",
                "host:port that clients can dial (not 0.0.0.0 or [::]), required",
                _advertise_address, "The gRPC address of this node as clients reach it: "
                "calls for its sessions that reach another node are redirected there "
                "(FAILED_PRECONDITION, trailer sessiongate-node)."),
    ]


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """The validated ``plugins.cluster`` values, typed."""

    redis_url: str = dataclasses.field(repr=False)
    stream: str
    node_id: str
    advertise_address: str

    @classmethod
    def from_settings(cls, settings: Any) -> ClusterSettings:
        table = settings.plugins.cluster
        return cls(redis_url=str(table.redis_url), stream=str(table.stream),
                   node_id=str(table.node_id), advertise_address=str(table.advertise_address))

    @property
    def redis_where(self) -> str:
        """The Redis server for log lines: host:port/db, never a password."""
        url = urllib.parse.urlsplit(self.redis_url)
        return f"{url.hostname}:{url.port or 6379}/{url.path.lstrip('/') or '0'}"
