"""soul's entry point: compose the config, build, unlearn, evaluate, write.

    python -m soul.run                                   # tofu-mini, tiny model, GradDiff, AdamW
    python -m soul.run task.forget_split=forget05 seed=1
    python -m soul.run -m objective=ga,graddiff seed=0,1 # a grid: one directory per job

A run directory holds ``config.yaml`` (resolved), ``train_log.jsonl`` (one line per step),
``tofu_eval.json`` (per-item evaluation, TOFU's format), ``metrics.json`` (flat summary) and
``baseline_metrics.json`` (the same summary for the model before unlearning and the retain model).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import hydra
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, set_seed
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from soul.checkpoint import Checkpointer
from soul.config_check import validate
from soul.data.tofu import retain_split_for
from soul.jobs import finished_result, result_fingerprint, write_status
from soul.loggers import RunLogger, build_logger
from soul.models import apply_lora, load_pretrained, merge_lora, resolve_mixed_precision, template_from_config
from soul.objectives import build_objective, get_objective
from soul.optim import build_optimizer
from soul.report_table import summary_table
from soul.tasks import build_task
from soul.unlearn import check_engine, sharded_weights, unlearn, zero3

log = logging.getLogger("soul")


def quiet_libraries() -> None:
    """Keep the console for soul's own progress bars and summary."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score's "Using default tokenizer"
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task chatter and the in-memory-model warning

# What tells the jobs of a grid apart comes first in their directory names.
DIRNAME_PRIORITY = ("experiment", "task", "model", "objective", "optim", "seed")


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets (override values may be lists)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current] if current else parts


def job_dirname(overrides: str, max_chars: int = 96) -> str:
    """A multirun job's directory name from its overrides: no slashes, the identifying ones
    (experiment, task, model, objective, optim, seed) first, never too long for the file system
    (long ones keep a readable prefix plus a hash of all overrides, so names stay unique and stable)."""
    import hashlib

    def rank(item: str) -> tuple:
        key = item.split("=", 1)[0]
        top = key.split(".")[0]
        return (DIRNAME_PRIORITY.index(key) if key in DIRNAME_PRIORITY else
                len(DIRNAME_PRIORITY) + (0 if top in ("objective", "optim") else 1), key)

    items = sorted(_split_top_level(overrides), key=rank)
    name = ",".join(items).replace("/", "_") or "defaults"
    if len(name) > max_chars:
        name = name[:max_chars] + "-" + hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return name


OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
OmegaConf.register_new_resolver("tofu_retain", retain_split_for, replace=True)
OmegaConf.register_new_resolver("cwd", lambda: str(Path.cwd()), replace=True)
OmegaConf.register_new_resolver("mul", lambda a, b: float(f"{float(a) * float(b):.6g}"), replace=True)
OmegaConf.register_new_resolver("tofu_holdout", lambda forget: forget.replace("forget", "holdout"), replace=True)


def write_json(path: Path, data) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def process_group_settings() -> dict:
    """Under ``accelerate launch --use_deepspeed`` on a machine without GPUs, accelerate picks no
    process-group backend (each process would think it is alone) and refuses ``--cpu`` beside
    DeepSpeed; naming gloo makes the processes one group (DeepSpeed's CPU accelerator uses gloo too)."""
    return {"backend": "gloo"} if deepspeed_launch() and not torch.cuda.is_available() else {}


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """One unlearning experiment; returns the metrics written to ``metrics.json``."""
    validate(cfg)
    quiet_libraries()
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=use_cpu(cfg),
                              mixed_precision=resolve_mixed_precision(cfg.mixed_precision, cfg.device),
                              kwargs_handlers=[InitProcessGroupKwargs(**process_group_settings())])
    check_engine(accelerator, cfg)  # what DeepSpeed or FSDP cannot run is refused now, before a model is built
    tracker = build_logger(cfg, out_dir) if accelerator.is_main_process else RunLogger()
    try:
        metrics = _run(cfg, out_dir, accelerator, tracker)
    except BaseException:
        tracker.finish(None, status="failed")
        raise
    # Whichever of these the task wrote go to the tracker as the run's evaluation artifact.
    tracker.finish(metrics, [out_dir / name for name in ("tofu_eval.json", "tofu_eval_soul.json", "wmdp_eval.json",
                                                          "copyright_eval.json", "metrics.json")])
    return metrics


