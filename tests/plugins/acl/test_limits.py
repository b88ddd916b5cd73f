"""The login limits' building blocks: the failure table (with a fake clock) and how a
gRPC peer name becomes the address the per-client limit counts."""

from __future__ import annotations

import pytest

from sessiongate.plugins.acl.limits import FailureBackoff, client_address

pytestmark = [pytest.mark.requires_plugin("acl"), pytest.mark.once]  # unit tests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_its_maximum_and_is_forgotten_after_a_quiet_window():
    clock = Clock()
    table = FailureBackoff(threshold=3, window=100, backoff=2, maximum=10, capacity=10,
                           clock=clock)
    assert [table.failed("u") for _ in range(3)] == [0, 0, 2]
    assert table.retry_after("u") == 2 and table.retry_after("v") == 0
    clock.now += 2
    assert table.retry_after("u") == 0
    assert [table.failed("u") for _ in range(3)] == [4, 8, 10]  # doubling, capped
    # a window counts from the end of the refusal: not yet quiet long enough
    clock.now += 10 + 99
    assert table.failed("u") == 10
    clock.now += 10 + 101
    assert table.prune() == 1 and len(table) == 0
    assert table.failed("u") == 0  # forgotten: counting starts again


def test_backoff_table_is_bounded_and_a_success_forgets():
    table = FailureBackoff(threshold=1, window=100, backoff=5, maximum=5, capacity=2,
                           clock=Clock())
    for key in ("a", "b", "c"):
        assert table.failed(key) == 5
    assert len(table) == 2
    assert table.retry_after("a") == 0  # the least recently failed was dropped
    assert table.retry_after("c") == 5
    table.succeeded("c")
    assert table.retry_after("c") == 0


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:192.0.2.7:51234", "192.0.2.7"),
    ("ipv6:[2001:db8::1]:443", "2001:db8::/64"),
    ("ipv6:%5B2001:db8::2%5D:443", "2001:db8::/64"),
    ("unix:/run/sg.sock", "unix"),
    ("", ""),
])
def test_client_address_of_a_grpc_peer(peer, address):
    assert client_address(peer) == address
