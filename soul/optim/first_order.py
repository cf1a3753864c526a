"""First-order baselines beyond torch's own: sign of momentum (the ablation for clipped Sophia)."""

from __future__ import annotations

import torch


class SignSGD(torch.optim.Optimizer):
    """Sign-momentum descent: ``m <- beta*m + (1-beta)*g``; ``theta <- theta*(1-lr*wd) - lr*sign(m)``.

    With every coordinate clipped, Sophia's update is exactly this step, so comparing the two
    tells whether curvature or just the sign is doing the work.
    """

    def __init__(self, params, lr: float = 1e-4, beta: float = 0.9, weight_decay: float = 0.0):
        if lr < 0 or not 0.0 <= beta < 1.0 or weight_decay < 0:
            raise ValueError(f"SignSGD: invalid lr={lr}, beta={beta} or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay))
        self._moved = self._numel = 0

    def diagnostics(self) -> dict[str, float]:
        """Mean |delta theta| / lr of the last step (decay excluded): the share of coordinates
        with a non-zero momentum, each of which moves by exactly lr."""
        return {"mean_update_over_lr": float(self._moved) / self._numel} if self._numel else {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        moved, numel = torch.zeros(()), 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            moms = []
            for p in params:
                if "momentum" not in self.state[p]:
                    self.state[p]["momentum"] = torch.zeros_like(p)
                moms.append(self.state[p]["momentum"])
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_mul_(moms, group["beta"])
            torch._foreach_add_(moms, grads, alpha=1 - group["beta"])
            signs = torch._foreach_sign(moms)
            torch._foreach_add_(params, signs, alpha=-group["lr"])
            moved += torch.stack(torch._foreach_norm(signs, 1)).sum()
            numel += sum(s.numel() for s in signs)
        self._moved, self._numel = moved, numel
        return loss
