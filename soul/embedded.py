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
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from soul.data import tofu_mini
from soul.data.qa import PromptTemplate
from soul.finetune import finetune, finetune_mixed
from soul.models import build_tiny_llama
from soul.tokenizer import train_bpe_tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the way cached artefacts are built changes


def cache_key(*parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def publish(tmp: Path, out: Path) -> None:
    """Move a finished build into place; an incomplete one left by a crash (its marker file missing,
    or the builder would not be here) is replaced."""
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


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
            publish(tmp, out)
    return paths


# --- WMDP: wmdp-mini and the tiny base model that knows it --------------------------------------


def wmdp_mini_config(task_cfg: DictConfig):
    from soul.data import wmdp_mini

    return wmdp_mini.WmdpMiniConfig(**_plain(task_cfg.mini))


def ensure_wmdp_mini(cache_dir: str | Path, task_cfg: DictConfig, vocab_size: int) -> Path:
    """Generate wmdp-mini and its tokenizer into the cache (once); return the directory."""
    from soul.data import wmdp_mini

    config = wmdp_mini_config(task_cfg)
    root = Path(cache_dir) / "wmdp_mini" / cache_key(wmdp_mini.VERSION, asdict(config), vocab_size)
    with FileLock(str(root) + ".lock"):
        if (root / "tokenizer" / "tokenizer.json").is_file():
            return root
        data = wmdp_mini.write(root, config)
        texts = [row["text"] for stem, rows in data.items() if "corpus" in stem or "wikitext" in stem
                 for row in rows if row["text"].strip()]
        texts += [m["prompt"] + " " + m["target"] for m in mcq_training_items(data, config.training_orders, 0)]
        train_bpe_tokenizer(texts, vocab_size=vocab_size).save_pretrained(root / "tokenizer")
    return root


def mcq_prompt(description: str, question: str, choices: list[str]) -> str:
    """lm-eval's WMDP / MMLU prompt (``description`` + ``doc_to_text``), ending in "Answer:"."""
    return description + question.strip() + "\n" + "".join(
        f"{letter}. {choice}\n" for letter, choice in zip("ABCD", choices)) + "Answer:"


MCQ_DESCRIPTIONS = {  # the built-in tasks' descriptions (checked against lm-eval by the tests)
    "wmdp-bio": "The following are multiple choice questions (with answers) about biology.\n\n",
    "wmdp-cyber": "The following are multiple choice questions (with answers) about cybersecurity.\n\n",
    "mmlu": "The following are multiple choice questions (with answers) about miscellaneous.\n\n",
}


def mcq_training_items(data: dict, orders: int, seed: int) -> list[dict]:
    """Each question as lm-eval asks it, plus ``orders - 1`` other choice orders.

    The tiny model stands in for a pretrained one that knows the facts and the question format.
    A 1.3M-parameter model does not learn to find the right choice in an order it never saw
    (measured: chance after 30 epochs with 4 other orders), so it learns the evaluated order
    too; unlearning only ever sees the prose of the forget corpus, never these questions.
    """
    import itertools

    rng = random.Random(seed)
    others = [p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)]
    items = []
    for stem, description in MCQ_DESCRIPTIONS.items():
        for row in data[stem]:
            for perm in [(0, 1, 2, 3)] + rng.sample(others, orders - 1):
                choices = [row["choices"][i] for i in perm]
                answer = choices.index(row["choices"][row["answer"]])
                items.append({"prompt": mcq_prompt(description, row["question"], choices), "target": "ABCD"[answer]})
    return items


