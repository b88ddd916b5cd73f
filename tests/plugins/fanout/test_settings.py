"""fanout's settings are validated at boot, every problem reported at once."""

from __future__ import annotations

import pytest

from sessiongate.core.config.settings import SettingsError
from sessiongate.core.pluginhost.host import load
from sessiongate.testing import write_config

pytestmark = [pytest.mark.requires_plugin("fanout"), pytest.mark.once]  # settings rules


def test_every_bad_fanout_setting_is_reported_together(tmp_path):
    config = write_config(tmp_path / "bad.toml", {
        "plugins.fanout.max_subscribers_per_session": 0,
        "plugins.fanout.replay_retention_seconds": -1,
        "plugins.fanout.replay_buffer_capacity": -5,
    })
    with pytest.raises(SettingsError) as err:
        load(str(config))
    problems = "\n".join(err.value.problems)
    assert "plugins.fanout.max_subscribers_per_session = 0" in problems
    assert "plugins.fanout.replay_retention_seconds = -1" in problems
    assert "plugins.fanout.replay_buffer_capacity = -5" in problems


def test_ring_size_and_per_subscriber_bound_are_independent(tmp_path):
    """A ring far larger than the per-subscriber bound is sound: replay is read where
    it lies, never copied into a subscriber's queue (CONTRACT §8.1)."""
    config = write_config(tmp_path / "ok.toml", {
        "plugins.fanout.replay_buffer_capacity": 100_000,
        "events.queue_capacity": 10_000,
    })
    settings, _pm = load(str(config))
    assert settings.plugins.fanout.replay_buffer_capacity == 100_000
    assert settings.events.queue_capacity == 10_000


def test_an_empty_ring_is_accepted(tmp_path):
    config = write_config(tmp_path / "ok.toml", {
        "plugins.fanout.replay_buffer_capacity": 0,
        "plugins.fanout.replay_retention_seconds": 0,
    })
    settings, _pm = load(str(config))
    assert settings.plugins.fanout.replay_buffer_capacity == 0
