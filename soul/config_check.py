"""Start-up validation of a composed config: every problem found at once, each naming the key, the
bad value and what is allowed, before any data, model or process group is touched.

Hydra already rejects keys that do not exist and config-group choices that have no file; this
checks the values. Tasks, objectives and optimizers check their own finer settings when built.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from soul.models import DTYPES

SOURCES = ("embedded", "hub", "local")
CHOICES = {
    "device": ("auto", "cpu"),
    "mixed_precision": ("auto", "no", "bf16", "fp16"),
    "model.source": SOURCES,
    "model.dtype": tuple(DTYPES),
    "model.attn_implementation": ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"),
}
BOOLEANS = ("resume", "overwrite", "save_model", "checkpoint.keep", "model.trust_remote_code", "model.lora")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _non_negative_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "seed": (_non_negative_int, "a non-negative integer"),
    "trainer.batch_size": (_positive_int, "a positive integer"),
    "trainer.grad_accum": (_positive_int, "a positive integer"),
    "trainer.epochs": (_positive_int, "a positive integer"),
    "trainer.max_length": (_positive_int, "a positive integer"),
    "trainer.max_steps": (lambda v: v is None or _positive_int(v), "a positive integer or null (epochs decide)"),
    "trainer.warmup_ratio": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "trainer.max_grad_norm": (lambda v: v is None or (_number(v) and v > 0), "a positive number or null (no clipping)"),
    "checkpoint.every": (_non_negative_int, "a non-negative integer (0: no checkpoints)"),
    "model.unlearn_lr": (lambda v: _number(v) and v > 0, "a positive number"),
}


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def config_problems(cfg: DictConfig) -> list[str]:
    """Every invalid value in ``cfg``, one line each: key, value and what is allowed."""
    from soul.objectives import OBJECTIVES
    from soul.optim import OPTIMIZERS
    from soul.tasks import TASKS, copyright, wmdp

    task_choices = {  # per task: key -> allowed values (the tasks' own lists where they keep one)
        "tofu": {"task.source": SOURCES, "task.forget_split": ("forget01", "forget05", "forget10"),
                 "task.eval.variant": ("official", "soul")},
        "wmdp": {"task.source": SOURCES, "task.subset": wmdp.SUBSETS, "task.retain": ("wikitext", "corpus")},
        "copyright": {"task.source": copyright.SOURCES},
    }

    problems = []
    registered = {"task.name": sorted(TASKS), "objective.name": sorted(OBJECTIVES), "optim.name": sorted(OPTIMIZERS)}
    choices = {**CHOICES, **{k: tuple(v) for k, v in registered.items()},
               **task_choices.get(_get(cfg, "task.name"), {})}
    for key, allowed in choices.items():
        value = _get(cfg, key)
        if value not in allowed:
            problems.append(f"{key}={value!r}: allowed values are {', '.join(map(str, allowed))}")
    for key in BOOLEANS:
        value = _get(cfg, key)
        if not isinstance(value, bool):
            problems.append(f"{key}={value!r}: must be true or false")
    for key, (ok, what) in RULES.items():
        value = _get(cfg, key)
        if not ok(value):
            problems.append(f"{key}={value!r}: must be {what}")
    if _get(cfg, "model.lora") is True and _get(cfg, "objective.name") == "rmu":
        problems.append("model.lora=True: does not combine with objective=rmu, which chooses the weights that train "
                        "itself (objective.trainable_layers, objective.params)")
    if _get(cfg, "model.source") == "hub" and not _get(cfg, "model.hub_id"):
        problems.append("model.hub_id=None: model.source=hub needs a hub id (or model.source=local model.path=DIR)")
    if _get(cfg, "model.source") == "local" and not _get(cfg, "model.path"):
        problems.append("model.path=None: model.source=local needs the model's directory")
    return problems


def validate(cfg: DictConfig) -> None:
    """Raise one ``ValueError`` listing every problem of ``cfg`` (nothing is built before this)."""
    problems = config_problems(cfg)
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))