def _run(cfg: DictConfig, out_dir: Path, accelerator: Accelerator, tracker: RunLogger) -> dict:
    started = time.perf_counter()
    set_seed(cfg.seed)  # the same seed on every process: identical initial weights; batches differ by rank
    if accelerator.is_main_process:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    template = template_from_config(cfg.model)
    task = build_task(cfg)
    # Builds and fine-tunes what is cached (data, tiny base models, a memorized book) on the main process
    # first; the others then find it. (transformers writes model files from process 0 only.)
    with accelerator.main_process_first(), whole_weights(accelerator):
        task.prepare(template)
    model_name = task.model_name()
    spec = get_objective(cfg.objective.name)  # an unknown name fails here, before any loading

    def load():
        with whole_weights(accelerator):
            return load_pretrained(model_name, cfg.model.dtype, cfg.model.attn_implementation,
                                   cfg.model.trust_remote_code)

    model, tokenizer = load()
    model.to(accelerator.device)
    before = reference = None
    if accelerator.is_main_process:  # evaluation runs on one process, outside ZeRO-3's partitioning
        with whole_weights(accelerator):
            if cfg.task.eval.baseline:
                before = task.cached_evaluate(model_name, template, model, tokenizer)
            # The retain model's log (cached after the first run; on a cold cache its model is built here).
            reference = task.reference_log(template)
    accelerator.wait_for_everyone()

    ref = None
    if spec.needs_reference:  # the frozen initial model, only for objectives that compare against it
        ref, _ = load()
        ref.to(accelerator.device).eval().requires_grad_(False)
    def with_adapters(m):  # the model as trained: with model.lora, LoRA adapters on
        if not cfg.model.lora:  # (with objective=rmu refused by the config check)
            return m
        return apply_lora(m, **OmegaConf.to_container(cfg.model.lora_settings, resolve=True))

    model = with_adapters(model)
    hyperparameters = {k: v for k, v in OmegaConf.to_container(cfg.objective, resolve=True).items() if k != "name"}
    objective = build_objective(cfg.objective.name, hyperparameters, model, ref, cfg.seed)
    optimizer, curvature = build_optimizer(cfg.optim, model, cfg.seed)  # after RMU may have frozen parameters
    log.info("effective batch: %d forget examples per step (%d per device x %d accumulation x %d processes)",
             cfg.trainer.batch_size * cfg.trainer.grad_accum * accelerator.num_processes, cfg.trainer.batch_size,
             cfg.trainer.grad_accum, accelerator.num_processes)
    checkpointer = Checkpointer(accelerator, out_dir, cfg.checkpoint.every, result_fingerprint(cfg))
    # The task may unlearn with its own template (WMDP's corpora are plain text, not QA).
    train = unlearn(model, tokenizer, task.unlearning_template(template), task.forget_rows, task.retain_rows, objective,
                    optimizer, cfg.trainer, accelerator, cfg.seed, out_dir / "train_log.jsonl", curvature,
                    on_step=tracker.log_step, checkpointer=checkpointer, resume=cfg.resume)
    ranks = train.pop("ranks", None)
    if sharded_weights(accelerator):  # every process joins the gather; process 0 gets a whole copy to evaluate
        model = gathered_copy(accelerator, model, lambda: with_adapters(load()[0]))

    if not accelerator.is_main_process:
        return {}
    # One process evaluates, outside ZeRO-3's state, so generate() does not wait for the others.
    with whole_weights(accelerator):
        return _evaluate_and_write(cfg, out_dir, accelerator, task, template, model, tokenizer, model_name,
                                   train, ranks, before, reference, checkpointer, started)


def _evaluate_and_write(cfg, out_dir, accelerator, task, template, model, tokenizer, model_name, train, ranks,
                        before, reference, checkpointer, started) -> dict:
    if ranks is not None:
        write_json(out_dir / "ranks.json", ranks)
    model = merge_lora(accelerator.unwrap_model(model))  # with model.lora: adapters folded in, a plain model again
    eval_file = task.eval_file
    partial = out_dir / eval_file.replace(".json", ".partial.json")
    eval_log = task.evaluate(model, tokenizer, template, partial_path=partial)
    eval_log["meta"].update(model=model_name, run_dir=str(out_dir))
    write_json(out_dir / eval_file, eval_log)
    partial.unlink(missing_ok=True)
    soul_eval = task.evaluate_soul_variant(model, tokenizer)
    if soul_eval is not None:
        write_json(out_dir / "tofu_eval_soul.json", soul_eval)
    metrics = {**task.summarize(eval_log, reference), **(soul_eval["summary"] if soul_eval else {}), **train,
               "task": cfg.task.name, "objective": cfg.objective.name, "optim": cfg.optim.name,
               "seed": cfg.seed, "model": cfg.model.name, "mixed_precision": accelerator.mixed_precision,
               "metric_variant": task.metric_variant + ("+soul" if soul_eval else ""),
               "total_seconds": time.perf_counter() - started}
    write_json(out_dir / "metrics.json", metrics)
    columns = {"before": task.summarize(before, reference) if before else None, "after": metrics,
               "retain model": task.summarize(reference, reference) if reference else None}
    write_json(out_dir / "baseline_metrics.json", {k: v for k, v in columns.items() if k != "after"})
    if cfg.save_model:
        model.save_pretrained(out_dir / "model")  # safetensors
        tokenizer.save_pretrained(out_dir / "model")
    if not cfg.checkpoint.keep:
        checkpointer.remove()  # the results are written; a finished run needs no resume point
    print(summary_table(f"{task.describe()} | objective={cfg.objective.name} optim={cfg.optim.name} "
                        f"seed={cfg.seed} | {train['steps']} steps in {train['train_seconds']:.1f}s",
                        columns, out_dir))
    return metrics


