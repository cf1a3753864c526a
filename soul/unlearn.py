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
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate.utils import DistributedType, gather_object
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from soul.checkpoint import Checkpointer
from soul.data.qa import IGNORE_INDEX, PromptTemplate, encode_qa_batch, pad_batch
from soul.data.refusals import refusal_for
from soul.objectives import Objective, nll
from soul.optim.curvature import CurvatureHook, sampled_label_backward
from soul.optim.sophia import local_shard


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
    return encode_qa_batch(tokenizer, template, [(r["question"], r["answer"]) for r in rows], max_length)


class BatchMaker:
    """Encodes the forget and retain rows once (and refusals when the objective needs them) and
    turns index lists into the padded tensor batches an objective receives."""

    def __init__(self, tokenizer, template: PromptTemplate, forget_rows, retain_rows, max_length: int,
                 refusals: bool, seed: int, device):
        self.pad_id, self.device = tokenizer.pad_token_id, device
        self.encoded = {"forget": encode_rows(tokenizer, template, forget_rows, max_length),
                        "retain": encode_rows(tokenizer, template, retain_rows, max_length)}
        if refusals:
            rows = [{"question": r["question"], "answer": refusal_for(i, seed)} for i, r in enumerate(forget_rows)]
            self.encoded["refusal"] = encode_rows(tokenizer, template, rows, max_length)

    def __call__(self, forget_idx: list[int], retain_idx: list[int]) -> dict[str, dict[str, torch.Tensor]]:
        batch = {}
        for key, encoded in self.encoded.items():
            idx = retain_idx if key == "retain" else forget_idx
            if not idx:
                continue
            padded = pad_batch([encoded[i] for i in idx], self.pad_id)
            batch[key] = {k: v.to(self.device) for k, v in padded.items()}
        return batch

    @staticmethod
    def label_tokens(batch: dict) -> int:
        return int(sum((b["labels"] != IGNORE_INDEX).sum() for b in batch.values()))


def total_steps(n_forget: int, cfg: DictConfig, world_size: int = 1) -> int:
    """``trainer.max_steps`` if set, else epochs * forget examples / effective batch (ceil)."""
    if cfg.max_steps:
        return int(cfg.max_steps)
    per_step = cfg.batch_size * cfg.grad_accum * world_size
    return max(1, math.ceil(cfg.epochs * n_forget / per_step))


