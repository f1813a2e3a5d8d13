"""Time a derived net in a fresh Python process, against a reference net timed beside it.

Why a fresh process: after epochs of supernet training a search process's heap and thread
pools are in a state no deployed net sees. Why a reference: a CPU, a shared virtual one
especially, can run in phases. For seconds to minutes everything is ~1.4x slower (two nets:
13.5 / 16.3 ms in one process, 18.5 / 22.2 ms in the next, with no other process running and
no steal time), so one net's latency, measured once, says as much about the phase as about
the net. The ratio of two nets timed in alternating rounds does not depend on the phase (0.83
in both processes above). So the child times the candidate and the reference in turn,
`rounds` times, each turn at least MIN_TURN_MS long, and returns both per-round medians. The
caller turns the ratio into milliseconds with the reference's calmest median seen so far (other
processes and slow phases only ever add time): `calm_ms(ratio, reference)`.

The reference is a genotype (by default the search's first derived net) or a peer network
(`PeerReference`, e.g. LR-ASPP under `latency.target_ratio`): then every ratio is the one a
user compares against, measured beside it in the same process.

    python -m gasnas.latency.isolated REQUEST.json   # prints {"medians_ms": [...], ...} on stdout
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gasnas.config import LatencyConfig
from gasnas.errors import GasnasError
from gasnas.latency.measure import quiet_export
from gasnas.latency.sampling import genotype_signature
from gasnas.latency.timing import make_runner, time_callable
from gasnas.space.derived import DerivedNet
from gasnas.space.genotype import Genotype

TIMEOUT_S = 600
MIN_TURN_MS = 400.0
MAX_REPEATS = 500


@dataclass(frozen=True)
class PeerReference:
    """A peer network (gasnas.models.PEERS, random weights) as the latency reference."""

    peer: str
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "num_classes": int(self.num_classes)}

    def build(self) -> Any:
        from gasnas.models import build_peer  # torchvision: loaded only where a peer is timed

        return build_peer(self.peer, self.num_classes).eval()


def reference_from_dict(data: Any, source: str) -> Genotype | PeerReference:
    """A timing reference as saved by `to_dict`: a peer, else a genotype."""
    if isinstance(data, dict) and "peer" in data:
        try:
            return PeerReference(str(data["peer"]), int(data["num_classes"]))
        except (KeyError, TypeError, ValueError):
            raise GasnasError(f"{source}: a peer reference needs 'peer' and 'num_classes'") from None
    return Genotype.from_dict(data, source)


def build_reference(reference: Genotype | PeerReference) -> Any:
    """The network a reference times."""
    return reference.build() if isinstance(reference, PeerReference) else DerivedNet(reference)


@dataclass
class IsolatedTiming:
    """Per-round medians (ms) of the candidate and, when one was given, the reference."""

    medians_ms: list[float]
    reference_ms: list[float] = field(default_factory=list)

    @property
    def ms(self) -> float:
        """The candidate's best round (no reference needed)."""
        return min(self.medians_ms)

    @property
    def ratio(self) -> float:
        """Candidate / reference, the median over rounds of the per-round ratio (1 without a
        reference: the candidate is its own reference)."""
        if not self.reference_ms:
            return 1.0
        return statistics.median(c / r for c, r in zip(self.medians_ms, self.reference_ms))

    @property
    def reference_calm_ms(self) -> float:
        """The reference's best round (the candidate's, when it is its own reference)."""
        return min(self.reference_ms or self.medians_ms)


