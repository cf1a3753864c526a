"""Unlearning objectives: pure loss functions, registered by name.

Each objective takes the model, a forget batch and a retain batch (dicts of tensors with
``input_ids``, ``attention_mask`` and ``labels``), plus its own hyperparameters from
``conf/objective/<name>.yaml``, and returns the loss to **minimise** together with the
separate terms to log. Adding a method is one function here and one YAML file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Objective = Callable[..., tuple[torch.Tensor, dict[str, float]]]
OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str) -> Callable[[Objective], Objective]:
    def add(fn: Objective) -> Objective:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        OBJECTIVES[name] = fn
        return fn
    return add


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token negative log-likelihood over the labelled positions (HF ``outputs.loss``)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"]).loss


@register_objective("ga")
def gradient_ascent(model, forget, retain=None):
    """GA: maximise the forget NLL, i.e. minimise ``-L_f``."""
    forget_loss = nll(model, forget)
    return -forget_loss, {"forget_loss": forget_loss.item()}


@register_objective("graddiff")
def gradient_difference(model, forget, retain, gamma: float = 1.0):
    """GradDiff (SOUL's "GA+FT"): ``-L_f + gamma * L_r``; gamma weights the retain term."""
    forget_loss = nll(model, forget)
    retain_loss = nll(model, retain)
    return -forget_loss + gamma * retain_loss, {"forget_loss": forget_loss.item(),
                                                "retain_loss": retain_loss.item()}