def unlearn(model, tokenizer, template: PromptTemplate, forget_rows: list[dict], retain_rows: list[dict],
            objective: Objective, optimizer: torch.optim.Optimizer, cfg: DictConfig,
            accelerator, seed: int, log_path: Path, curvature: CurvatureHook | None = None,
            on_step: Callable[[dict], None] | None = None, checkpointer: Checkpointer | None = None,
            resume: bool = False) -> dict:
    """Run ``objective`` with ``optimizer`` for the configured steps; append one JSON line per step
    (and hand each line to ``on_step`` on the main process, e.g. a tracker's ``log_step``).

    With a ``checkpointer`` the loop's whole state is saved every ``checkpoint.every`` steps, and
    ``resume`` continues from the newest checkpoint (same batches, RNG and schedule as an
    uninterrupted run). A non-finite loss or gradient norm on any process stops every process with
    an error that says where the last good checkpoint is. Returns the training summary, with
    ``ranks``: what each process drew and trained (gathered to every process)."""
    make_batch = BatchMaker(tokenizer, template, forget_rows, retain_rows, cfg.max_length,
                            objective.needs_refusals, seed, accelerator.device)
    if getattr(optimizer, "one_shot", False):
        return one_shot_unlearn(model, make_batch, objective, optimizer, cfg, accelerator, seed, log_path, on_step)
    n_forget, n_retain = len(forget_rows), len(retain_rows)
    steps = total_steps(n_forget, cfg, accelerator.num_processes)
    warmup = max(1, int(cfg.warmup_ratio * steps))
    # The schedule is built on the raw optimizer and not handed to accelerate, whose scheduler
    # wrapper would step it once per process; it is registered so that checkpoints hold it.
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    raw_optimizer = optimizer
    # DeepSpeed's engine reduces, clips and steps the optimizer inside accelerator.backward, on its own
    # flat fp32 partitions: what the step needs (Sophia's B, the non-finite check) is settled before the
    # backward, and a curvature pass runs as an engine step of its own (CurvatureHook.run).
    engine_steps_in_backward = accelerator.distributed_type == DistributedType.DEEPSPEED
    if engine_steps_in_backward:
        configure_deepspeed(accelerator, cfg)  # soul.run has refused what cannot run (check_deepspeed)
        if hasattr(raw_optimizer, "partitioned"):
            raw_optimizer.partitioned = True
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    rank = accelerator.process_index
    pairs = pair_indices(n_forget, n_retain, cfg.batch_size, seed, rank)
    first_step, drawn = 1, 0
    log_mode = "w"
    if resume and checkpointer is not None:
        progress = checkpointer.load()
        if progress is not None:
            first_step, drawn = progress["step"] + 1, progress["pairs_drawn"]
            for _ in range(drawn):  # the batch stream is a pure function of the seed: replay its position
                next(pairs)
            if curvature is not None:
                curvature.load_state_dict(progress["curvature"])
            if accelerator.is_main_process:
                _truncate_log(log_path, progress["step"])
            log_mode = "a"
    drawn_forget: list[list[int]] = []  # this process's forget indices, step by step

    model.train()
    start = time.perf_counter()
    bar = tqdm(range(first_step, steps + 1), desc="unlearning", unit="step", initial=first_step - 1, total=steps,
               disable=not accelerator.is_main_process)
    # The step log is the main process's alone (another process opening it with "w" would truncate it).
    with open(log_path, log_mode) if accelerator.is_main_process else contextlib.nullcontext() as log_file:
        for step in bar:
            totals: dict[str, float] = {"loss": 0.0}
            label_tokens, bad_losses = 0, 0
            for micro in range(cfg.grad_accum):
                forget_idx, retain_idx = next(pairs)
                drawn += 1
                drawn_forget.append(forget_idx)
                batch = make_batch(forget_idx, retain_idx)
                label_tokens += make_batch.label_tokens(batch)
                last = micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss, terms = objective(model, batch)
                    # No early exit here: under DDP every process must reach the gradient all-reduce.
                    bad_losses += int(not torch.isfinite(loss))
                    if engine_steps_in_backward:  # grad_accum is 1: this backward is the update
                        bad_losses, label_tokens = _agree(accelerator, bad_losses, label_tokens)
                        _stop_if_non_finite(bad_losses, None, totals["loss"] + loss.item(), step, checkpointer,
                                            update_applied=False)
                        if getattr(raw_optimizer, "bs_from_tokens", False):
                            raw_optimizer.bs = label_tokens
                    accelerator.backward(loss / cfg.grad_accum)
                totals["loss"] += loss.item() / cfg.grad_accum
                for key, value in terms.items():
                    totals[key] = totals.get(key, 0.0) + value / cfg.grad_accum
            # Under DeepSpeed this is the norm the engine measured (before its own clipping).
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            grad_norm = None if grad_norm is None else float(grad_norm)
            if not engine_steps_in_backward:
                bad_losses, label_tokens = _agree(accelerator, bad_losses, label_tokens)
            _stop_if_non_finite(bad_losses, grad_norm, totals["loss"], step, checkpointer,
                                update_applied=engine_steps_in_backward)
            lr = scheduler.get_last_lr()[0]
            if getattr(raw_optimizer, "bs_from_tokens", False):
                raw_optimizer.bs = label_tokens  # Sophia's B: the label tokens this step saw (all processes)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if curvature is not None and curvature.due(step):
                curvature.run(model, raw_optimizer, batch, objective, cfg.max_grad_norm, clip=accelerator.clip_grad_norm_,
                              engine_backward=accelerator.backward if engine_steps_in_backward else None,
                              engine_unclipped=lambda: _deepspeed_unclipped(model))
            record = {"step": step, "lr": lr, **totals, "grad_norm": grad_norm, "label_tokens": label_tokens,
                      "elapsed_s": time.perf_counter() - start}
            if curvature is not None:
                record["curvature_passes"] = curvature.passes
            diagnostics = getattr(raw_optimizer, "diagnostics", None)
            if callable(diagnostics):
                record.update(diagnostics())
            if accelerator.is_main_process:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                if on_step is not None:
                    on_step(record)
            if checkpointer is not None and checkpointer.due(step, steps):
                checkpointer.save(step, {"pairs_drawn": drawn,
                                         "curvature": curvature.state_dict() if curvature is not None else None})
            bar.set_postfix(loss=f"{totals['loss']:.3f}")
    model.eval()
    elapsed = time.perf_counter() - start
    ranks = rank_records(accelerator, model, raw_optimizer, steps - first_step + 1, drawn_forget)
    return {"steps": steps, "warmup_steps": warmup, "train_seconds": elapsed,
            "steps_per_second": (steps - first_step + 1) / elapsed if elapsed > 0 else float("inf"),
            "effective_batch": cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
            "processes": accelerator.num_processes, "resumed_from_step": first_step - 1, "ranks": ranks}


