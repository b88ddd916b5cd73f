"""fanout's settings are validated at boot, every problem reported at once."""

from __future__ import annotations

import pytest

from sessiongate.core.plugins import load
from sessiongate.core.settings import SettingsError
from sessiongate.core.testing import write_config

pytestmark = pytest.mark.requires_plugin("fanout")


def test_every_bad_fanout_setting_is_reported_together(tmp_path):
    config = write_config(tmp_path / "bad.toml", {
        "plugins.fanout.max_subscribers_per_session": 0,
        "plugins.fanout.replay_retention_seconds": -1,
        "plugins.fanout.replay_buffer_capacity": 20_000,  # above events.queue_capacity
        "events.queue_capacity": 10_000,
    })
    with pytest.raises(SettingsError) as err:
        load(str(config))
    problems = "\n".join(err.value.problems)
    assert "plugins.fanout.max_subscribers_per_session = 0" in problems
    assert "plugins.fanout.replay_retention_seconds = -1" in problems
    assert "plugins.fanout.replay_buffer_capacity = 20000" in problems
    assert "events.queue_capacity" in problems


def test_a_ring_that_fits_the_queue_is_accepted(tmp_path):
    config = write_config(tmp_path / "ok.toml", {
        "plugins.fanout.replay_buffer_capacity": 0,
        "plugins.fanout.replay_retention_seconds": 0,
    })
    settings, _pm = load(str(config))
    assert settings.plugins.fanout.replay_buffer_capacity == 0
