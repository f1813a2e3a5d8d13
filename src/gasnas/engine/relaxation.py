"""How one search step weights the supernet's edges: softmax mixture or a sampled single path.

`search.relaxation`:
- `softmax` (DARTS, the reference): every op of every edge runs, weighted by softmax(α').
- `gumbel` (GDAS / FBNet): each step draws one op per edge by hard Gumbel-softmax at temperature
  τ; the forward pass runs only the drawn ops, the gradient reaches every α through the
  straight-through estimator. τ anneals linearly from `search.tau_max` to `search.tau_min` over
  the search epochs (the warm-up samples at tau_max). A weight step costs about one derived net
  with every edge kept, instead of one net per op. The architecture step's gradient
  (`search.path_gradient`): `sampled` (GDAS) differentiates only the drawn op's scale, ∂L/∂w_drawn,
  a weak and noisy signal; `all_ops` (default) also runs the other ops of each edge without a
  graph, so every op's weight gets ⟨∂L/∂y, op(x)⟩ on the sampled network (ProxylessNAS), at the
  cost of one no-grad forward of every op; `pair` draws a second op per edge (without
  replacement) that runs without a graph, and the softmax over the two ops' α' compares them
  (ProxylessNAS's two-path update), at the cost of one more op per edge. `sampled` favours the
  likeliest ops whatever their quality: when every op helps the loss alike, its expected update
  still raises the α of ops drawn more often than average; `all_ops` and `pair` expect zero then.
  `search.weight_path: uniform` trains the weights on uniformly drawn paths (SPOS / FairNAS)
  instead of paths drawn from α', so an op is not trained more because α' already favours it.

Both the weight step and the architecture step get their weights here, and so does the latency
term (`latency.expectation`): under `mixture`, softmax(α') for `softmax` and for `gumbel` the mean
of softmax(α') and the drawn one-hot path (the expectation plus the LUT latency of the ops that
actually ran); under `derivable`, for both relaxations, each edge's softmax over the ops that
derivation keeps on any edge (renormalised): not the free `none`, and not `skip_connect` when
`search.max_skip_per_cell` caps it (derivation keeps at most that many skips per cell and gives
every other edge its best op other than skip, so that op is what the edge costs). No latency
gradient then reaches an op derivation would replace, and E[Lat] prices the nets derivation makes.

`search.skip_dropout` (P-DARTS): each edge's `skip_connect` weight is dropped (inverted-dropout
scaled) with that probability per step, so the parameter-free path cannot win by being trained
fastest. Every draw comes from one CPU generator whose state the checkpoint keeps.
"""

from __future__ import annotations

from typing import Any

import torch

from gasnas.engine.sampling import mix_seed
from gasnas.space.cell import PathSample
from gasnas.space.ops import OPS

SAMPLER_STREAM = 3
SKIP_OP = "skip_connect"


def temperature(search_cfg: Any, epoch: int, step: int, steps_per_epoch: int) -> float:
    """τ at a position: tau_max through the warm-up, then linear to tau_min at the last step."""
    sc = search_cfg
    search_epochs = sc.epochs - sc.warmup_epochs
    if epoch < sc.warmup_epochs or search_epochs <= 0:
        return float(sc.tau_max)
    done = (epoch - sc.warmup_epochs) + step / max(1, steps_per_epoch)
    frac = min(1.0, done / max(1e-9, search_epochs - 1 / max(1, steps_per_epoch)))
    return float(sc.tau_max + (sc.tau_min - sc.tau_max) * frac)


class Relaxation:
    """Builds each step's cell weights (see the module docstring); owns the draws' generator."""

    def __init__(self, search_cfg: Any, ops: list[str], seed: int, expectation: str = "mixture") -> None:
        self.cfg = search_cfg
        self.mode = search_cfg.relaxation
        self.expectation = expectation
        self.skip = ops.index(SKIP_OP) if SKIP_OP in ops else None
        capped = search_cfg.max_skip_per_cell is not None
        # ops derivation does not keep on any edge it likes: `none`, and skip when capped
        self.excluded = torch.tensor([OPS[o].free or (capped and o == SKIP_OP) for o in ops])
        self.masks_ops = bool(self.excluded.any())
        self.generator = torch.Generator().manual_seed(mix_seed(seed, SAMPLER_STREAM))

    @property
    def sampled(self) -> bool:
        return self.mode == "gumbel"

    def step_weights(self, supernet: Any, epoch: int, step: int, steps_per_epoch: int, arch: bool = False
                     ) -> tuple[list[torch.Tensor] | list[PathSample], list[torch.Tensor]]:
        """(what the cells are weighted with, what E[Lat] is computed from) for one step
        (`arch`: the architecture step, which with `search.path_gradient: all_ops` also runs
        the other ops of each edge for their gradient). Differentiable in α and the GGM
        wherever they require grad. A uniform weight path depends on neither, so for it the GGM
        does not run and the E[Lat] weights are empty (the weight step has no latency term)."""
        if self.sampled and not arch and self.cfg.weight_path == "uniform":
            uniform = supernet.sample_uniform(self.generator)
            return [PathSample(self._drop_skips(p.weights), p.index, False, p.rivals) for p in uniform], []
        guided = supernet.guided_alphas()
        derivable = self.expectation == "derivable"
        if self.sampled:
            tau = temperature(self.cfg, epoch, step, steps_per_epoch)
            if arch and self.cfg.path_gradient == "pair":
                paths = supernet.sample_pair(self.generator, guided)
            else:
                paths = supernet.sample_path(tau, self.generator, guided)
            every = arch and self.cfg.path_gradient == "all_ops"
            net: list[Any] = [PathSample(self._drop_skips(p.weights), p.index, every, p.rivals) for p in paths]
            if not derivable:
                return net, [0.5 * (torch.softmax(a, dim=-1) + p.weights) for a, p in zip(guided, paths)]
        else:
            soft = [torch.softmax(a, dim=-1) for a in guided]
            net = [self._drop_skips(w.view_as(w)) for w in soft]
            if not derivable:
                return net, soft
        return net, [self.derivable(a) for a in guided]

    def derivable(self, alpha: torch.Tensor) -> torch.Tensor:
        """Each edge's softmax over the ops derivation keeps on any edge (the others weigh 0)."""
        if not self.masks_ops:
            return torch.softmax(alpha, dim=-1)
        return torch.softmax(alpha.masked_fill(self.excluded.to(alpha.device), float("-inf")), dim=-1)

    def eval_weights(self, supernet: Any) -> list[PathSample] | None:
        """What the supernet is evaluated with at an epoch end: the argmax path for `gumbel`
        (its weights were trained one path at a time), the softmax mixture (None) otherwise."""
        return supernet.argmax_path() if self.sampled else None

    def _drop_skips(self, w: torch.Tensor) -> torch.Tensor:
        p = float(self.cfg.skip_dropout)
        if self.skip is None or p <= 0:
            return w
        keep = (torch.rand(w.shape[0], generator=self.generator) >= p).to(w.dtype).to(w.device) / (1 - p)
        scale = torch.ones_like(w)
        scale[:, self.skip] = keep
        return w * scale

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])


def net_weight_tensors(weights: list[torch.Tensor] | list[PathSample]) -> list[torch.Tensor]:
    """The [edges, ops] tensors the cells are weighted with (a PathSample's straight-through
    weights), e.g. to read the cross-entropy's gradient per cell."""
    return [w.weights if isinstance(w, PathSample) else w for w in weights]