def measure_genotype_isolated(genotype: Any, lat_cfg: LatencyConfig, threads: int | None = None,
                              rounds: int = 3, reference: Any = None) -> IsolatedTiming:
    """Time `genotype`'s derived net (and `reference`'s, in alternation) in a fresh subprocess
    with `threads` intra-op threads (default: `lat_cfg.threads`, else this process's count)."""
    if threads is None:
        import torch

        threads = lat_cfg.threads or torch.get_num_threads()
    request = {"genotype": genotype.to_dict(), "latency": asdict(lat_cfg), "threads": int(threads),
               "rounds": int(rounds), "reference": reference.to_dict() if reference is not None else None}
    with tempfile.TemporaryDirectory(prefix="gasnas-measure-") as tmp:
        path = Path(tmp) / "request.json"
        path.write_text(json.dumps(request))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        try:
            proc = subprocess.run([sys.executable, "-m", "gasnas.latency.isolated", str(path)],
                                  capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise GasnasError(f"timing the derived net in a subprocess took over {TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {proc.returncode}"
        raise GasnasError(f"timing the derived net in a subprocess failed: {why}")
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        return IsolatedTiming([float(x) for x in out["medians_ms"]], [float(x) for x in out["reference_ms"]])
    except (IndexError, KeyError, TypeError, ValueError):
        raise GasnasError(f"timing the derived net in a subprocess gave no result: {proc.stdout[-200:]!r}") from None


def calm_ms(ratio: float, reference_calm_ms: float) -> float:
    """A candidate's latency in the machine's calmest observed phase."""
    return ratio * reference_calm_ms


def calm_measure(genotypes: list[Any], lat_cfg: LatencyConfig, reference: Any, rounds: int = 5,
                 threads: int | None = None, reference_calm_ms: float = math.inf,
                 processes: int = 1) -> tuple[list[float], float]:
    """Each genotype's latency on the calm-phase scale, and the reference's calmest round they
    are scaled by (at most `reference_calm_ms`, e.g. what a search recorded: engine/search.py
    `calm_reference`). Each genotype is timed beside `reference` in `processes` fresh processes
    (in turn with the other genotypes) and keeps the median of their ratios: within one process
    the per-round ratios agree to ~3%, across processes they moved up to ~10%."""
    timings: list[list[IsolatedTiming]] = [[] for _ in genotypes]
    for _ in range(max(1, processes)):
        for i, g in enumerate(genotypes):
            timings[i].append(measure_genotype_isolated(g, lat_cfg, threads, rounds, reference))
    calm_ref = min([reference_calm_ms, *(t.reference_calm_ms for ts in timings for t in ts)])
    return [calm_ms(statistics.median(t.ratio for t in ts), calm_ref) for ts in timings], calm_ref


class CalmLatency:
    """Latencies of a search's derived nets on one scale: each net's ratio to a reference net
    (`reference`, else the first net measured), times the reference's calmest median so far.
    Each distinct genotype is timed once; its ratio is kept, so later, calmer reference timings
    re-scale every earlier net too (`ms(signature)`)."""

    def __init__(self, lat_cfg: LatencyConfig, threads: int, rounds: int = 3,
                 reference: PeerReference | None = None) -> None:
        self.lat_cfg, self.threads, self.rounds = lat_cfg, int(threads), int(rounds)
        self.reference: Any = reference  # a PeerReference, or the Genotype of the first net measured
        self.reference_calm_ms = math.inf
        self.ratios: dict[str, float] = {}  # genotype signature -> latency / reference latency

    def measure(self, genotype: Any) -> float:
        """The calm-phase latency (ms) of `genotype`'s derived net; times it unless known."""

        sig = genotype_signature(genotype)
        if sig not in self.ratios:
            t = measure_genotype_isolated(genotype, self.lat_cfg, self.threads, self.rounds, self.reference)
            if self.reference is None:
                self.reference = genotype
            self.ratios[sig] = t.ratio
            self.reference_calm_ms = min(self.reference_calm_ms, t.reference_calm_ms)
        return self.ms(sig)

    def ratio(self, genotype: Any) -> float | None:
        """`genotype`'s latency / the reference's, if it was measured."""

        return self.ratios.get(genotype_signature(genotype))

    def ms(self, signature: str) -> float:
        return calm_ms(self.ratios[signature], self.reference_calm_ms)

    def final_ms(self, measured_ms: float | None, ratio: float | None) -> float | None:
        """An epoch's latency re-scaled by the reference's calmest timing of the whole search."""
        if ratio is not None and math.isfinite(self.reference_calm_ms):
            return calm_ms(ratio, self.reference_calm_ms)
        return measured_ms

    def peer_ms(self) -> float | None:
        """The peer reference's calmest timing so far (None without a peer, or before any)."""
        if isinstance(self.reference, PeerReference) and math.isfinite(self.reference_calm_ms):
            return self.reference_calm_ms
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference.to_dict() if self.reference is not None else None,
                "reference_calm_ms": self.reference_calm_ms, "ratios": dict(self.ratios)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ref = state.get("reference")
        self.reference = reference_from_dict(ref, "checkpoint: calm_latency.reference") if ref is not None else None
        self.reference_calm_ms = float(state.get("reference_calm_ms", math.inf))
        self.ratios = {str(k): float(v) for k, v in state.get("ratios", {}).items()}


def _run(request_path: str) -> dict[str, Any]:
    import torch

    request = json.loads(Path(request_path).read_text())
    threads = int(request["threads"])
    torch.set_num_threads(threads)
    lat = LatencyConfig(**request["latency"])
    nets: list[Any] = [Genotype.from_dict(request["genotype"], f"{request_path}: genotype")]
    if request.get("reference") is not None:
        nets.append(reference_from_dict(request["reference"], f"{request_path}: reference"))
    runners, repeats = [], []
    for g in nets:
        with quiet_export():
            run = make_runner(build_reference(g), lat.input_size, lat.backend, lat.device, lat.dtype, threads)
        probe = time_callable(run, lat.warmup, 3, lat.device).median_ms
        runners.append(run)
        repeats.append(min(MAX_REPEATS, max(lat.repeats, math.ceil(MIN_TURN_MS / max(probe, 1e-3)))))
    medians: list[list[float]] = [[] for _ in nets]
    for _ in range(max(1, int(request["rounds"]))):
        for i, run in enumerate(runners):
            medians[i].append(time_callable(run, 1, repeats[i], lat.device).median_ms)
    return {"medians_ms": medians[0], "reference_ms": medians[1] if len(nets) > 1 else [], "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gasnas.latency.isolated REQUEST.json", file=sys.stderr)
        return 2
    try:
        result = _run(args[0])
    except GasnasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
