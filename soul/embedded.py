"""The embedded default: tofu-mini data, a locally trained tokenizer, and tiny base models.

Base models are made the way TOFU makes them: a **target** model fine-tuned on ``full``
and a **retain** (oracle) model fine-tuned on ``retainXX`` only. Both also learn the
general-knowledge sets (the stand-in for what a pretrained model already knows). Everything
is built on first use and cached under a key that hashes every input that determines it,
so a second run reuses it at once and a changed setting never reads a stale model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from soul.data import tofu_mini
from soul.data.qa import PromptTemplate, encode_qa_batch, pad_batch
from soul.models import build_tiny_llama
from soul.tokenizer import train_bpe_tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the way cached artefacts are built changes


def cache_key(*parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def mini_config(task_cfg: DictConfig) -> tofu_mini.TofuMiniConfig:
    return tofu_mini.TofuMiniConfig(**_plain(task_cfg.mini))


def ensure_tofu_mini(cache_dir: str | Path, config: tofu_mini.TofuMiniConfig, vocab_size: int) -> Path:
    """Generate tofu-mini and its tokenizer into the cache (once); return the directory."""
    root = Path(cache_dir) / "tofu_mini" / cache_key(asdict(config), vocab_size)
    with FileLock(str(root) + ".lock"):
        if (root / "tokenizer" / "tokenizer.json").is_file():
            return root
        tofu_mini.write(root, config)
        splits = tofu_mini.generate(config)
        texts = [text for rows in splits.values() for row in rows for key, value in row.items()
                 for text in (value if isinstance(value, list) else [value])]
        train_bpe_tokenizer(texts, vocab_size=vocab_size).save_pretrained(root / "tokenizer")
    return root


def _general_knowledge(data_dir: Path) -> list[dict]:
    rows = []
    for name in ("real_authors", "world_facts"):
        with (data_dir / f"{name}.json").open() as f:
            rows += [json.loads(line) for line in f]
    return rows


def _read_rows(data_dir: Path, name: str) -> list[dict]:
    with (data_dir / f"{name}.json").open() as f:
        return [json.loads(line) for line in f]


def finetune(model, tokenizer, template: PromptTemplate, rows: list[dict], train_cfg: DictConfig,
             desc: str) -> list[float]:
    """Plain supervised fine-tuning on QA rows (AdamW, warmup + linear decay, clipping)."""
    torch.manual_seed(train_cfg.seed)
    rng = random.Random(train_cfg.seed)
    examples = encode_qa_batch(tokenizer, template, [(r["question"], r["answer"]) for r in rows])
    bs = train_cfg.batch_size
    steps_per_epoch = (len(examples) + bs - 1) // bs
    total = train_cfg.epochs * steps_per_epoch
    warmup = max(1, int(train_cfg.warmup_ratio * total))
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    model.train()
    losses = []
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    for _ in range(train_cfg.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in range(0, len(order), bs):
            batch = pad_batch([examples[j] for j in order[i:i + bs]], tokenizer.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return losses


def ensure_tiny_tofu_models(cache_dir: str | Path, task_cfg: DictConfig, model_cfg: DictConfig,
                            template: PromptTemplate) -> dict[str, Path]:
    """Build (once) and return the directories of the tiny target and retain models, and the data.

    Returns ``{"data": ..., "target": ..., "retain": ...}``; the retain model is the one
    trained on ``task.retain_split``.
    """
    config = mini_config(task_cfg)
    arch, train_cfg = _plain(model_cfg.architecture), _plain(model_cfg.base_training)
    data_dir = ensure_tofu_mini(cache_dir, config, arch["vocab_size"])
    key = cache_key(data_dir.name, arch, train_cfg, asdict(template))
    root = Path(cache_dir) / "tiny_models" / key
    splits = {"target": "full", "retain": task_cfg.retain_split}
    paths = {"data": data_dir}
    general = _general_knowledge(data_dir)
    for role, split in splits.items():
        out = root / split
        paths[role] = out
        with FileLock(str(out) + ".lock"):
            if (out / "config.json").is_file():
                continue
            log.info("building the tiny %s model on tofu-mini %s (cached in %s)", role, split, out)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
            torch.manual_seed(train_cfg["seed"])
            model = build_tiny_llama(model_cfg.architecture, tokenizer)
            losses = finetune(model, tokenizer, template, _read_rows(data_dir, split) + general,
                              model_cfg.base_training, desc=f"base model ({split})")
            tmp = out.with_name(out.name + ".tmp")
            model.save_pretrained(tmp)  # safetensors
            tokenizer.save_pretrained(tmp)
            (tmp / "soul_build.json").write_text(json.dumps(
                {"split": split, "final_loss": losses[-1], "architecture": arch, "training": train_cfg,
                 "tofu_mini": asdict(config)}, indent=2))
            tmp.replace(out)
    return paths
