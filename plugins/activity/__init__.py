"""activity: opt-in session-activity events for the calls that ask for them.

Off by default (``plugins.activity.enabled``). With it on, a gRPC interceptor
(``sg_grpc_interceptors``) tracks every call whose metadata has
``x-session-track: true`` and a non-empty ``x-session-context``: it removes
``x-session-track`` and ``x-session-operation`` before the handler runs
(strip-on-consume: nothing the gateway forwards carries them on), measures the call,
and puts one event on a bounded queue; one task the gateway owns hands the events to
the sinks: this plugin's own (the log or a JSON-lines file), then the ``sg_activity``
implementations of other plugins. A call's outcome never depends on any of it.
Settings:

* ``plugins.activity.sink`` - ``"log"`` or ``"file"``;
* ``plugins.activity.path`` - the file sink's file (relative: under ``state_dir``);
* ``plugins.activity.queue_capacity`` - events waiting for the sinks at most; more are
  dropped and counted (``activity_dropped``);
* ``plugins.activity.sink_timeout_seconds`` - how long other plugins' sinks may take
  per event.

See docs/plugins/activity.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sessiongate.core import (
    Setting,
    StashKey,
    counter,
    hookimpl,
    one_of,
    positive_int,
    positive_number,
)

from .interceptor import ActivityInterceptor, TrackedCall
from .publisher import DROPPED, SINK_TIMEOUTS, Publisher, log
from .sinks import SINK_ERRORS, FileSink, LogSink, make_sink

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI, Metric, Settings

__all__ = ["Activity", "ActivityInterceptor", "TrackedCall"]


class Activity:
    """The plugin's state in one gateway: its queue and publishing task, its sink."""

    def __init__(self, gateway: GatewayAPI) -> None:
        settings = gateway.settings.plugins.activity
        self.sink: LogSink | FileSink = make_sink(gateway)
        self.publisher = Publisher(gateway, int(settings.queue_capacity),
                                   float(settings.sink_timeout_seconds), self.sink.write)

    def start(self, gateway: GatewayAPI) -> None:
        self.sink.open()
        gateway.spawn(self.publisher.run(), "activity-publisher")

    async def stop(self) -> None:
        """After the publishing task was cancelled (the gateway owns it): close the sink,
        say how many events were left unpublished."""
        await self.sink.close(self.publisher.sink_timeout)
        if len(self.publisher):
            log.info("activity: %d events were not published (the gateway stopped)",
                     len(self.publisher))


ACTIVITY: StashKey[Activity] = StashKey("activity")


def _activity(gateway: GatewayAPI) -> Activity:
    """This gateway's :class:`Activity` (made by whichever hook comes first: the gRPC
    server may be built before the gateway starts, or after)."""
    activity = gateway.stash.get(ACTIVITY)
    if activity is None:
        activity = gateway.stash[ACTIVITY] = Activity(gateway)
    return activity


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return [
        one_of("plugins.activity.sink", ("log", "file"),
               "Where this plugin writes activity events: the log (INFO, logger "
               "sessiongate.activity) or a JSON-lines file (plugins.activity.path). Other "
               "plugins' sinks (sg_activity) get them too."),
        Setting("plugins.activity.path", "a file path (not empty)",
                lambda v: isinstance(v, str) and bool(v.strip()) and "\x00" not in v,
                "The file sink's file (appended to, created 0600); a relative path is "
                "under state_dir."),
        positive_int("plugins.activity.queue_capacity",
                     "Events waiting for the sinks at most; an event beyond it is dropped "
                     "and counted (activity_dropped), the call is unaffected.",
                     maximum=1_000_000),
        positive_number("plugins.activity.sink_timeout_seconds",
                        "How long other plugins' sinks (sg_activity) may take over one "
                        "event; then it is given up (counted: activity_sink_timeouts) and "
                        "the next one goes.", maximum=3600),
    ]


@hookimpl
def sg_metrics() -> Sequence[Metric]:
    return [
        counter(DROPPED, "Activity events dropped because plugins.activity.queue_capacity "
                "events were already waiting for the sinks."),
        counter(SINK_TIMEOUTS, "Activity events the sinks did not take within "
                "plugins.activity.sink_timeout_seconds."),
        counter(SINK_ERRORS, "Activity events the built-in sink could not write (the file "
                "could not be opened or written, or too many lines waited for it)."),
    ]


@hookimpl
def sg_grpc_interceptors(gateway: GatewayAPI) -> Sequence[ActivityInterceptor]:
    return [ActivityInterceptor(_activity(gateway).publisher.offer, gateway.call_ids)]


@hookimpl
def sg_startup(gateway: GatewayAPI) -> None:
    _activity(gateway).start(gateway)


@hookimpl
async def sg_shutdown(gateway: GatewayAPI) -> None:
    activity = gateway.stash.get(ACTIVITY)
    if activity is not None:
        await activity.stop()