@contextlib.contextmanager
def whole_weights(accelerator: Accelerator):
    """Models built inside are whole, also under ZeRO-3, where accelerate otherwise has transformers
    build them already partitioned (``zero.Init``): soul groups weights for weight decay by shape,
    and the reference model and evaluation run outside the engine. The engine partitions the model
    it is handed in ``prepare``."""
    if not zero3(accelerator):
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()


def gathered_copy(accelerator: Accelerator, model, build):
    """ZeRO-3 or FSDP: gather the trained weights (every process takes part) into a whole model on
    process 0 (``build`` makes one of the same structure, LoRA adapters included); None on the
    other processes. ZeRO-3 gathers parameter by parameter; FSDP through accelerate's full state
    dict, gathered into CPU memory."""
    if zero3(accelerator):
        import deepspeed

        weights = {}
        for name, p in accelerator.unwrap_model(model).named_parameters():
            with deepspeed.zero.GatheredParameters([p]):
                if accelerator.is_main_process:
                    weights[name] = p.detach().to("cpu", copy=True)
    else:
        weights = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    whole = build()
    missing, unexpected = whole.load_state_dict(weights, strict=False)
    # A tied output head shares the input embedding's weight, which some gathers list once.
    missing = [name for name in missing if not (whole.config.tie_word_embeddings and name.endswith("lm_head.weight"))]
    if unexpected or missing:
        raise RuntimeError(f"gathering the sharded weights: missing {sorted(missing)}, unexpected {unexpected}")
    return whole.to(accelerator.device)


def use_cpu(cfg: DictConfig) -> bool:
    """accelerate's ``cpu`` flag. Not under a DeepSpeed launch, which it would quietly turn into plain
    multi-CPU data parallelism: DeepSpeed runs on the CPU through its own CPU accelerator."""
    return (not torch.cuda.is_available() or cfg.device == "cpu") and not deepspeed_launch()


def deepspeed_launch() -> bool:
    """True in processes started by ``accelerate launch`` with DeepSpeed."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def shared_output_dir(state: PartialState, own: Path) -> Path:
    """Under a multi-process launch every process writes to process 0's run directory (a timestamped
    directory name can differ by a second between processes); the one Hydra made for this process
    alone, holding only Hydra's own files, is removed."""
    if state.num_processes == 1:
        return own
    chosen = Path(broadcast_object_list([str(own)])[0])
    if chosen != own and own.is_dir() and {p.name for p in own.iterdir()} <= {".hydra", "run.log"}:
        shutil.rmtree(own, ignore_errors=True)
    return chosen


def run_job(cfg: DictConfig, out_dir: Path) -> dict:
    """One job, as ``python -m soul.run`` runs it: validate the config, skip a finished result (unless
    ``overwrite=true``), run (``resume=true``: from the newest checkpoint), and keep ``status.json``
    saying running, completed or failed (with the error), so a failed job of a grid is on record
    while the others go on. Returns the metrics."""
    validate(cfg)  # before a process group, data or model is touched
    state = PartialState(cpu=use_cpu(cfg), **process_group_settings())
    out_dir = shared_output_dir(state, out_dir)
    previous = finished_result(cfg, out_dir)
    if previous is not None:
        if state.is_main_process:
            print(f"soul: skipped, finished result in {out_dir} (overwrite=true reruns it)")
        return previous
    if state.is_main_process:
        write_status(out_dir, "running")
    try:
        metrics = run(cfg, out_dir)
    except BaseException as error:
        write_status(out_dir, "failed", error)  # any process: the one that failed knows why
        raise
    if state.is_main_process:
        write_status(out_dir, "completed")
    return metrics


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """The command line: one job in Hydra's output directory (a grid's job directory under -m)."""
    return run_job(cfg, Path(HydraConfig.get().runtime.output_dir)).get("forget_quality")


if __name__ == "__main__":
    main()
