"""Influence unlearning (IU): the static, one-shot second-order update SOUL makes iterative.

    theta <- theta + scale * (H_r + damping * I)^-1  grad L_f(theta)

with a diagonal ``H_r`` estimated on retain data: the empirical Fisher (mean squared gradient
of the retain NLL, true labels) or GNB (labels sampled from the model). The runner feeds the
retain curvature passes through ``update_hessian()`` and the gradient of the objective (GA,
i.e. ``-L_f``) through ``.grad``, then takes the single ``step()``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from soul.optim.sophia import local_shard


class InfluenceUnlearning(torch.optim.Optimizer):
    """One damped diagonal Newton step; ``update_hessian()`` averages squared gradients."""

    one_shot = True

    def __init__(self, params, scale: float = 1.0, damping: float = 1e-3):
        if damping <= 0:
            raise ValueError(f"iu: damping must be > 0, got {damping}")
        super().__init__(params, dict(lr=scale, damping=damping))

    @torch.no_grad()
    def update_hessian(self) -> None:
        """Running mean of ``grad^2`` over the calls so far."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "hessian" not in state:
                    state["hessian"] = torch.zeros_like(p)
                    state["passes"] = 0
                state["passes"] += 1
                state["hessian"].add_(p.grad * p.grad - state["hessian"], alpha=1.0 / state["passes"])

    @torch.no_grad()
    def step(self, closure=None):
        """``theta <- theta - scale * grad / (h + damping)`` (``grad`` of -L_f, so L_f rises)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        totals = torch.zeros(3, dtype=torch.float64)  # sum |delta|, coordinates, sum h^2
        sharded = False
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                h = self.state[p].get("hessian")
                if h is None:
                    raise RuntimeError("iu: step() before any update_hessian(): no retain curvature")
                delta = p.grad / (h + group["damping"])
                p.add_(delta, alpha=-group["lr"])
                # FSDP's sharded parameters: this process's shard; the totals are summed over processes.
                sharded = sharded or isinstance(delta, DTensor)
                delta, h = local_shard(delta), local_shard(h)
                totals += torch.stack([delta.abs().sum().double().cpu(), torch.tensor(float(delta.numel())),
                                       h.pow(2).sum().double().cpu()])
        if sharded:  # (on the parameters' device: NCCL reduces GPU tensors only)
            on_device = totals.to(local_shard(p).device)
            dist.all_reduce(on_device)
            totals = on_device.cpu()
        moved, numel, h_sq = totals.tolist()
        self._diag = {"mean_update_over_lr": moved / max(numel, 1), "hessian_norm": h_sq ** 0.5}
        return loss

    def diagnostics(self) -> dict[str, float]:
        """Mean |delta theta| / scale of the single step and the norm of the retain curvature."""
        return dict(getattr(self, "_diag", {}))
