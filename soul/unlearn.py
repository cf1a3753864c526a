"""The unlearning loop: paired forget/retain batches, accumulation, schedule, clipping.

It is the same loop for every optimizer, so a first-order and a second-order run differ
only in the optimizer object: same batches, schedule, clipping and seed. The one line that
second-order optimizers add is the curvature pass after the step (``curvature.run``), which
Sophia-G/H use every ``interval`` steps. Influence unlearning, a single step, has its own short
function, ``one_shot_unlearn``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from soul.data.qa import IGNORE_INDEX, PromptTemplate, encode_qa, pad_batch
from soul.objectives import nll
from soul.optim.curvature import CurvatureHook, sampled_label_backward


def pair_indices(n_forget: int, n_retain: int, batch_size: int, seed: int, rank: int = 0
                 ) -> Iterator[tuple[list[int], list[int]]]:
    """Endless (forget, retain) index batches: forget reshuffled each epoch, one random retain
    example per forget example (SOUL's pairing), from a generator seeded per rank."""
    rng = random.Random(seed * 1_000_003 + rank)
    while True:
        order = list(range(n_forget))
        rng.shuffle(order)
        for start in range(0, n_forget, batch_size):
            forget = order[start:start + batch_size]
            yield forget, [rng.randrange(n_retain) for _ in forget]


def encode_rows(tokenizer, template: PromptTemplate, rows: list[dict], max_length: int) -> list[dict]:
    return [encode_qa(tokenizer, template, r["question"], r["answer"], max_length) for r in rows]


def total_steps(n_forget: int, cfg: DictConfig, world_size: int = 1) -> int:
    """``trainer.max_steps`` if set, else epochs * forget examples / effective batch (ceil)."""
    if cfg.max_steps:
        return int(cfg.max_steps)
    per_step = cfg.batch_size * cfg.grad_accum * world_size
    return max(1, math.ceil(cfg.epochs * n_forget / per_step))


def unlearn(model, tokenizer, template: PromptTemplate, forget_rows: list[dict], retain_rows: list[dict],
            objective, objective_kwargs: dict, optimizer: torch.optim.Optimizer, cfg: DictConfig,
            accelerator, seed: int, log_path: Path, curvature: CurvatureHook | None = None) -> dict:
    """Run ``objective`` with ``optimizer`` for the configured steps; append one JSON line per step."""
    if getattr(optimizer, "one_shot", False):
        return one_shot_unlearn(model, tokenizer, template, forget_rows, retain_rows, objective, objective_kwargs,
                                optimizer, cfg, accelerator, seed, log_path)
    forget_enc = encode_rows(tokenizer, template, forget_rows, cfg.max_length)
    retain_enc = encode_rows(tokenizer, template, retain_rows, cfg.max_length)
    steps = total_steps(len(forget_enc), cfg, accelerator.num_processes)
    warmup = max(1, int(cfg.warmup_ratio * steps))
    # The schedule is built on the raw optimizer and not handed to accelerate, whose scheduler
    # wrapper would step it once per process.
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    raw_optimizer = optimizer
    model, optimizer = accelerator.prepare(model, optimizer)
    pairs = pair_indices(len(forget_enc), len(retain_enc), cfg.batch_size, seed, accelerator.process_index)

    def to_device(batch):
        return {k: v.to(accelerator.device) for k, v in batch.items()}

    model.train()
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc="unlearning", unit="step", disable=not accelerator.is_main_process)
    with open(log_path, "w") as log_file:
        for step in bar:
            totals: dict[str, float] = {"loss": 0.0}
            label_tokens = 0
            for micro in range(cfg.grad_accum):
                f_idx, r_idx = next(pairs)
                forget = to_device(pad_batch([forget_enc[i] for i in f_idx], tokenizer.pad_token_id))
                retain = to_device(pad_batch([retain_enc[i] for i in r_idx], tokenizer.pad_token_id))
                label_tokens += int((forget["labels"] != IGNORE_INDEX).sum() + (retain["labels"] != IGNORE_INDEX).sum())
                last = micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss, terms = objective(model, forget, retain, **objective_kwargs)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite unlearning loss {loss.item()} at step {step}")
                    accelerator.backward(loss / cfg.grad_accum)
                totals["loss"] += loss.item() / cfg.grad_accum
                for key, value in terms.items():
                    totals[key] = totals.get(key, 0.0) + value / cfg.grad_accum
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            if getattr(raw_optimizer, "bs_from_tokens", False):
                raw_optimizer.bs = label_tokens  # Sophia's B: the label tokens this step saw
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if curvature is not None and curvature.due(step):
                curvature.run(model, raw_optimizer, forget, retain, objective, objective_kwargs, cfg.max_grad_norm)
            record = {"step": step, "lr": lr, **totals, "grad_norm": float(grad_norm), "label_tokens": label_tokens,
                      "elapsed_s": time.perf_counter() - start}
            if curvature is not None:
                record["curvature_passes"] = curvature.passes
            diagnostics = getattr(raw_optimizer, "diagnostics", None)
            if callable(diagnostics):
                record.update(diagnostics())
            if accelerator.is_main_process:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            bar.set_postfix(loss=f"{totals['loss']:.3f}")
    model.eval()
    elapsed = time.perf_counter() - start
    return {"steps": steps, "warmup_steps": warmup, "train_seconds": elapsed,
            "steps_per_second": steps / elapsed if elapsed > 0 else float("inf"),
            "effective_batch": cfg.batch_size * cfg.grad_accum * accelerator.num_processes}


