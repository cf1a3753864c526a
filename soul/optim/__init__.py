"""Optimizers, registered by name and built from ``conf/optim/<name>.yaml``.

Every optimizer sees the same parameter groups (weight decay on matrices, none on norms
and biases, as in HF's Trainer), so first- and second-order runs differ only here. A config's
``estimator``/``interval``/``probe`` keys describe the curvature pass a second-order optimizer
needs; ``build_optimizer`` turns them into a ``CurvatureHook`` that the loop runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from soul.optim.curvature import CurvatureHook
from soul.optim.first_order import SignSGD
from soul.optim.influence import InfluenceUnlearning
from soul.optim.sophia import SophiaG

__all__ = ["SophiaG", "SignSGD", "InfluenceUnlearning", "CurvatureHook", "build_optimizer", "OPTIMIZERS"]

Builder = Callable[..., torch.optim.Optimizer]
OPTIMIZERS: dict[str, Builder] = {}


def register_optimizer(name: str) -> Callable[[Builder], Builder]:
    def add(fn: Builder) -> Builder:
        if name in OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} is registered twice")
        OPTIMIZERS[name] = fn
        return fn
    return add


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay every trainable matrix; leave 1-D parameters (norm weights, biases) undecayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    # An empty group is left out (RMU trains MLP matrices only): DeepSpeed drops empty groups, which
    # would leave the learning-rate schedule with more groups than the optimizer it steps.
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


CURVATURE_KEYS = ("estimator", "interval", "probe")
IN_STEP = "in_step"  # SOUL's official curvature: the step's own squared gradient, no extra pass


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, seed: int = 0
                    ) -> tuple[torch.optim.Optimizer, CurvatureHook | None]:
    """Build ``optim.name`` from the remaining keys of the ``optim`` config, and its curvature hook."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    name = kwargs.pop("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; registered: {sorted(OPTIMIZERS)}")
    curvature = {k: kwargs.pop(k) for k in CURVATURE_KEYS if k in kwargs}
    weight_decay = kwargs.pop("weight_decay", 0.0)
    try:
        optimizer = OPTIMIZERS[name](param_groups(model, weight_decay), **kwargs)
    except TypeError as err:  # an unknown or missing key in conf/optim/<name>.yaml
        raise ValueError(f"optim={name}: {err}") from err
    estimator = curvature.get("estimator")
    if estimator == "hutchinson" and getattr(optimizer, "bs_from_tokens", False):
        raise ValueError(f"optim={name}: bs=tokens scales a squared mean gradient into a curvature (GNB); the "
                         "Hutchinson estimate u * (H u) is a curvature already: use optim.bs=1")
    hook = None
    if getattr(optimizer, "one_shot", False):
        optimizer.curvature_estimator = estimator or "fisher"
    elif estimator not in (None, IN_STEP):
        hook = CurvatureHook(estimator, curvature.get("interval", 10), curvature.get("probe", "rademacher"), seed)
    return optimizer, hook


@register_optimizer("adamw")
def adamw(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """torch's AdamW with fp32 state and the multi-tensor (foreach) kernel."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, foreach=True)


@register_optimizer("sgd")
def sgd(params, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=True)


@register_optimizer("signsgd")
def signsgd(params, lr: float, beta: float = 0.9) -> torch.optim.Optimizer:
    return SignSGD(params, lr=lr, beta=beta)


def _sophia(params, lr: float, betas=(0.9, 0.95), rho: float = 0.04, bs="tokens", **switches) -> SophiaG:
    """``bs="tokens"`` passes each step's label-token count (Sophia's B); an int fixes it (SOUL: 5120)."""
    optimizer = SophiaG(params, lr=lr, betas=tuple(betas), rho=rho, bs=5120 if bs == "tokens" else int(bs),
                        **switches)
    optimizer.bs_from_tokens = bs == "tokens"
    return optimizer


for _name in ("sophia", "sophia_h", "soul_ref"):
    register_optimizer(_name)(_sophia)


@register_optimizer("iu")
def influence_unlearning(params, scale: float = 1.0, damping: float = 1e-3,
                         retain_batches: int = 16) -> InfluenceUnlearning:
    optimizer = InfluenceUnlearning(params, scale=scale, damping=damping)
    optimizer.retain_batches = retain_batches
    return optimizer
