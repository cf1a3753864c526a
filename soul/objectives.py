"""Unlearning objectives: pure loss functions, registered by name.

Each objective is ``fn(model, batch, ref=None, **hyperparameters) -> (loss, terms)``: ``batch``
holds tensor dicts (``input_ids``, ``attention_mask``, ``labels``) under ``"forget"``,
``"retain"`` and, for objectives that need refusals, ``"refusal"`` (the forget questions
answered by a refusal); ``ref`` is the frozen initial model for the objectives that compare
against it. The returned loss is **minimised**; ``terms`` are the separate parts to log.
Adding a method is one function here and one YAML file in ``conf/objective/``.

Sequence log-probabilities are sums over the labelled (answer) tokens, EOS included, as in
the NPO and DPO papers; "mean NLL" is HF's ``outputs.loss`` (token-averaged over the batch).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from soul.data.qa import IGNORE_INDEX


@dataclass(frozen=True)
class ObjectiveSpec:
    fn: Callable
    needs_reference: bool = False
    needs_refusals: bool = False
    prepare: Callable | None = None  # (model, hyperparameters, seed) -> extra keyword arguments


OBJECTIVES: dict[str, ObjectiveSpec] = {}
KL_MODES = ("kl", "soul_ce")


def register_objective(name: str, *, needs_reference: bool = False, needs_refusals: bool = False,
                       prepare: Callable | None = None) -> Callable:
    def add(fn: Callable) -> Callable:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        OBJECTIVES[name] = ObjectiveSpec(fn, needs_reference, needs_refusals, prepare)
        return fn
    return add


def get_objective(name: str) -> ObjectiveSpec:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


@dataclass
class Objective:
    """An objective bound to its hyperparameters and (if it needs one) the reference model."""

    name: str
    spec: ObjectiveSpec
    kwargs: dict = field(default_factory=dict)
    ref: torch.nn.Module | None = None

    @property
    def needs_refusals(self) -> bool:
        return self.spec.needs_refusals

    def __call__(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.spec.fn(model, batch, ref=self.ref, **self.kwargs)


def build_objective(name: str, hyperparameters: dict, model, ref=None, seed: int = 0) -> Objective:
    """Bind ``name`` to its hyperparameters; run its ``prepare`` (e.g. RMU's parameter freeze)."""
    spec = get_objective(name)
    if spec.needs_reference and ref is None:
        raise ValueError(f"objective {name!r} needs a reference model")
    kwargs = dict(hyperparameters)
    accepted = set(inspect.signature(spec.fn).parameters) - {"model", "batch", "ref"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"objective={name} does not take {unknown}; its settings are {sorted(accepted)}")
    if kwargs.get("kl_mode", "kl") not in KL_MODES:
        raise ValueError(f"objective.kl_mode must be one of {KL_MODES}, got {kwargs['kl_mode']!r}")
    if spec.prepare is not None:
        kwargs.update(spec.prepare(model, kwargs, seed))
    return Objective(name, spec, kwargs, ref)


# ---------------------------------------------------------------------------- building blocks

def nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token negative log-likelihood over the labelled positions (HF ``outputs.loss``)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 labels=batch["labels"]).loss


def sequence_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed NLL of the labelled tokens and their counts: ``-log pi(y|x)`` and ``|y|``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    token_nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return token_nll.sum(-1), (labels != IGNORE_INDEX).sum(-1)


