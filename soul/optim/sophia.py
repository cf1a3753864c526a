"""SophiaG (Liu et al. 2023), the optimizer behind SOUL, with switches for SOUL's own variant.

Per parameter, ``step(bs)`` does (published SophiaG, github.com/Liuhong99/Sophia):

    theta <- theta * (1 - lr * weight_decay)
    m     <- beta1 * m + (1 - beta1) * g
    theta <- theta - lr * clip(m / (rho * bs * h + eps), -1, 1)

and ``update_hessian()`` folds the current ``.grad`` into the curvature EMA,
``h <- beta2 * h + (1 - beta2) * g^2``. Which gradient that is, and how often, is the
estimator's business (``soul.optim.curvature``): GNB (labels sampled from the model), or, in
SOUL's official code, the step's own gradient. A Hutchinson estimate ``u * Hu`` is a curvature
already and enters unsquared (``update_hessian(squared=False)``, with ``bs = 1``).

The switches reproduce the official SOUL code exactly when set as in ``conf/optim/soul_ref.yaml``:

* ``hessian_in_step=True``: ``step()`` first calls ``update_hessian()`` on the step's gradient
  (SOUL refreshes curvature every step from the unlearning loss's own squared gradient);
* ``double_momentum=True``: the momentum EMA is applied twice per step (SOUL's
  ``update_exp_avg()`` plus the update's own), so beta1 acts as beta1^2;
* ``bs``: fixed at 5120 in SOUL (never passed); soul's ``sophia`` passes the label tokens of each step.

The update uses multi-tensor ``torch._foreach_*`` kernels and a single temporary (AdamW also
needs one); ``clip(m / d, -1, 1)`` equals the published ``sign(m) * min(|m| / d, 1)`` bit for
bit. Diagnostics are read off that temporary after the update: exactly for tensors up to 65,536
coordinates, at a fixed stride (``diagnostics_stride``, 1 = exact) for larger ones.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

_EXACT_BELOW = 1 << 16  # tensors up to this size enter the diagnostics whole


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (FSDP2) tensor; the tensor itself otherwise."""
    return t.to_local() if isinstance(t, DTensor) else t


