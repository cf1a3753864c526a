"""The copyright task: unlearn a memorized book, scored by how much of it the model still continues.

SOUL's construction (``soul.data.copyright``): the book is cut into chunks of a few hundred words;
a prompt is an instruction to continue ("seen" templates, also used while unlearning, or "unseen"
paraphrases) followed by a chunk's first K words, and the rest of the chunk is the reference.
Greedy continuations are scored by BLEU and ROUGE-L recall per K and per template set; lower is
more forgetting. Utility: perplexity on held-out text and zero-shot accuracy through
lm-evaluation-harness (SOUL's eight tasks on the hub path, a local stand-in offline).

Unlike SOUL's code, which decodes from one token past the prompt, the first generated token is
kept: it is part of the continuation and can be the book's next word.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from soul.data import copyright as book
from soul.data.qa import PromptTemplate
from soul.embedded import cache_key, ensure_book_mini, ensure_tiny_copyright_model
from soul.eval import harness
from soul.eval.tofu import generate_answers
from soul.memorize import ensure_memorized_model
from soul.models import resolve_mixed_precision
from soul.tasks.common import NoReferenceModel, cached_evaluation, model_to_load

EVAL_VERSION = 1
TEMPLATE_SETS = {"seen": book.SEEN_TEMPLATES, "unseen": book.UNSEEN_TEMPLATES}
SOURCES = ("embedded", "local", "hub")
ZERO_SHOT_STAND_IN = "zeroshot_mini"  # offline: ARC-style cloze questions on text the model knows


def load_dataset(*args, **kwargs):  # module level so that tests can record the call
    import datasets

    return datasets.load_dataset(*args, **kwargs)


class CopyrightTask(NoReferenceModel):
    """A book to forget (embedded, or ``task.book_path``), its continuation prompts and utility text."""

    name = "copyright"
    eval_file = "copyright_eval.json"
    metric_variant = "SOUL copyright (first token kept)"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.task_cfg = t = cfg.task
        self.cache_dir = Path(cfg.paths.cache_dir).expanduser()
        if t.source not in SOURCES:
            raise ValueError(f"task.source must be one of {', '.join(SOURCES)}, got {t.source!r}")
        unknown = [s for s in t.eval.template_sets if s not in TEMPLATE_SETS]
        if unknown or not t.eval.template_sets:
            raise ValueError(f"task.eval.template_sets: unknown {unknown}; choose from {sorted(TEMPLATE_SETS)}")
        c = self.construction
        low, high = c.chunk_words
        if not all(isinstance(k, int) and 0 < k < low for k in c.prompt_words) or not c.prompt_words:
            raise ValueError(f"task.construction.prompt_words={list(c.prompt_words)} must be positive word counts "
                             f"below the shortest chunk (task.construction.chunk_words[0]={low})")
        if t.source != "embedded" and not t.book_path:
            raise ValueError(f"task.book_path is required for task.source={t.source}: the plain-text book to "
                             "unlearn (soul ships no copyrighted text)")
        self.embedded_model: Path | None = None
        self.memorized_model: Path | None = None

    @property
    def construction(self) -> DictConfig:
        """Chunk and prompt sizes: SOUL's on a real book, smaller ones on the embedded book."""
        return self.task_cfg.mini.construction if self.task_cfg.source == "embedded" else self.task_cfg.construction

    def prepare(self, template: PromptTemplate) -> None:
        """Read (or generate) the book, held-out and retain text; build the prompts and the forget set."""
        t, m = self.task_cfg, self.cfg.model
        if m.source == "embedded":
            if t.source != "embedded":
                raise ValueError(f"model={m.name} memorizes the embedded book, so it needs task.source=embedded "
                                 f"(got task.source={t.source})")
            self.data_dir, self.embedded_model = ensure_tiny_copyright_model(self.cache_dir, t, m, template)
            texts = {name: book.load_book(self.data_dir / f"{name}.txt") for name in ("book", "heldout", "retain")}
        elif t.source == "embedded":
            self.data_dir = ensure_book_mini(self.cache_dir, t)
            texts = {name: book.load_book(self.data_dir / f"{name}.txt") for name in ("book", "heldout", "retain")}
        else:
            self.data_dir = None
            if t.source == "local" and not (t.heldout_path and t.retain_path):
                raise ValueError("task.source=local needs task.heldout_path (perplexity text) and task.retain_path "
                                 "(text to keep); task.source=hub takes both from wikitext-2-raw-v1")
            texts = {"book": book.load_book(t.book_path)}
            # Two different texts: retaining on the perplexity text would flatter the perplexity.
            texts["heldout"] = book.load_book(t.heldout_path) if t.heldout_path else self._hub_text(t.heldout_hub)
            texts["retain"] = book.load_book(t.retain_path) if t.retain_path else self._hub_text(t.retain_hub)
        c = self.construction
        self.chunks = book.chunk_book(book.split_words(texts["book"]), *c.chunk_words, num_chunks=c.num_chunks,
                                      seed=c.seed)
        retain_chunks = book.chunk_book(book.split_words(texts["retain"]), *c.chunk_words, seed=c.seed)
        if m.source != "embedded" and t.memorize.enabled:
            # SOUL's original models first memorize the book; a model that already has sets memorize.enabled=false.
            self.memorized_model = ensure_memorized_model(
                self.cache_dir, model_to_load(m, None), m, t.memorize, self.chunks, c.prompt_words, template,
                resolve_mixed_precision(self.cfg.mixed_precision, self.cfg.device), self.cfg.device)
        self._forget = book.instruction_pairs(self.chunks, c.prompt_words)
        self._retain = book.instruction_pairs(retain_chunks, c.prompt_words)
        self.heldout_text = texts["heldout"]

    @staticmethod
    def _hub_text(h: DictConfig) -> str:
        """A hub dataset's text column as one text (wikitext-2-raw-v1 by default: SOUL's PPL corpus)."""
        rows = load_dataset(h.path, h.name, split=h.split)
        return "\n".join(r[h.field] for r in rows if r[h.field].strip())

    def model_name(self) -> str:
        if self.memorized_model is not None:
            return str(self.memorized_model)
        return model_to_load(self.cfg.model, self.embedded_model)

    @staticmethod
    def unlearning_template(template: PromptTemplate) -> PromptTemplate:
        return template

    @property
    def forget_rows(self) -> list[dict]:
        return self._forget

    @property
    def retain_rows(self) -> list[dict]:
        return self._retain

    def prompts(self, k: int, template_set: str) -> list[dict]:
        """The eval rows for prompt length ``k`` and one template set (``task.eval.max_chunks`` first chunks)."""
        n = self.task_cfg.eval.max_chunks
        return book.build_eval_rows(self.chunks[:n] if n else self.chunks, k, TEMPLATE_SETS[template_set])

    def evaluate(self, model, tokenizer, template: PromptTemplate, partial_path: Path | None = None) -> dict:
        """Continuation BLEU / ROUGE-L per K and template set, perplexity, zero-shot accuracy."""
        e = self.task_cfg.eval
        log: dict = {"meta": {"format": "soul-copyright/1", "first_token_kept": True, "source": self.task_cfg.source,
                              "prompt_words": list(self.construction.prompt_words), "chunks": len(self.chunks)},
                     "continuation": {}, "items": {}}
        for template_set in e.template_sets:
            for k in self.construction.prompt_words:
                rows = self.prompts(k, template_set)
                generations = generate_answers(model, tokenizer, template, [r["prompt"] for r in rows],
                                               e.batch_size, e.max_length)
                scores = [book.score_continuation(g, r["response"]) for g, r in zip(generations, rows)]
                log["continuation"].setdefault(template_set, {})[str(k)] = {
                    "bleu": sum(s["bleu"] for s in scores) / len(scores),
                    "rougeL_recall": sum(s["rougeL_recall"] for s in scores) / len(scores)}
                log["items"].setdefault(template_set, {})[str(k)] = [
                    {"chunk": r["chunk"], "template": r["template"], "prompt": r["prompt"], "generation": g, **s}
                    for r, g, s in zip(rows, generations, scores)]
        log["perplexity"] = perplexity(model, tokenizer, self.heldout_text, e.perplexity_window)
        names, task_dir = self._zero_shot_tasks()
        accuracy = harness.evaluate_tasks(model, tokenizer, list(names.values()), include_path=task_dir,
                                          batch_size=e.zero_shot_batch_size, limit=e.zero_shot_limit) if names else {}
        log["zero_shot"] = {key: accuracy[name] for key, name in names.items()}
        log["meta"]["zero_shot_tasks"] = names
        return log

    def _zero_shot_tasks(self) -> tuple[dict[str, str], Path | None]:
        """{metric key: lm-eval task}: SOUL's built-ins online, the local stand-in on the embedded book."""
        tasks = list(self.task_cfg.eval.zero_shot)
        if self.task_cfg.source != "embedded" or not tasks:
            return {name: name for name in tasks}, None
        task_dir = Path(self.data_dir) / "lm_eval_tasks"
        harness.write_local_task(ZERO_SHOT_STAND_IN, like="arc_easy", data_file=Path(self.data_dir) / "zeroshot.json",
                                 out_dir=task_dir)
        return {"zeroshot_mini": ZERO_SHOT_STAND_IN}, task_dir

    def cached_evaluate(self, model_name: str, template: PromptTemplate, model=None, tokenizer=None) -> dict:
        t, m = self.task_cfg, self.cfg.model
        key = cache_key(EVAL_VERSION, model_name, m.dtype, OmegaConf.to_container(t, resolve=True))
        return cached_evaluation(self.cache_dir / "evals" / f"copyright-{key}.json", model_name, m,
                                 lambda mdl, tok: self.evaluate(mdl, tok, template), model, tokenizer)

    def summarize(self, log_: dict, reference: dict | None = None) -> dict:
        """``bleu_<set>_<K>``, ``rougeL_<set>_<K>``, their means ``bleu`` / ``rougeL_recall``,
        ``perplexity``, ``zero_shot_acc`` (the mean) and ``zs_<task>_acc``."""
        out: dict = {}
        for template_set, by_k in log_["continuation"].items():
            for k, s in by_k.items():
                out[f"bleu_{template_set}_{k}"] = s["bleu"]
                out[f"rougeL_{template_set}_{k}"] = s["rougeL_recall"]
        cells = [s for by_k in log_["continuation"].values() for s in by_k.values()]
        out["bleu"] = sum(s["bleu"] for s in cells) / len(cells)
        out["rougeL_recall"] = sum(s["rougeL_recall"] for s in cells) / len(cells)
        out["perplexity"] = log_["perplexity"]
        for key, acc in log_["zero_shot"].items():
            out[f"zs_{key}_acc"] = acc
        if log_["zero_shot"]:
            out["zero_shot_acc"] = sum(log_["zero_shot"].values()) / len(log_["zero_shot"])
        return out

    def describe(self) -> str:
        t = self.task_cfg
        return f"copyright[{t.source}] {len(self.chunks)} chunks, K={list(self.construction.prompt_words)}"


@torch.no_grad()
def perplexity(model, tokenizer, text: str, window: int = 512) -> float:
    """Token-level perplexity of ``text``: exp of the mean next-token loss over non-overlapping
    windows of ``window`` tokens (each window starts fresh, with BOS when the tokenizer adds one)."""
    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = window - len(bos)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for start in range(0, len(ids), body):
        piece = torch.tensor([bos + ids[start:start + body]], device=device)
        if piece.shape[1] < 2:
            continue
        logits = model(input_ids=piece).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], piece[0, 1:], reduction="sum")
        total += loss.item()
        count += piece.shape[1] - 1
    model.train(was_training)
    if count == 0:
        raise ValueError("perplexity: the held-out text has no tokens")
    return math.exp(total / count)

