"""What every task does the same way: pick the model to load, and evaluate a fixed model once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from soul.models import load_pretrained


def model_to_load(model_cfg: DictConfig, embedded: Path | None) -> str:
    """The model to unlearn: the task's cached tiny model, a hub id or a local path."""
    source = model_cfg.source
    if source == "embedded":
        return str(embedded)
    if source == "hub":
        return model_cfg.hub_id
    if source == "local":
        if not model_cfg.get("path"):
            raise ValueError("model.path is required for model.source=local")
        return model_cfg.path
    raise ValueError(f"model.source must be embedded, hub or local, got {source!r}")


def cached_evaluation(path: Path, model_name: str, model_cfg: DictConfig, evaluate: Callable[..., dict],
                      model=None, tokenizer=None) -> dict:
    """``evaluate(model, tokenizer)`` of a fixed (not unlearned) model, computed once and kept at
    ``path`` (written atomically); the model is loaded only when the cache has no result."""
    if path.is_file():
        return json.loads(path.read_text())
    if model is None:
        model, tokenizer = load_pretrained(model_name, model_cfg.dtype, model_cfg.attn_implementation,
                                           model_cfg.trust_remote_code)
    result = evaluate(model, tokenizer)
    result["meta"]["model"] = model_name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result


class NoReferenceModel:
    """For tasks scored against a target (chance, the book) rather than a retain-only model, and with
    no SOUL-variant evaluation: WMDP and copyright."""

    def reference_log(self, template) -> None:
        return None

    def evaluate_soul_variant(self, model, tokenizer) -> None:
        return None