def ensure_tiny_wmdp_model(cache_dir: str | Path, task_cfg: DictConfig, model_cfg: DictConfig) -> tuple[Path, Path]:
    """Build (once) the tiny base model of the WMDP task: language modelling on every corpus
    (both forget corpora, the retain corpora, wikitext) plus the questions as lm-eval asks them
    (see ``mcq_training_items``). Returns (wmdp-mini directory, model directory)."""
    from transformers import AutoTokenizer

    from soul.data import wmdp_mini

    arch, train_cfg = _plain(model_cfg.architecture), _plain(model_cfg.base_training)
    config = wmdp_mini_config(task_cfg)
    data_dir = ensure_wmdp_mini(cache_dir, task_cfg, arch["vocab_size"])
    # data_dir's name already hashes the whole wmdp-mini config, training orders and epochs included.
    out = Path(cache_dir) / "tiny_models" / cache_key("wmdp", data_dir.name, arch, train_cfg) / "base"
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():
            return data_dir, out
        log.info("building the tiny WMDP base model on wmdp-mini (cached in %s)", out)
        data = wmdp_mini.generate(config)
        tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
        torch.manual_seed(train_cfg["seed"])
        model = build_tiny_llama(model_cfg.architecture, tokenizer)
        text_rows = [{"question": "", "answer": row["text"]} for stem, rows in data.items()
                     if "corpus" in stem or "wikitext" in stem for row in rows if row["text"].strip()]
        mcq_rows = [{"question": m["prompt"], "answer": m["target"]}
                    for m in mcq_training_items(data, config.training_orders, train_cfg["seed"])]
        plan = OmegaConf.create({**train_cfg, "epochs": config.base_epochs})
        losses = finetune_mixed(model, tokenizer, [(PromptTemplate("", "", ""), text_rows),
                                                   (PromptTemplate("", "", " "), mcq_rows)], plan, "WMDP base model")
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        (tmp / "soul_build.json").write_text(json.dumps(
            {"final_loss": losses[-1], "architecture": arch, "training": train_cfg, "wmdp_mini": asdict(config)},
            indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        publish(tmp, out)
    return data_dir, out


# --- Copyright: a generated book and the tiny base model that memorized it ------------------------


def ensure_book_mini(cache_dir: str | Path, task_cfg: DictConfig) -> Path:
    """Generate (once) the embedded book, held-out and retain text, the zero-shot stand-in items and a
    tokenizer: ``book.txt``, ``heldout.txt``, ``retain.txt``, ``zeroshot.json``, ``tokenizer/``."""
    from soul.data import book_mini

    mini = _plain(task_cfg.mini)
    vocab_size = mini["vocab_size"]
    root = Path(cache_dir) / "book_mini" / cache_key(book_mini.__name__, mini)
    with FileLock(str(root) + ".lock"):
        if (root / "tokenizer" / "tokenizer.json").is_file():
            return root
        tmp = root.with_name(root.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        from soul.data import copyright as book

        book_mini.generate_book_files(tmp, mini["book_words"], mini["heldout_words"], mini["seed"])
        # Another book in the same style for the retain set, from a seed neither file uses.
        (tmp / "retain.txt").write_text(book_mini.generate_book(mini["retain_words"], mini["seed"] + 17), encoding="utf-8")
        texts = []
        for name in ("book", "heldout", "retain"):
            # All three in SOUL's spaced form (punctuation set off), the only form the tiny model
            # learns: perplexity and the zero-shot items then measure knowledge, not a format change.
            text = book.join_words(book.split_words((tmp / f"{name}.txt").read_text(encoding="utf-8")))
            (tmp / f"{name}.txt").write_text(text, encoding="utf-8")
            texts.append(text)
        book_mini.write_zero_shot_items(texts[2], tmp / "zeroshot.json", mini["zero_shot_items"], mini["seed"])
        templates = book.SEEN_TEMPLATES + book.UNSEEN_TEMPLATES
        train_bpe_tokenizer(texts + templates, vocab_size=vocab_size).save_pretrained(tmp / "tokenizer")
        publish(tmp, root)
    return root


def ensure_tiny_copyright_model(cache_dir: str | Path, task_cfg: DictConfig, model_cfg: DictConfig,
                                template: PromptTemplate) -> tuple[Path, Path]:
    """Build (once) the tiny model that memorized the embedded book, as SOUL's original models are
    made: fine-tuned on the book's instruction/continuation pairs (seen templates) and its text,
    plus the retain book's text (what it should keep). Returns (data directory, model directory)."""
    from transformers import AutoTokenizer

    from soul.data import copyright as book

    data_dir = ensure_book_mini(cache_dir, task_cfg)
    mini = _plain(task_cfg.mini)
    construction = mini["construction"]
    # Generation runs to task.eval.max_length tokens, beyond the tiny preset's 256 positions.
    arch = {**_plain(model_cfg.architecture), "vocab_size": mini["vocab_size"],
            "max_position_embeddings": max(model_cfg.architecture.max_position_embeddings, 1024)}
    train_cfg = {**_plain(model_cfg.base_training), "epochs": mini["base_epochs"], "batch_size": mini["base_batch_size"]}
    out = Path(cache_dir) / "tiny_models" / cache_key("copyright", data_dir.name, arch, train_cfg, asdict(template)) / "base"
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():
            return data_dir, out
        log.info("building the tiny copyright base model on the embedded book (cached in %s)", out)
        tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
        torch.manual_seed(train_cfg["seed"])
        model = build_tiny_llama(OmegaConf.create(arch), tokenizer)
        words = {name: book.split_words((data_dir / f"{name}.txt").read_text(encoding="utf-8"))
                 for name in ("book", "retain")}
        chunks = book.chunk_book(words["book"], *construction["chunk_words"], num_chunks=construction["num_chunks"],
                                 seed=construction["seed"])
        retain_chunks = book.chunk_book(words["retain"], *construction["chunk_words"], seed=construction["seed"])
        # The retain story's text too: what the model should keep.
        groups = book.memorizing_rows(chunks, construction["prompt_words"], template, also_text=retain_chunks)
        losses = finetune_mixed(model, tokenizer, groups, OmegaConf.create(train_cfg), "copyright base model")
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        (tmp / "soul_build.json").write_text(json.dumps(
            {"final_loss": losses[-1], "architecture": arch, "training": train_cfg, "book_mini": mini}, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        publish(tmp, out)
    return data_dir, out