def retain_kl(model, ref, batch: dict[str, torch.Tensor], mode: str = "kl") -> torch.Tensor:
    """Divergence from the frozen reference on retain data.

    ``kl``: KL(p_ref || p_theta) per position, averaged over the non-padding positions.
    ``soul_ce``: the official SOUL code's stand-in, -sum_v p_theta log(p_ref + 1e-12), averaged over
    every position including padding (a cross-entropy, not a KL; kept for reproduction).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    with torch.no_grad():
        ref_logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    if mode == "kl":
        ref_logp = F.log_softmax(ref_logits, -1)
        per_position = (ref_logp.exp() * (ref_logp - F.log_softmax(logits, -1))).sum(-1)
        mask = batch["attention_mask"].float()
        return (per_position * mask).sum() / mask.sum()
    if mode == "soul_ce":
        return -(F.softmax(logits, -1) * torch.log(F.softmax(ref_logits, -1) + 1e-12)).sum(-1).mean()
    raise ValueError(f"objective.kl_mode must be kl or soul_ce, got {mode!r}")


def npo_loss(nll_theta: torch.Tensor, nll_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): -(2/beta) log sigmoid(-beta (log pi_theta - log pi_ref)), batch mean."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_theta - nll_ref)).mean()


# ---------------------------------------------------------------------------- objectives

@register_objective("ga")
def gradient_ascent(model, batch, ref=None):
    """GA: minimise ``-L_f`` (maximise the forget NLL)."""
    forget_loss = nll(model, batch["forget"])
    return -forget_loss, {"forget_loss": forget_loss.item()}


@register_objective("graddiff")
def gradient_difference(model, batch, ref=None, gamma: float = 1.0):
    """GradDiff (SOUL's "GA+FT"; Liu et al. 2022): ``-L_f + gamma * L_r``."""
    forget_loss, retain_loss = nll(model, batch["forget"]), nll(model, batch["retain"])
    return -forget_loss + gamma * retain_loss, {"forget_loss": forget_loss.item(), "retain_loss": retain_loss.item()}


@register_objective("ga_kl", needs_reference=True)
def gradient_ascent_kl(model, batch, ref=None, gamma: float = 1.0, kl_mode: str = "kl"):
    """GA+KL (TOFU's KL method): ``-L_f + gamma * KL(p_ref || p_theta)`` on retain data."""
    forget_loss = nll(model, batch["forget"])
    kl = retain_kl(model, ref, batch["retain"], kl_mode)
    return -forget_loss + gamma * kl, {"forget_loss": forget_loss.item(), "retain_kl": kl.item()}


@register_objective("graddiff_kl", needs_reference=True)
def gradient_difference_kl(model, batch, ref=None, gamma: float = 1.0, alpha: float = 1.0, kl_mode: str = "kl"):
    """GradDiff+KL: ``-L_f + gamma * L_r + alpha * KL(p_ref || p_theta)`` on retain data."""
    forget_loss, retain_loss = nll(model, batch["forget"]), nll(model, batch["retain"])
    kl = retain_kl(model, ref, batch["retain"], kl_mode)
    return (-forget_loss + gamma * retain_loss + alpha * kl,
            {"forget_loss": forget_loss.item(), "retain_loss": retain_loss.item(), "retain_kl": kl.item()})


@register_objective("po", needs_refusals=True)
def preference_optimization(model, batch, ref=None, gamma: float = 1.0):
    """PO as SOUL uses it ("CL+FT"): ``L(refusal | forget question) + gamma * L_r``."""
    refusal_loss, retain_loss = nll(model, batch["refusal"]), nll(model, batch["retain"])
    with torch.no_grad():
        forget_loss = nll(model, batch["forget"])
    return (refusal_loss + gamma * retain_loss,
            {"refusal_loss": refusal_loss.item(), "retain_loss": retain_loss.item(), "forget_loss": forget_loss.item()})


@register_objective("npo", needs_reference=True)
def negative_preference_optimization(model, batch, ref=None, beta: float = 0.1, gamma: float = 1.0,
                                     length_normalized: bool = False):
    """NPO (Zhang et al. 2024) ``+ gamma * L_r``; ``length_normalized`` uses SOUL's mean-token NLL."""
    nll_theta, counts = sequence_nll(model, batch["forget"])
    with torch.no_grad():
        nll_ref, _ = sequence_nll(ref, batch["forget"])
    if length_normalized:
        nll_theta, nll_ref = nll_theta / counts, nll_ref / counts
    forget_term = npo_loss(nll_theta, nll_ref, beta)
    retain_loss = nll(model, batch["retain"])
    return forget_term + gamma * retain_loss, {
        "npo_loss": forget_term.item(), "retain_loss": retain_loss.item(),
        "forget_loss": (nll_theta.mean() if length_normalized else nll_theta.sum() / counts.sum()).item(),
        "forget_logratio": (nll_ref - nll_theta).mean().item()}


@register_objective("simnpo")
def simple_npo(model, batch, ref=None, beta: float = 2.5, delta: float = 0.0, gamma: float = 1.0):
    """SimNPO (Fan et al. 2024): ``-(2/beta) log sigmoid(-(beta/|y|) log pi(y|x) - delta) + gamma L_r``."""
    nll_theta, counts = sequence_nll(model, batch["forget"])
    forget_term = -(2.0 / beta) * F.logsigmoid(beta * nll_theta / counts - delta).mean()
    retain_loss = nll(model, batch["retain"])
    return forget_term + gamma * retain_loss, {
        "simnpo_loss": forget_term.item(), "retain_loss": retain_loss.item(),
        "forget_loss": (nll_theta.sum() / counts.sum()).item()}


@register_objective("dpo", needs_reference=True, needs_refusals=True)
def direct_preference_optimization(model, batch, ref=None, beta: float = 0.1, gamma: float = 1.0):
    """DPO (Rafailov et al. 2023) with the refusal preferred over the forget answer, ``+ gamma L_r``:
    ``-(2/beta) log sigmoid(beta [(log pi - log pi_ref)(refusal) - (log pi - log pi_ref)(answer)])``
    (scaled by 2/beta as in open-unlearning, so that NPO is DPO without a preferred answer)."""
    win, _ = sequence_nll(model, batch["refusal"])
    lose, counts = sequence_nll(model, batch["forget"])
    with torch.no_grad():
        win_ref, _ = sequence_nll(ref, batch["refusal"])
        lose_ref, _ = sequence_nll(ref, batch["forget"])
    margin = (win_ref - win) - (lose_ref - lose)
    forget_term = -(2.0 / beta) * F.logsigmoid(beta * margin).mean()
    retain_loss = nll(model, batch["retain"])
    return forget_term + gamma * retain_loss, {
        "dpo_loss": forget_term.item(), "retain_loss": retain_loss.item(), "reward_margin": margin.mean().item(),
        "forget_loss": (lose.sum() / counts.sum()).item()}


# ---------------------------------------------------------------------------- RMU

def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks of a HF causal LM (Llama, Mistral, Qwen, Phi, GPT-NeoX, OPT...)."""
    model = getattr(model, "module", model)  # unwrap DDP
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise ValueError(f"rmu: cannot find the decoder layers of {type(model).__name__}")


def _rmu_prepare(model, kwargs: dict, seed: int) -> dict:
    """Freeze everything but the MLPs of layers ``layer-2 .. layer`` (``params=mlp_and_embeddings``:
    and the input embeddings); draw the control vector."""
    layers = decoder_layers(model)
    layer = kwargs.setdefault("layer", 2)
    if not 0 <= layer < len(layers):
        raise ValueError(f"objective.layer={layer} is out of range: the model has {len(layers)} layers")
    chosen = kwargs.get("trainable_layers")
    trainable = set(range(max(0, layer - 2), layer + 1) if chosen is None else chosen)
    if not trainable or not all(0 <= i < len(layers) for i in trainable):
        raise ValueError(f"objective.trainable_layers={chosen} must be a non-empty list of layer indices "
                         f"in 0..{len(layers) - 1}")
    which = kwargs.get("params", "mlp")
    if which not in ("mlp", "down_proj", "mlp_and_embeddings"):
        raise ValueError(f"objective.params must be mlp, down_proj or mlp_and_embeddings, got {which!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    for i in trainable:
        mlp = layers[i].mlp
        for name, p in mlp.named_parameters():
            if which in ("mlp", "mlp_and_embeddings") or name.startswith("down_proj"):
                p.requires_grad_(True)
    if which == "mlp_and_embeddings":
        # For a model so shallow that its first attention layer copies raw token embeddings to where
        # the answer is read (the tiny preset on wmdp-mini; README, WMDP), no MLP sits on that path.
        # A token's embedding row gets a gradient only from batches that contain the token, so rows
        # of tokens in neither the forget nor the retain text move by weight decay alone.
        model.get_input_embeddings().weight.requires_grad_(True)
    hidden = model.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(1, 1, hidden, generator=g)
    control = kwargs.setdefault("steering_coeff", 20.0) * u / u.norm()
    return {"control": control}


def _layer_output(model, batch: dict, layer: int) -> torch.Tensor:
    """The residual-stream output of decoder block ``layer`` (a hook: HF's ``hidden_states`` list
    holds the final-normed output in its last entry, not the last block's)."""
    captured = []

    def keep(module, inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = decoder_layers(model)[layer].register_forward_hook(keep)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    return captured[0]


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_position = (a.float() - b.float()).pow(2).mean(-1)
    mask = mask.float()
    return (per_position * mask).sum() / mask.sum()


@register_objective("rmu", needs_reference=True, prepare=_rmu_prepare)
def representation_misdirection(model, batch, ref=None, layer: int = 2, steering_coeff: float = 20.0,
                                alpha: float = 100.0, control=None, params: str = "mlp", trainable_layers=None):
    """RMU (Li et al. 2024, WMDP): push layer-``layer`` activations on forget data toward a fixed
    random direction ``c * u / |u|``; keep retain activations at the frozen model's, weighted by alpha.
    MSEs average over non-padding positions."""
    forget = batch["forget"]
    h_forget = _layer_output(model, forget, layer)
    target = control.to(h_forget.device, h_forget.dtype).expand_as(h_forget)
    forget_term = _masked_mse(h_forget, target, forget["attention_mask"])
    retain = batch["retain"]
    h_retain = _layer_output(model, retain, layer)
    with torch.no_grad():
        h_frozen = _layer_output(ref, retain, layer)
    retain_term = _masked_mse(h_retain, h_frozen, retain["attention_mask"])
    return forget_term + alpha * retain_term, {"rmu_forget": forget_term.item(), "rmu_retain": retain_term.item()}

