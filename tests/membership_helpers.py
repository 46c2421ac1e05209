"""Helpers for the membership core's unit tests: named cores, facts, and an instant network."""

from __future__ import annotations

import hashlib
import random
from typing import Callable

from p2pfs import wire
from p2pfs.address import Address
from p2pfs.membership.config import MembershipConfig
from p2pfs.membership.messages import Gossip, MemberFact, MemberMeta, MemberState
from p2pfs.membership.state import Membership, Send

ALIVE, SUSPECT, DEAD, LEFT = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
CONFIG = MembershipConfig()


def node_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def address(name: str) -> Address:
    return Address(f"{name}.test", 7000)


def meta(name: str) -> MemberMeta:
    return MemberMeta(f"{name}.test", 7000, "z1", 1000, wire.PROTOCOL_VERSION)


def make(name: str, *, now_s: float = 0.0, incarnation: int = 1, config: MembershipConfig = CONFIG, seed: int = 0) -> Membership:
    return Membership(
        node_id=node_id(name), address=address(name), zone="z1", capacity_bytes=1000,
        protocol_version=wire.PROTOCOL_VERSION, incarnation_initial=incarnation, config=config,
        rng=random.Random(seed), now_s=now_s,
    )


def alive(name: str, incarnation: int = 1) -> MemberFact:
    return MemberFact(node_id(name), incarnation, ALIVE, "", meta(name))


def fact(name: str, incarnation: int, state: MemberState, accuser: str = "") -> MemberFact:
    return MemberFact(node_id(name), incarnation, state, node_id(accuser) if accuser else "", None)


def teach(core: Membership, *facts: MemberFact, now_s: float = 0.0) -> list[Send]:
    return core.handle(address("teacher"), Gossip(tuple(facts)), now_s)


def state_of(core: Membership, name: str) -> tuple[MemberState, int] | None:
    member = core.member(node_id(name))
    return None if member is None else (member.state, member.incarnation)


class Net:
    """Instant delivery between cores by address, with a filter to lose messages."""

    def __init__(self, *cores: Membership) -> None:
        self.cores = {c.address: c for c in cores}
        self.log: list[tuple[Address, Send]] = []

    def deliver(self, sender: Address, sends: list[Send], now_s: float, lose: Callable[[Address, Send], bool] = lambda a, s: False) -> None:
        queue = [(sender, s) for s in sends]
        for _ in range(10_000):
            if not queue:
                return
            src, send = queue.pop(0)
            self.log.append((src, send))
            if send.to not in self.cores or lose(src, send):
                continue
            queue += [(send.to, s) for s in self.cores[send.to].handle(src, send.msg, now_s)]
        raise AssertionError("message storm")

    def tick(self, now_s: float, lose: Callable[[Address, Send], bool] = lambda a, s: False) -> None:
        for core in list(self.cores.values()):
            self.deliver(core.address, core.tick(now_s), now_s, lose)

    def run(self, until_s: float, step_s: float = 0.01, lose: Callable[[Address, Send], bool] = lambda a, s: False) -> float:
        now_s = 0.0
        while now_s < until_s:
            now_s = round(now_s + step_s, 6)
            self.tick(now_s, lose)
        return now_s


def joined(*names: str, config: MembershipConfig = CONFIG) -> tuple[Net, list[Membership]]:
    """Cores that know each other, ALIVE at incarnation 1."""
    cores = [make(n, config=config, seed=i) for i, n in enumerate(names)]
    for core in cores:
        teach(core, *(alive(n) for n in names))
        while core.pending_broadcasts:  # start with empty queues
            core._piggyback(None, 1 << 20)
    return Net(*cores), cores


def sends_of(sends: list[Send], kind: type) -> list[Send]:
    return [s for s in sends if isinstance(s.msg, kind)]
