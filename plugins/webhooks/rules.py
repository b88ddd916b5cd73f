"""The webhooks plugin's settings rules (``plugins.webhooks.*``).

The defaults live in ``settings/settings.toml`` and nowhere else (S2.PIT.13): these
rules only judge values, and :class:`WebhookSettings` reads them once at startup. One
exception: the retry schedule ships empty, meaning :data:`STANDARD_SCHEDULE` (the
settings loader appends a user's list to a shipped non-empty one instead of replacing
it, so a non-empty shipped list could not be replaced).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import TYPE_CHECKING, Any

from sessiongate.core import Setting, positive_int, positive_number

if TYPE_CHECKING:
    from sessiongate.core import Settings

__all__ = ["WebhookSettings", "rules"]

P = "plugins.webhooks"
#: the retry schedule of Standard Webhooks: right away, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
#: 10 h (what an empty ``retry_schedule_seconds`` means)
STANDARD_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
#: attempts at most (the length of the retry schedule)
MAX_ATTEMPTS = 50
#: the longest wait the schedule may hold (seconds)
MAX_DELAY = 7 * 86400
_HOST = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
                   r"|\[[0-9a-f:.]+\]|[0-9.]+")


def _is_delay(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and 0 <= value <= MAX_DELAY)


def _schedule(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) <= MAX_ATTEMPTS
            and all(_is_delay(v) for v in value))


def _hosts(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(v, str) and _HOST.fullmatch(v) for v in value)


def _network(text: Any) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except (TypeError, ValueError):
        return False
    return isinstance(text, str)


def _networks(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(_network(v) for v in value)


def rules(settings: Settings) -> list[Setting]:
    """Every ``plugins.webhooks.*`` key with its rule (sg_add_validators)."""
    return [
        positive_int(f"{P}.max_in_flight",
                     "HTTP deliveries under way at once, over every endpoint; each endpoint "
                     "has at most one at a time, so its events arrive in order.",
                     maximum=1024),
        positive_number(f"{P}.timeout_seconds",
                        "How long one delivery attempt may take (connecting, sending, the "
                        "answer's status); longer counts as a failed attempt.",
                        maximum=300),
        Setting(f"{P}.retry_schedule_seconds",
                f"a list of at most {MAX_ATTEMPTS} numbers of seconds, each 0 to {MAX_DELAY}",
                _schedule,
                "The wait before each attempt of a delivery (the first is the wait before "
                "the first attempt, normally 0), each with up to 10 % random jitter; a "
                "delivery whose every attempt failed is failed (logged, counted, "
                "sg_webhook_failed). Empty: Standard Webhooks' schedule, 0, 5, 300, 1800, "
                "7200, 18000, 36000, 36000 (8 attempts over about 27 hours)."),
        positive_number(f"{P}.disable_after_hours",
                        "An endpoint whose attempts have all failed for this long is "
                        "disabled (its waiting deliveries fail; webhook.endpoint_disabled "
                        "goes to the others). A 410 Gone answer disables it at once.",
                        maximum=24 * 365),
        positive_number(f"{P}.retention_hours",
                        "Delivered and failed deliveries (and the events only they used) "
                        "are deleted this long after they ended.", maximum=24 * 3650),
        Setting(f"{P}.allow_http_hosts", "a list of host names or IP addresses, lower case",
                _hosts, "Hosts that may be sent to over plain http:// (everything else "
                "must be https://). Their addresses are still checked (allow_networks)."),
        Setting(f"{P}.allow_networks",
                "a list of IP networks (\"10.0.0.0/8\", \"127.0.0.1/32\", \"fd00::/8\")",
                _networks, "Address ranges an endpoint may resolve to although they are "
                "private, loopback, link-local or otherwise not public (refused by "
                "default: SSRF guard)."),
    ]


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """The validated ``plugins.webhooks`` values, typed."""

    max_in_flight: int
    timeout: float
    schedule: tuple[float, ...]
    disable_after: float  # seconds
    retention: float  # seconds
    http_hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def from_settings(cls, settings: Any) -> WebhookSettings:
        table = settings.plugins.webhooks
        return cls(
            max_in_flight=int(table.max_in_flight),
            timeout=float(table.timeout_seconds),
            schedule=tuple(float(v) for v in table.retry_schedule_seconds)
            or STANDARD_SCHEDULE,
            disable_after=float(table.disable_after_hours) * 3600,
            retention=float(table.retention_hours) * 3600,
            http_hosts=frozenset(str(h).lower() for h in table.allow_http_hosts),
            networks=tuple(ipaddress.ip_network(str(n), strict=False)
                           for n in table.allow_networks))