def rank_records(accelerator, model, optimizer, steps: int, forget_batches: list[list[int]]) -> list[dict]:
    """What each process did, for the record (collective; every process gets the list): its steps and
    forget batches, a weight checksum (equal across DDP ranks; under sharding the sum of every
    process's slices) and how much optimizer state it holds (all under DDP, its shard under FSDP or ZeRO)."""
    params = accelerator.unwrap_model(model).parameters()
    if sharded_weights(accelerator):
        local = sum(weight_shard(p).detach().double().sum() for p in params)
        checksum = float(accelerator.reduce(local.to(accelerator.device), "sum"))
    else:
        checksum = float(sum(p.detach().double().sum() for p in params))
    state_numel = sum(weight_shard(t).numel() for state in optimizer.state.values() for t in state.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    return gather_object([{"rank": accelerator.process_index, "steps": steps, "forget_batches": forget_batches,
                           "param_checksum": checksum, "optimizer_state_numel": state_numel}])


def zero3(accelerator) -> bool:
    """True under DeepSpeed ZeRO-3, which partitions the weights themselves across processes."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def sharded_weights(accelerator) -> bool:
    """True where each process holds only a slice of every weight: DeepSpeed ZeRO-3 and FSDP. A
    forward pass is then collective, so one process cannot evaluate the trained model alone."""
    return zero3(accelerator) or accelerator.distributed_type == DistributedType.FSDP


def weight_shard(p: torch.Tensor) -> torch.Tensor:
    """This process's slice of a sharded weight (ZeRO-3's ``ds_tensor``, FSDP2's local shard)."""
    return p.ds_tensor if hasattr(p, "ds_tensor") else local_shard(p)


def _agree(accelerator, bad_losses: int, label_tokens: int) -> tuple[int, int]:
    """Sum over processes, in one all-reduce (none on a single process): non-finite losses (one
    decision for all processes) and the step's label tokens (Sophia's B: the gradient is their
    average, so every process must take the same step)."""
    if accelerator.num_processes == 1:
        return bad_losses, label_tokens
    counts = accelerator.reduce(torch.tensor([bad_losses, label_tokens], device=accelerator.device), "sum")
    bad, tokens = (int(c) for c in counts.tolist())
    return bad, tokens


def _stop_if_non_finite(bad_losses: int, grad_norm: float | None, loss: float, step: int, checkpointer,
                        update_applied: bool) -> None:
    bad_norm = grad_norm is not None and not math.isfinite(grad_norm)
    if bad_losses == 0 and not bad_norm:
        return
    what = f"loss {loss}" if bad_losses > 0 else f"gradient norm {grad_norm}"
    when = ("the engine (DeepSpeed) had already applied this step's update" if update_applied
            else "training stopped before this step's update")
    raise FloatingPointError(
        f"non-finite {what} at step {step}: {when}; "
        f"{checkpointer.describe() if checkpointer else 'checkpointing is off'}. Lower the "
        f"learning rate or set trainer.max_grad_norm.")


@contextlib.contextmanager
def _deepspeed_unclipped(engine):
    """DeepSpeed's ZeRO optimizer clips every engine step to ``gradient_clipping``; a curvature
    estimate fed through a step is not a gradient, and is left as it is."""
    zero = engine.optimizer
    saved, zero.clip_grad = zero.clip_grad, 0.0
    try:
        yield
    finally:
        zero.clip_grad = saved


def check_engine(accelerator, cfg: DictConfig) -> None:
    """Refuse, before any model is built, what soul cannot do under the launch's engine (DeepSpeed,
    FSDP), with the reason and what to use instead."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        check_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, cfg.trainer, cfg.optim)
    elif accelerator.distributed_type == DistributedType.FSDP:
        check_fsdp(cfg.optim)


def check_fsdp(optim: DictConfig) -> None:
    """What FSDP cannot run: a double backward (Hutchinson) through its sharded weights."""
    if optim.get("estimator") == "hutchinson":
        raise ValueError("optim.estimator=hutchinson needs a double backward through the weights, and FSDP's "
                         "forward runs on gathered copies of its sharded parameters, which a double backward does "
                         "not reach; use optim=sophia (estimator=gnb), or DDP or DeepSpeed ZeRO-2 for Sophia-H")


def check_deepspeed(ds: dict, trainer: DictConfig, optim: DictConfig) -> None:
    """Refuse, before any model is built, what soul cannot do under DeepSpeed (``ds``: the DeepSpeed
    config)."""
    zero3_config = ds.get("zero_optimization", {}).get("stage") == 3
    if optim.name == "iu":
        raise ValueError("optim=iu does not run under DeepSpeed: its one-shot step reads per-parameter gradients "
                         "outside an engine step; use DDP/FSDP")
    if optim.get("estimator") == "hutchinson" and zero3_config:
        raise ValueError("optim.estimator=hutchinson needs a double backward through the weights, which ZeRO-3 "
                         "partitions; use optim=sophia (estimator=gnb), or DDP or ZeRO-2 for Sophia-H")
    if trainer.grad_accum != 1:
        raise ValueError(f"under DeepSpeed, trainer.grad_accum must be 1 (got {trainer.grad_accum}): the engine "
                         "steps on every backward; raise trainer.batch_size or the number of processes instead")
    if ds.get("gradient_accumulation_steps", "auto") not in ("auto", 1):
        raise ValueError(f"DeepSpeed config: gradient_accumulation_steps={ds['gradient_accumulation_steps']} must be "
                         "1 (or auto): soul steps the engine once per micro-batch")
    if ds.get("gradient_clipping", "auto") not in ("auto", trainer.max_grad_norm or 0.0):
        raise ValueError(f"DeepSpeed config: gradient_clipping={ds['gradient_clipping']} differs from "
                         f"trainer.max_grad_norm={trainer.max_grad_norm}; set one to the other (every optimizer "
                         "must be clipped alike)")


def configure_deepspeed(accelerator, trainer: DictConfig) -> None:
    """Fill in what accelerate's DeepSpeed config cannot know (soul hands ``prepare`` no dataloader).
    One micro-batch per engine step: soul's loop, not the engine, counts steps, schedules the
    learning rate and runs curvature passes (``check_deepspeed`` has refused the rest)."""
    accelerator.state.deepspeed_plugin.deepspeed_config.update({
        "gradient_accumulation_steps": 1, "gradient_clipping": trainer.max_grad_norm or 0.0,
        "train_micro_batch_size_per_gpu": trainer.batch_size,
        "train_batch_size": trainer.batch_size * accelerator.num_processes,
        # ZeRO only vouches for its own optimizers; soul's are plain torch.optim.Optimizers.
        "zero_allow_untested_optimizer": True})


def _truncate_log(log_path: Path, last_step: int) -> None:
    """Keep the step log up to the checkpoint's step (later lines are redone on resume)."""
    if not log_path.is_file():
        return
    lines = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    log_path.write_text("".join(line + "\n" for line in lines))


def one_shot_unlearn(model, make_batch: BatchMaker, objective: Objective, optimizer, cfg: DictConfig, accelerator,
                     seed: int, log_path: Path, on_step: Callable[[dict], None] | None = None) -> dict:
    """Influence unlearning: diagonal retain curvature, then one step on the whole forget gradient."""
    n_forget, n_retain = len(make_batch.encoded["forget"]), len(make_batch.encoded["retain"])
    # Prepared together: FSDP2 swaps the optimizer's parameters for the sharded ones. (The raw
    # optimizer is stepped: accelerate's wrapper adds nothing to one step.)
    model, _ = accelerator.prepare(model, optimizer)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(optimizer.retain_batches), desc="iu: retain curvature", disable=not accelerator.is_main_process):
        retain = make_batch([], [rng.randrange(n_retain) for _ in range(cfg.batch_size)])["retain"]
        optimizer.zero_grad(set_to_none=True)
        if optimizer.curvature_estimator == "gnb":
            sampled_label_backward(model, retain, generator)
        elif optimizer.curvature_estimator == "fisher":
            accelerator.backward(nll(model, retain))
        else:
            raise ValueError(f"optim=iu: estimator must be fisher or gnb, got {optimizer.curvature_estimator!r}")
        optimizer.update_hessian()
    optimizer.zero_grad(set_to_none=True)
    n_batches = math.ceil(n_forget / cfg.batch_size)
    totals: dict[str, float] = {"loss": 0.0}
    for b in range(n_batches):
        idx = list(range(b * cfg.batch_size, min(n_forget, (b + 1) * cfg.batch_size)))
        loss, terms = objective(model, make_batch(idx, [rng.randrange(n_retain) for _ in idx]))
        accelerator.backward(loss / n_batches)
        totals["loss"] += loss.item() / n_batches
        for key, value in terms.items():
            totals[key] = totals.get(key, 0.0) + value / n_batches
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    elapsed = time.perf_counter() - start
    if accelerator.is_main_process:
        record = {"step": 1, **totals, "curvature_batches": optimizer.retain_batches,
                  "elapsed_s": elapsed, **optimizer.diagnostics()}
        with open(log_path, "w") as f:
            f.write(json.dumps(record) + "\n")
        if on_step is not None:
            on_step(record)
    return {"steps": 1, "warmup_steps": 0, "train_seconds": elapsed, "steps_per_second": 1 / elapsed,
            "effective_batch": n_forget, "processes": accelerator.num_processes,
            "ranks": rank_records(accelerator, model, optimizer, 1, [list(range(n_forget))])}
