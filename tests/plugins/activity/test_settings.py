"""The activity plugin's settings: each bad value refused at load, naming its key."""

from __future__ import annotations

import pytest

from sessiongate.core.config.settings import SettingsError
from sessiongate.core.pluginhost import host as plugin_host
from sessiongate.testing import write_config

pytestmark = pytest.mark.once


@pytest.mark.parametrize(("key", "value", "words"), [
    ("plugins.activity.sink", "kafka", "one of 'log', 'file'"),
    ("plugins.activity.path", "", "a file path"),
    ("plugins.activity.queue_capacity", 0, "> 0"),
    ("plugins.activity.sink_timeout_seconds", 0, "> 0"),
])
def test_bad_settings_are_refused_naming_the_key(tmp_path, key, value, words):
    config = write_config(tmp_path / "s.toml", {"plugins.activity.enabled": True, key: value})
    with pytest.raises(SettingsError) as error:
        plugin_host.load(str(config))
    assert any(p.startswith(f"{key} = ") and words in p for p in error.value.problems), \
        error.value.problems