def one_shot_unlearn(model, tokenizer, template: PromptTemplate, forget_rows: list[dict], retain_rows: list[dict],
                     objective, objective_kwargs: dict, optimizer, cfg: DictConfig, accelerator, seed: int,
                     log_path: Path) -> dict:
    """Influence unlearning: diagonal retain curvature, then one step on the whole forget gradient."""
    forget_enc = encode_rows(tokenizer, template, forget_rows, cfg.max_length)
    retain_enc = encode_rows(tokenizer, template, retain_rows, cfg.max_length)
    model = accelerator.prepare(model)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()

    def batch_of(encoded, idx):
        return {k: v.to(accelerator.device) for k, v in pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id).items()}

    model.train()
    for _ in tqdm(range(optimizer.retain_batches), desc="iu: retain curvature", disable=not accelerator.is_main_process):
        retain = batch_of(retain_enc, [rng.randrange(len(retain_enc)) for _ in range(cfg.batch_size)])
        optimizer.zero_grad(set_to_none=True)
        if optimizer.curvature_estimator == "gnb":
            sampled_label_backward(model, retain, generator)
        elif optimizer.curvature_estimator == "fisher":
            accelerator.backward(nll(model, retain))
        else:
            raise ValueError(f"optim=iu: estimator must be fisher or gnb, got {optimizer.curvature_estimator!r}")
        optimizer.update_hessian()
    optimizer.zero_grad(set_to_none=True)
    n_batches = math.ceil(len(forget_enc) / cfg.batch_size)
    totals: dict[str, float] = {"loss": 0.0}
    for b in range(n_batches):
        idx = list(range(b * cfg.batch_size, min(len(forget_enc), (b + 1) * cfg.batch_size)))
        forget = batch_of(forget_enc, idx)
        retain = batch_of(retain_enc, [rng.randrange(len(retain_enc)) for _ in idx])
        loss, terms = objective(model, forget, retain, **objective_kwargs)
        accelerator.backward(loss / n_batches)
        totals["loss"] += loss.item() / n_batches
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + value / n_batches
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    elapsed = time.perf_counter() - start
    if accelerator.is_main_process:
        with open(log_path, "w") as f:
            f.write(json.dumps({"step": 1, **totals, "curvature_batches": optimizer.retain_batches,
                                "elapsed_s": elapsed, **optimizer.diagnostics()}) + "\n")
    return {"steps": 1, "warmup_steps": 0, "train_seconds": elapsed, "steps_per_second": 1 / elapsed,
            "effective_batch": len(forget_enc)}
