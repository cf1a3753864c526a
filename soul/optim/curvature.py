"""Curvature passes: the extra forward/backward work second-order optimizers need.

The loop calls ``hook.due(step)`` after each optimizer step and, when due, ``hook.run(...)``,
which leaves a gradient-like tensor in every ``.grad`` and folds it into the optimizer's curvature
EMA with ``optimizer.update_hessian()`` (Sophia's published recipe: update first, then refresh
curvature every ``interval`` steps, so over ``N`` steps the pass runs ``floor(N / interval)`` times).

* ``gnb`` (Gauss-Newton-Bartlett, Sophia-G): labels sampled from the model's own output
  distribution at the answer positions; the gradient of the mean cross-entropy on them,
  clipped like training gradients; ``h`` then estimates the Gauss-Newton diagonal / tokens.
* ``hutchinson`` (Sophia-H): ``u * (H u)`` with a Rademacher or Gaussian probe ``u``, H the
  Hessian of the unlearning objective on the step's batch (a double backward). The estimate is
  folded in as it is, not squared, and needs no B (``optim.bs=1``): the Sophia paper's Sophia-H.

SOUL's official variant needs no pass: its curvature is the step's own squared gradient
(``SophiaG(hessian_in_step=True)``), so its hook is ``None``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from soul.data.qa import IGNORE_INDEX

ESTIMATORS = ("gnb", "hutchinson")


def sampled_label_loss(model, batch: dict, generator: torch.Generator) -> torch.Tensor:
    """GNB: the mean cross-entropy on labels sampled from the model's own output distribution, at
    the labelled (answer) positions of ``batch``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    positions = batch["labels"][:, 1:] != IGNORE_INDEX
    flat = logits[:, :-1][positions]
    with torch.no_grad():
        probs = torch.softmax(flat.float(), dim=-1).cpu()
        sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(flat.device)
    return F.cross_entropy(flat.float(), sampled)


def sampled_label_backward(model, batch: dict, generator: torch.Generator) -> None:
    """Backward of ``sampled_label_loss``."""
    sampled_label_loss(model, batch, generator).backward()


def _concat(forget: dict, retain: dict | None) -> dict:
    if retain is None:
        return forget
    width = max(forget["input_ids"].shape[1], retain["input_ids"].shape[1])
    fill = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: torch.cat([F.pad(b[k], (0, width - b[k].shape[1]), value=v) for b in (forget, retain)])
            for k, v in fill.items()}


class CurvatureHook:
    """Runs one curvature estimator every ``interval`` optimizer steps."""

    def __init__(self, estimator: str, interval: int = 10, probe: str = "rademacher", seed: int = 0):
        if estimator not in ESTIMATORS:
            raise ValueError(f"optim.estimator must be one of {ESTIMATORS} (or in_step for soul_ref), "
                             f"got {estimator!r}")
        if interval < 1:
            raise ValueError(f"optim.interval must be >= 1, got {interval}")
        if probe not in ("rademacher", "gaussian"):
            raise ValueError(f"optim.probe must be rademacher or gaussian, got {probe!r}")
        self.estimator, self.interval, self.probe = estimator, interval, probe
        self.generator = torch.Generator().manual_seed(seed)
        self.passes = 0

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the same sequence of curvature samples."""
        return {"passes": self.passes, "generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.passes = state["passes"]
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))

    def due(self, step: int) -> bool:
        """True after optimizer steps interval, 2*interval, ... (1-based)."""
        return step % self.interval == 0

    def run(self, model, optimizer, batch: dict, objective, max_grad_norm: float | None, clip=None,
            engine_backward=None, engine_unclipped=None) -> None:
        """One curvature estimate from ``batch`` folded into ``optimizer``'s curvature EMA. ``clip``:
        the loop's gradient clipping (accelerate's, which knows about sharded parameters).
        ``engine_backward``: the backward of an engine that reduces, clips and steps the optimizer
        itself (DeepSpeed ZeRO, whose gradients exist only on its flat partitions inside that step):
        the pass then runs as one engine step in which ``optimizer.step()`` only updates curvature.
        ``engine_unclipped``: a context in which that engine does not clip (Hutchinson's estimate is
        a curvature, not a gradient)."""
        if engine_backward is not None:
            optimizer.zero_grad(set_to_none=True)
            if self.estimator == "gnb":
                with optimizer.curvature_only():
                    engine_backward(sampled_label_loss(model, _concat(batch["forget"], batch.get("retain")),
                                                       self.generator))
            else:
                # The double backward runs outside the engine, on its module's whole weights (ZeRO-2;
                # ZeRO-3 is refused), and reaches the engine's partitions as the gradient of
                # sum(p * estimate), which the engine averages over the processes as DDP's would.
                module = model.module
                params = [p for p in module.parameters() if p.requires_grad]
                estimates = self._hutchinson(module, params, batch, objective)
                surrogate = sum((p * e).sum() for p, e in zip(params, estimates))
                with optimizer.curvature_only(squared=False), engine_unclipped():
                    engine_backward(surrogate)
            optimizer.zero_grad(set_to_none=True)
            self.passes += 1
            return
        optimizer.zero_grad(set_to_none=True)
        params = [p for p in model.parameters() if p.requires_grad]
        if self.estimator == "gnb":
            sampled_label_backward(model, _concat(batch["forget"], batch.get("retain")), self.generator)
            if max_grad_norm:  # Sophia clips the sampled-label gradient like a training gradient
                (clip or torch.nn.utils.clip_grad_norm_)(params, max_grad_norm)
        else:
            for p, estimate in zip(params, _average_over_processes(self._hutchinson(model, params, batch, objective))):
                p.grad = estimate
        # GNB's estimate is B * g * g (B enters at the step); Hutchinson's u * Hu is the curvature itself.
        optimizer.update_hessian(squared=self.estimator == "gnb")
        optimizer.zero_grad(set_to_none=True)
        self.passes += 1

    def _hutchinson(self, model, params, batch, objective) -> list[torch.Tensor]:
        """``u * (H u)`` per parameter, for this process's batch. Every process draws the same probe
        (the generator is seeded alike), so the average over processes is the estimate for their
        whole batch."""
        # Fused attention kernels (flash, memory-efficient) have no double backward; the math one does.
        with sdpa_kernel(SDPBackend.MATH):
            loss, _ = objective(model, batch)
            grads = torch.autograd.grad(loss, params, create_graph=True)
        probes = []
        for p in params:
            if self.probe == "rademacher":
                u = torch.randint(0, 2, p.shape, generator=self.generator).to(p) * 2 - 1
            else:
                u = torch.randn(p.shape, generator=self.generator).to(p)
            probes.append(u)
        grad_dot_u = sum((g * u).sum() for g, u in zip(grads, probes))
        with sdpa_kernel(SDPBackend.MATH):
            hvps = torch.autograd.grad(grad_dot_u, params)
        return [(u * hu).detach() for u, hu in zip(probes, hvps)]


def _average_over_processes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean over the processes of a data-parallel run, in place (a double backward bypasses
    DDP's gradient hooks, so nothing else averages it). One all-reduce per tensor: no flat copy of
    every weight's estimate."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t)
            t /= dist.get_world_size()
    return tensors
