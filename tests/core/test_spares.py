"""Spare workers: a refused open never hands its spare to anyone; a dead one is replaced at
once (the used-and-replaced case is in test_workers.py)."""

from __future__ import annotations

import grpc
import psutil
import pytest

from sessiongate.core import hookimpl
from sessiongate.core.errors import PermissionDenied
from sessiongate.testing import wait_for

pytestmark = pytest.mark.asyncio


class DenyList:
    def __init__(self) -> None:
        self.refused: list[str] = []

    @hookimpl(tryfirst=True)
    def sg_session_open(self, session, identity):
        if session.client_name == "denied":
            self.refused.append(session.session_id)
            raise PermissionDenied("client name is deny-listed")


async def test_a_refused_open_never_hands_its_spare_to_the_next_client(make_gateway):
    deny = DenyList()
    gw = await make_gateway(extra_plugins=(deny,), **{"workers.spare_workers": 1})
    manager = gw.gateway.sessions
    await wait_for(lambda: len(manager.spares.ready) == 1)
    spare_session, spare_worker = manager.spares.ready[0]
    client = gw.client()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.open(client_name="denied")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert deny.refused == [spare_session.session_id]  # the spare was offered, then refused
    info = await client.open(client_name="next")
    assert info.session_id != spare_session.session_id
    assert manager.live[info.session_id].stash is not spare_session.stash
    await wait_for(lambda: spare_worker.returncode is not None)  # the refused spare exited
    assert not psutil.pid_exists(spare_worker.pid) or \
        psutil.Process(spare_worker.pid).status() == psutil.STATUS_ZOMBIE



async def test_a_spare_that_dies_is_replaced_at_once_not_at_the_next_open(make_gateway):
    gw = await make_gateway(**{"workers.spare_workers": 1})
    manager = gw.gateway.sessions
    await wait_for(lambda: len(manager.spares.ready) == 1)
    dead = manager.spares.ready[0][1]
    psutil.Process(dead.pid).kill()
    # no open in between: the pool notices the loss and starts another by itself
    await wait_for(lambda: [h for _s, h in manager.spares.ready if h is not dead] != [])
    assert all(h is not dead for _s, h in manager.spares.ready)
