"""The chaos harness's short profile on real gateway processes (tests/chaos/harness.py,
docs/proof.md): the checker must find nothing wrong with any subscriber.

The seed is new each run and printed; ``SG_CHAOS_SEED=N`` replays one (so does
``python -m tests.chaos --seed N``). The long profile: ``python -m tests.chaos --long``.
"""

from __future__ import annotations

import pytest

from .checker import FAIL, GATEWAY_KILL
from .harness import SHORT, new_seed, run

pytestmark = [pytest.mark.asyncio, pytest.mark.once]


async def test_every_subscriber_keeps_the_stream_guarantees_under_faults(tmp_path):
    seed = new_seed()
    replay = (f"replay: SG_CHAOS_SEED={seed} pytest tests/chaos/test_chaos.py, "
              f"or python -m tests.chaos --seed {seed}")
    print(f"chaos seed {seed}; {replay}")
    report = await run(SHORT, seed, tmp_path)
    if report.violations:
        pytest.fail(f"{report.text()}\n{replay}", pytrace=False)
    # not a vacuous pass: the faults were injected and events flowed
    assert report.faults[GATEWAY_KILL] == len(SHORT.scenarios), report.text()
    assert report.faults[FAIL] >= 1 and report.events_checked > 0, report.text()
