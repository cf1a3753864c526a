"""Optimizers, registered by name and built from ``conf/optim/<name>.yaml``.

Every optimizer sees the same parameter groups (weight decay on matrices, none on norms
and biases, as in HF's Trainer), so first- and second-order runs differ only here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf

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
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build ``optim.name`` with the remaining keys of the ``optim`` config as arguments."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    name = kwargs.pop("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; registered: {sorted(OPTIMIZERS)}")
    weight_decay = kwargs.pop("weight_decay", 0.0)
    return OPTIMIZERS[name](param_groups(model, weight_decay), **kwargs)


@register_optimizer("adamw")
def adamw(params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """torch's AdamW with fp32 state and the multi-tensor (foreach) kernel."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, foreach=True)


@register_optimizer("sgd")
def sgd(params, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=True)
