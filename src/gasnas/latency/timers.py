"""How a search times its derived nets: one interface, two timers (`search.measure_isolated`).

The search only asks a timer for a genotype's latency (`measure`), for the number to report for
an epoch once the search is over (`final_ms`), for the peer's latency on the same scale where a
budget is a fraction of a peer's (`peer_ms`, `latency.target_ratio`), and for its resumable
state. Which timer runs is
a choice of the machine, not of the search:
- `CalmLatency` (latency/isolated.py, the default): a fresh process per distinct net, timed in
  alternation with a reference net, on the calmest phase's scale, for CPUs whose speed drifts;
- `InProcessLatency`: the derived net timed in the search's own process, once, e.g. on a
  dedicated machine or a GPU where a fresh process per measurement buys nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from gasnas.config import LatencyConfig
from gasnas.latency.estimator import measure_genotype_ms, measure_net_ms
from gasnas.latency.isolated import CalmLatency, PeerReference


class DerivedNetTimer(Protocol):
    def measure(self, genotype: Any) -> float:
        """The derived net's latency in ms."""

    def ratio(self, genotype: Any) -> float | None:
        """Its latency relative to the timer's reference net, where the timer has one."""

    def final_ms(self, measured_ms: float | None, ratio: float | None) -> float | None:
        """An epoch's latency as known at the end of the search, from what the epoch logged."""

    def peer_ms(self) -> float | None:
        """The peer reference's latency on the scale of `measure` (None without a peer)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class InProcessLatency:
    """The derived net timed in this process (median of `latency.repeats` batch-1 runs); the
    global RNG is left as it was, so timing does not change a seeded run."""

    def __init__(self, lat_cfg: LatencyConfig, peer: PeerReference | None = None) -> None:
        self.lat_cfg, self.peer = lat_cfg, peer
        self._peer_ms: float | None = None

    def measure(self, genotype: Any) -> float:
        with torch.random.fork_rng(devices=[]):
            return float(measure_genotype_ms(genotype, self.lat_cfg))

    def ratio(self, genotype: Any) -> float | None:
        return None

    def final_ms(self, measured_ms: float | None, ratio: float | None) -> float | None:
        return measured_ms

    def peer_ms(self) -> float | None:
        """The peer timed once in this process (its first call), like the derived nets."""
        if self.peer is not None and self._peer_ms is None:
            with torch.random.fork_rng(devices=[]):
                self._peer_ms = float(measure_net_ms(self.peer.build(), self.lat_cfg))
        return self._peer_ms

    def state_dict(self) -> dict[str, Any]:
        return {"peer_ms": self._peer_ms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._peer_ms = state.get("peer_ms")


def derived_net_timer(lat_cfg: LatencyConfig, threads: int, isolated: bool, rounds: int,
                      peer: PeerReference | None = None) -> DerivedNetTimer:
    """The timer `search.measure_isolated` asks for; with `peer`, the nets are timed against it."""

    return CalmLatency(lat_cfg, threads, rounds, peer) if isolated else InProcessLatency(lat_cfg, peer)
