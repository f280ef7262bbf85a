"""The agent's part in a multi-node rendezvous: its advertise address, the port it
reserves, and telling torchrun giving up on its peers from any other failure."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mlsm.agent.rendezvous import advertise_address, failed_to_meet, reserve_port
from mlsm.ranks import line_rank


def test_the_advertise_address_is_the_one_that_reaches_the_controller() -> None:
    assert advertise_address("http://127.0.0.1:8470") == "127.0.0.1"
    assert advertise_address("https://localhost") in ("127.0.0.1", "::1")


def test_a_reserved_port_is_free_to_bind_and_a_foreign_address_still_gets_one() -> None:
    port = reserve_port("127.0.0.1")
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", port))  # what torchrun's c10d store does next
    assert 0 < reserve_port("192.0.2.1") < 65536  # not this machine's: any free port


@pytest.mark.parametrize(
    ("tail", "met"),
    [
        pytest.param(
            "torch.distributed.elastic.rendezvous.api.RendezvousTimeoutError\n", False, id="join"
        ),
        pytest.param(
            "RendezvousConnectionError: The connection to the C10d store has failed.\n",
            False,
            id="host-never-up",
        ),
        pytest.param("[rank0]: ZeroDivisionError: division by zero\n", True, id="the-job"),
    ],
)
def test_a_run_that_gave_up_on_its_peers_is_told_from_one_that_failed(
    tmp_path: Path, tail: str, met: bool
) -> None:
    log = tmp_path / "output.log"
    log.write_text("x" * 100_000 + "\n" + tail)
    assert failed_to_meet(log) is not met
    assert not failed_to_meet(tmp_path / "missing.log")


def test_a_line_s_rank_is_read_from_torchrun_s_prefix_only() -> None:
    assert line_rank("[rank3]: epoch 1") == 3
    assert line_rank("[rank12]: x") == 12
    assert line_rank("launching 2 processes [rank1]: x") is None
    assert line_rank("[rank]: x") is None
