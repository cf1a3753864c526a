"""The copyright task's original model on the real path: a hub or local model fine-tuned on the
user's book until it memorizes it, as SOUL makes its OPT-2.7B and Llama-2-7B originals
(``Fine_tune_hp.py``: the book's instruction/continuation pairs plus its text, lr 1e-5, 10 epochs,
batch 4 x 4, bf16; LoRA r 8, alpha 32, dropout 0.05 for Llama, merged afterwards).

The result is saved (safetensors) under the cache directory, keyed by everything that determines
it, so every unlearning run of a grid starts from the same original model and it is built once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from soul.data import copyright as book
from soul.data.qa import PromptTemplate
from soul.embedded import cache_key, publish
from soul.finetune import finetune_mixed
from soul.models import DTYPES, apply_lora, load_pretrained, merge_lora

log = logging.getLogger(__name__)

TRAIN_KEYS = ("epochs", "lr", "batch_size", "grad_accum", "weight_decay", "warmup_ratio", "max_grad_norm",
              "max_length", "seed")


def training_device(device_setting: str = "auto") -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under a launcher) when there is one, else the CPU."""
    if device_setting != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def ensure_memorized_model(cache_dir: str | Path, source: str, model_cfg: DictConfig, memorize_cfg: DictConfig,
                           chunks: list[list[str]], prompt_words, template: PromptTemplate,
                           mixed_precision: str = "no", device_setting: str = "auto") -> Path:
    """Fine-tune ``source`` (hub id or local directory) on the book once; return the saved model's
    directory. With ``memorize_cfg.lora`` the fine-tune trains LoRA adapters (``model.lora_settings``)
    that are merged into the weights before saving."""
    settings = {k: memorize_cfg[k] for k in TRAIN_KEYS}
    for key in ("epochs", "batch_size", "grad_accum", "max_length"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise ValueError(f"task.memorize.{key} must be a positive integer, got {settings[key]!r}")
    if not settings["lr"] or settings["lr"] <= 0:
        raise ValueError(f"task.memorize.lr must be positive, got {settings['lr']!r}")
    lora = OmegaConf.to_container(model_cfg.lora_settings, resolve=True) if memorize_cfg.lora else None
    precision = "bf16" if mixed_precision == "bf16" else "no"
    book_hash = hashlib.sha256("\n".join(" ".join(c) for c in chunks).encode()).hexdigest()
    key = cache_key("memorize", source, model_cfg.dtype, memorize_cfg.dtype, book_hash, list(prompt_words), settings,
                    lora, precision, [template.question_start, template.question_end, template.answer_tag])
    out = Path(cache_dir).expanduser() / "memorized" / key
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):  # other processes of a launch wait here, then load the result
        if (out / "config.json").is_file():
            return out
        log.info("fine-tuning %s on the book until it memorizes it (cached in %s)", source, out)
        # Master weights in memorize_cfg.dtype (float32: bf16 rounding would swallow lr-1e-5 updates).
        model, tokenizer = load_pretrained(source, memorize_cfg.dtype, model_cfg.attn_implementation,
                                           model_cfg.trust_remote_code)
        if lora:
            model = apply_lora(model, **lora)
        losses = finetune_mixed(model, tokenizer, book.memorizing_rows(chunks, prompt_words, template),
                                OmegaConf.create({**settings, "mixed_precision": precision}),
                                "memorizing the book", device=training_device(device_setting))
        model = merge_lora(model).to(DTYPES[model_cfg.dtype])  # saved in the dtype unlearning loads
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        (tmp / "soul_build.json").write_text(json.dumps(
            {"source": source, "book_sha256": book_hash, "chunks": len(chunks), "training": settings,
             "lora": lora, "mixed_precision": precision, "steps": len(losses),
             "first_loss": losses[0], "final_loss": losses[-1]}, indent=2))
        publish(tmp, out)
    return out
