"""Supervised fine-tuning that makes the models soul unlearns: the embedded tiny base models, and a
hub or local model that first memorizes a book (the copyright task's original model, as SOUL's
``Fine_tune_hp.py`` makes it).

Plain AdamW with linear warmup and decay, gradient accumulation and clipping, optionally under
bf16 autocast; trainable parameters only, so a peft LoRA model trains its adapters alone.
"""

from __future__ import annotations

import contextlib
import math
import random

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from soul.data.qa import PromptTemplate, encode_qa_batch, pad_batch


def finetune(model, tokenizer, template: PromptTemplate, rows: list[dict], train_cfg: DictConfig,
             desc: str) -> list[float]:
    """Fine-tune on QA rows (one template); returns the loss of every optimizer step."""
    return finetune_mixed(model, tokenizer, [(template, rows)], train_cfg, desc)


def finetune_mixed(model, tokenizer, groups: list[tuple[PromptTemplate, list[dict]]], train_cfg: DictConfig,
                   desc: str, device: torch.device | str | None = None) -> list[float]:
    """``finetune`` on several sets of QA rows, each encoded with its own template, shuffled together.

    ``train_cfg``: epochs, lr, batch_size, weight_decay, warmup_ratio, seed, and optionally grad_accum
    (1), max_grad_norm (1.0), max_length (512) and mixed_precision (``no`` or ``bf16``: autocast, the
    weights stay in the dtype they were loaded in). Returns the loss of every optimizer step.
    """
    grad_accum = int(train_cfg.get("grad_accum", 1) or 1)
    max_norm = train_cfg.get("max_grad_norm", 1.0)
    precision = train_cfg.get("mixed_precision", "no") or "no"
    if precision not in ("no", "bf16"):
        raise ValueError(f"fine-tuning mixed_precision must be no or bf16, got {precision!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    torch.manual_seed(train_cfg.seed)
    rng = random.Random(train_cfg.seed)
    examples = [e for template, rows in groups
                for e in encode_qa_batch(tokenizer, template, [(r["question"], r["answer"]) for r in rows],
                                         train_cfg.get("max_length", 512))]
    if not examples:
        raise ValueError(f"{desc}: nothing to fine-tune on (no rows)")
    bs = train_cfg.batch_size
    micro_per_epoch = (len(examples) + bs - 1) // bs
    steps_per_epoch = (micro_per_epoch + grad_accum - 1) // grad_accum
    total = train_cfg.epochs * steps_per_epoch
    warmup = max(1, int(train_cfg.warmup_ratio * total))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    model.train()
    losses = []
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    for _ in range(train_cfg.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        micro_batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        for start in range(0, len(micro_batches), grad_accum):
            group = micro_batches[start:start + grad_accum]
            step_loss = 0.0
            for idx in group:
                batch = {k: v.to(device) for k, v in pad_batch([examples[j] for j in idx],
                                                               tokenizer.pad_token_id).items()}
                with autocast:
                    loss = model(**batch).loss
                (loss / len(group)).backward()
                step_loss += loss.item() / len(group)
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"{desc}: non-finite fine-tuning loss {step_loss} at step {len(losses) + 1}")
            if max_norm:
                torch.nn.utils.clip_grad_norm_(params, max_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            bar.update()
            bar.set_postfix(loss=f"{step_loss:.3f}")
    bar.close()
    model.eval()
    return losses