class SophiaG(torch.optim.Optimizer):
    """Sophia with a diagonal curvature EMA and element-wise clipping; see the module docstring."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.965, 0.99), rho: float = 0.04,
                 weight_decay: float = 1e-1, *, maximize: bool = False, capturable: bool = False,
                 bs: int = 5120, eps: float = 1e-15, hessian_in_step: bool = False,
                 double_momentum: bool = False, clamp_negative_curvature: bool = False,
                 track_diagnostics: bool = True, diagnostics_stride: int = 64):
        if lr < 0.0:
            raise ValueError(f"SophiaG: invalid learning rate {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"SophiaG: betas must be in [0, 1), got {betas}")
        if rho < 0.0:
            raise ValueError(f"SophiaG: invalid rho {rho}")
        if weight_decay < 0.0:
            raise ValueError(f"SophiaG: invalid weight_decay {weight_decay}")
        if capturable:
            raise ValueError("SophiaG: capturable=True (CUDA graphs) is not supported")
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)
        self.bs = bs
        self.eps = eps
        self.hessian_in_step = hessian_in_step
        self.double_momentum = double_momentum
        self.clamp_negative_curvature = clamp_negative_curvature
        self.track_diagnostics = track_diagnostics
        if diagnostics_stride < 1:
            raise ValueError(f"SophiaG: diagnostics_stride must be >= 1, got {diagnostics_stride}")
        self.diagnostics_stride = diagnostics_stride
        self._diag: dict[str, torch.Tensor] = {}
        self._hessian_norm: float | None = None
        self._curvature_only, self._curvature_squared = False, True
        # Set when an engine hands step() this process's partition of flat parameters (DeepSpeed ZeRO-2):
        # diagnostics then sum over processes, as for FSDP's sharded parameters, and add up the step()
        # calls of one engine step (DeepSpeed calls it once per parameter group) until diagnostics() reads them.
        self.partitioned = False
        self._diag_parts: list[dict] = []

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._hessian_norm = None

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _grads(self, group) -> tuple[list, list]:
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        return params, grads

    @torch.no_grad()
    def update_hessian(self, squared: bool = True) -> None:
        """``h <- beta2 * h + (1 - beta2) * grad^2`` for every parameter with a gradient (GNB, and
        SOUL's squared step gradient). ``squared=False`` folds in ``.grad`` itself: a Hutchinson
        estimate ``u * (H u)``, which is already a curvature (and may be negative; under ``maximize``
        it is negated with the gradient, as the curvature of the maximized function's negation is)."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            params, grads = self._grads(group)
            if not params:
                continue
            hessians = [self._state(p)["hessian"] for p in params]
            torch._foreach_mul_(hessians, beta2)
            if squared:
                torch._foreach_addcmul_(hessians, grads, grads, value=1 - beta2)
            else:
                torch._foreach_add_(hessians, grads, alpha=1 - beta2)
        self._hessian_norm = None  # recomputed on the next diagnostics() call

    @contextlib.contextmanager
    def curvature_only(self, squared: bool = True):
        """While open, ``step()`` folds the gradient into the curvature EMA (``update_hessian(squared)``)
        and moves no weight: the curvature pass of an engine that calls ``step()`` itself after every
        backward (DeepSpeed)."""
        self._curvature_only, self._curvature_squared = True, squared
        try:
            yield self
        finally:
            self._curvature_only, self._curvature_squared = False, True

    @torch.no_grad()
    def update_exp_avg(self) -> None:
        """``m <- beta1 * m + (1 - beta1) * grad``: the extra momentum update of SOUL's code."""
        for group in self.param_groups:
            beta1 = group["betas"][0]
            params, grads = self._grads(group)
            if params:
                exp_avgs = [self._state(p)["exp_avg"] for p in params]
                torch._foreach_mul_(exp_avgs, beta1)
                torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)

    @torch.no_grad()
    def step(self, closure=None, bs: int | None = None):
        """One Sophia update with ``bs`` (default ``self.bs``) in the clipping denominator."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._curvature_only:
            self.update_hessian(self._curvature_squared)
            return loss
        bs = self.bs if bs is None else bs
        if self.hessian_in_step:
            self.update_hessian()
        if self.double_momentum:
            self.update_exp_avg()
        sums: list[torch.Tensor] = []
        clipped: list[torch.Tensor] = []
        numel, sharded = 0, False
        for group in self.param_groups:
            params, grads = self._grads(group)
            if not params:
                continue
            beta1 = group["betas"][0]
            lr, wd, rho = group["lr"], group["weight_decay"], group["rho"]
            states = [self._state(p) for p in params]
            exp_avgs = [s["exp_avg"] for s in states]
            torch._foreach_add_([s["step"] for s in states], 1.0)
            if wd != 0:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
            # The one temporary: the denominator, then (in place) the clipped update m / d.
            update = torch._foreach_mul([s["hessian"] for s in states], rho * bs)
            if self.clamp_negative_curvature:  # Hutchinson estimates can be negative
                torch._foreach_clamp_min_(update, 0.0)
            torch._foreach_add_(update, self.eps)
            for m, u in zip(exp_avgs, update):
                torch.div(m, u, out=u).clamp_(-1.0, 1.0)
            torch._foreach_add_(params, update, alpha=-lr)
            if self.track_diagnostics:
                # Large tensors are read at a fixed stride: an exact figure would cost three more full
                # passes per step; 1/64 of millions of coordinates estimates a fraction to ~1e-3.
                # Sharded parameters count their local shard; diagnostics() sums over the processes.
                stride = self.diagnostics_stride
                update = [local_shard(u) for u in update]
                sharded = sharded or any(isinstance(p, DTensor) for p in params)
                samples = [u.view(-1)[::stride] if u.numel() > _EXACT_BELOW else u.view(-1) for u in update]
                # each sample stands for its whole tensor: weight it by numel / sample size
                weights = [u.numel() / x.numel() for u, x in zip(update, samples)]
                sums += [n * w for n, w in zip(torch._foreach_norm(samples, 1), weights)]
                clipped += [(x.abs() >= 1.0).sum() * w for x, w in zip(samples, weights)]
                numel += sum(u.numel() for u in update)
            del update
        if self.track_diagnostics and numel:
            diag = {"clipped": torch.stack(clipped).sum(), "abs_update": torch.stack(sums).sum(),
                    "numel": numel, "sharded": sharded or self.partitioned}
            if self.partitioned:
                self._diag_parts.append(diag)
            else:
                self._diag = diag
        return loss

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Fraction of clipped coordinates (Sophia's win rate is its complement), mean
        |delta theta| / lr of the last step (decay excluded), and the curvature EMA's norm.
        The first two are measured on the sampled coordinates (see ``diagnostics_stride``)."""
        if self._diag_parts:
            parts, self._diag_parts = self._diag_parts, []
            self._diag = {key: sum(part[key] for part in parts) for key in ("clipped", "abs_update", "numel")}
            self._diag["sharded"] = True
        if not self._diag:
            return {}
        d = self._diag
        totals = torch.stack([d["clipped"].float(), d["abs_update"].float(),
                              torch.tensor(float(d["numel"]), device=d["clipped"].device)])
        if d["sharded"] and dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)  # collective: every process of an FSDP run logs each step
        clipped, abs_update, numel = totals.tolist()
        if self._hessian_norm is None:
            hessians = [local_shard(s["hessian"]) for s in self.state.values() if "hessian" in s]
            square = torch.stack(torch._foreach_norm(hessians)).square().sum() if hessians else torch.zeros(())
            if d["sharded"] and dist.is_available() and dist.is_initialized():
                dist.all_reduce(square)
            self._hessian_norm = float(square.sqrt())
        clip = clipped / numel
        return {"clip_fraction": clip, "win_rate": 1.0 - clip, "mean_update_over_lr": abs_update / numel,
                "hessian_norm": self._hessian_norm}
