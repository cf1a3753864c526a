"""Curvature passes: the extra forward/backward work second-order optimizers need.

The loop calls ``hook.due(step)`` after each optimizer step and, when due, ``hook.run(...)``,
which leaves a gradient-like tensor in every ``.grad`` and calls ``optimizer.update_hessian()``
(Sophia's published recipe: update first, then refresh curvature every ``interval`` steps, so
over ``N`` steps the pass runs ``floor(N / interval)`` times).

* ``gnb`` (Gauss-Newton-Bartlett, Sophia-G): labels sampled from the model's own output
  distribution at the answer positions; the gradient of the mean cross-entropy on them,
  clipped like training gradients; ``h`` then estimates the Gauss-Newton diagonal / tokens.
* ``hutchinson`` (Sophia-H): ``u * (H u)`` with a Rademacher or Gaussian probe ``u``, H the
  Hessian of the unlearning objective on the step's batch (a double backward).

SOUL's official variant needs no pass: its curvature is the step's own squared gradient
(``SophiaG(hessian_in_step=True)``), so its hook is ``None``.
"""

from __future__ import annotations

import torch
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
            engine_backward=None) -> None:
        """One curvature estimate from ``batch`` folded into ``optimizer``'s curvature EMA. ``clip``:
        the loop's gradient clipping (accelerate's, which knows about sharded parameters).
        ``engine_backward``: the backward of an engine that reduces, clips and steps the optimizer
        itself (DeepSpeed ZeRO, whose gradients exist only on its flat partitions inside that step):
        the GNB pass then runs as one engine step in which ``optimizer.step()`` only updates curvature."""
        if engine_backward is not None:
            if self.estimator != "gnb":  # the loop refuses this earlier, with advice (configure_deepspeed)
                raise ValueError(f"optim.estimator={self.estimator}: only gnb runs through an engine's backward")
            optimizer.zero_grad(set_to_none=True)
            with optimizer.curvature_only():
                engine_backward(sampled_label_loss(model, _concat(batch["forget"], batch.get("retain")),
                                                   self.generator))
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
            self._hutchinson(model, params, batch, objective)
        optimizer.update_hessian()
        optimizer.zero_grad(set_to_none=True)
        self.passes += 1

    def _hutchinson(self, model, params, batch, objective) -> None:
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
        for p, u, hu in zip(params, probes, hvps):
            p.grad = (u * hu).detach()
