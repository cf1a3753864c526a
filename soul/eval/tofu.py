"""TOFU evaluation of a live model, written in TOFU's official per-item log format.

For each of the four evaluation splits (forget, retain, real authors, world facts) and
each item (the first ``max_items`` rows, TOFU's ``ds_size``), this computes exactly the
quantities TOFU's ``evaluate_util.py`` logs: the summed and mean token NLL of the answer
given the question (EOS included), of the paraphrased answer (or, for real authors and
world facts, the answer itself) and of each perturbed answer, a greedy generation of total
length ``generation_max_length`` and its ROUGE-1/ROUGE-L recall (rouge-score, stemming).
The log is read back by ``soul.eval.tofu_stats``, which aggregates it the official way.

Scoring is batched across all answers of a split, sorted by length, so a forward pass
never pads much.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from soul.data.qa import IGNORE_INDEX, PromptTemplate, encode_qa_batch
from soul.eval import mia, tofu_stats

LOG_FORMAT = "tofu-per-item/1"
MAX_EXPONENT = 700.0  # exp(700) ~ 1e304, below float64's overflow
PARAPHRASE_KEY = {"forget": "paraphrased_answer", "retain": "paraphrased_answer",
                  "real_authors": "answer", "world_facts": "answer"}


@torch.no_grad()
def answer_nll(model, tokenizer, template: PromptTemplate, pairs: Sequence[tuple[str, str]],
               batch_size: int = 32) -> list[tuple[float, int]]:
    """Summed token NLL and token count of each answer given its question (TOFU's labels).

    Answers that share a question (the answer, its paraphrase and the perturbed answers of one
    TOFU item) share its prefix: the question is run once with a KV cache and all of its answers
    continue from it, so each question token is computed once instead of once per answer.
    """
    encoded = encode_qa_batch(tokenizer, template, pairs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(encoded):
        n_prompt = next((j for j, label in enumerate(e["labels"]) if label != IGNORE_INDEX), len(e["labels"]))
        groups.setdefault(tuple(e["input_ids"][:n_prompt]), []).append(i)
    # Sorted by the longest answer, so a chunk pads its (many, long) answers little; prompts are short.
    ordered = sorted(groups.items(),
                     key=lambda kv: (max(len(encoded[i]["input_ids"]) - len(kv[0]) for i in kv[1]), len(kv[0])))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    device = next(model.parameters()).device
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        prefixes = [list(prefix) for prefix, _ in chunk]
        rows = [(g, i) for g, (_, members) in enumerate(chunk) for i in members]
        suffixes = [encoded[i]["input_ids"][len(prefixes[g]):] for g, i in rows]
        _score_with_shared_prefix(model, tokenizer.pad_token_id, prefixes, rows, suffixes, device, results)
    return results


def _score_with_shared_prefix(model, pad_id: int, prefixes: list[list[int]], rows: list[tuple[int, int]],
                              suffixes: list[list[int]], device, results: list) -> None:
    """Run the left-padded prefixes once, then every suffix (right-padded) on a copy of its prefix's cache."""
    width_p = max(len(p) for p in prefixes)
    ids_p = torch.tensor([[pad_id] * (width_p - len(p)) + p for p in prefixes], device=device)
    mask_p = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prefixes], device=device)
    pos_p = (mask_p.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids_p, attention_mask=mask_p, position_ids=pos_p, use_cache=True, logits_to_keep=1)
    first_logits = out.logits[:, -1].float()  # predicts each suffix's first token
    group = torch.tensor([g for g, _ in rows], device=device)
    cache = out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5
    cache.batch_select_indices(group)
    width_s = max(len(s) for s in suffixes)
    ids_s = torch.tensor([s + [pad_id] * (width_s - len(s)) for s in suffixes], device=device)
    mask_s = torch.tensor([[1] * len(s) + [0] * (width_s - len(s)) for s in suffixes], device=device)
    pos_s = mask_p.sum(-1)[group].unsqueeze(-1) + torch.arange(width_s, device=device)
    mask_full = torch.cat([mask_p[group], mask_s], -1)
    decoder, head = _decoder_and_head(model)
    targets = ids_s[:, 1:]
    valid = mask_s[:, 1:].bool()  # positions whose next token is a real answer token
    if decoder is not None:
        # Project only the positions that predict an answer token: padding never meets the LM head.
        key = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        hidden = decoder(input_ids=ids_s, attention_mask=mask_full, position_ids=pos_s, **{key: cache}).last_hidden_state
        rest = F.cross_entropy(head(hidden[:, :-1][valid]).float(), targets[valid], reduction="none")
    else:
        key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        logits = model(input_ids=ids_s, attention_mask=mask_full, position_ids=pos_s, **{key: cache}).logits
        rest = F.cross_entropy(logits[:, :-1][valid].float(), targets[valid], reduction="none")
    first = F.cross_entropy(first_logits[group], ids_s[:, 0], reduction="none")
    nll = first + torch.zeros_like(first).index_add_(0, valid.nonzero()[:, 0], rest)
    counts = mask_s.sum(-1)
    for row, (_, i) in enumerate(rows):
        results[i] = (nll[row].item(), int(counts[row].item()))


def _decoder_and_head(model):
    """The decoder stack and LM head of a HF causal LM, or (None, None) when logits need more than
    ``head(hidden)`` (e.g. Gemma-2's logit soft-capping) and the full forward must be used."""
    if getattr(model.config, "final_logit_softcapping", None):
        return None, None
    get_decoder, head = getattr(model, "get_decoder", None), model.get_output_embeddings()
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or head is None or decoder is model:
        return None, None
    return decoder, head


@torch.no_grad()
def generate_answers(model, tokenizer, template: PromptTemplate, questions: Sequence[str],
                     batch_size: int = 32, max_length: int = 200) -> list[str]:
    """Greedy generations (left padding, total length ``max_length``), special tokens removed."""
    device = next(model.parameters()).device
    prompts = [template.generation_prompt(q) for q in questions]
    # Batches of similar prompt length pad little; results go back to the caller's order.
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    outputs: list[str] = [""] * len(prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=True).to(device)
            out = model.generate(**enc, max_length=max_length, do_sample=False, use_cache=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(idx, texts):
                outputs[i] = text.strip()
    finally:
        tokenizer.padding_side = old_side
    return outputs


def evaluate_split(model, tokenizer, template: PromptTemplate, rows: Sequence[dict], split: str,
                   batch_size: int = 32, generation_max_length: int = 200,
                   generation_batch_size: int | None = None) -> dict[str, dict[str, object]]:
    """Per-item TOFU log fields for one split (keys are item indices as strings).

    ``batch_size`` counts questions per scoring pass (each with all of its answers);
    ``generation_batch_size`` (default: ``batch_size``) counts prompts per generation batch.
    """
    para_key = PARAPHRASE_KEY[split]
    questions = [r["question"] for r in rows]
    n_pert = len(rows[0]["perturbed_answer"])
    pairs = [(r["question"], r["answer"]) for r in rows]
    pairs += [(r["question"], r[para_key]) for r in rows]
    pairs += [(r["question"], p) for r in rows for p in r["perturbed_answer"]]
    scores = answer_nll(model, tokenizer, template, pairs, batch_size)
    n = len(rows)
    gt, para, pert = scores[:n], scores[n:2 * n], scores[2 * n:]
    generations = generate_answers(model, tokenizer, template, questions, generation_batch_size or batch_size,
                                   generation_max_length)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)

    log: dict[str, dict[str, object]] = {k: {} for k in (
        "avg_gt_loss", "gt_loss", "num_token_gt", "generated_text", "rouge1_recall", "rougeL_recall",
        "average_perturb_loss", "avg_paraphrased_loss", "truth_ratio", "paraphrased_loss", "perturb_loss",
        "num_token_paraphrased", "num_token_perturb")}
    for i, row in enumerate(rows):
        k = str(i)
        item_pert = pert[i * n_pert:(i + 1) * n_pert]
        avg_pert = [s / max(c, 1) for s, c in item_pert]
        avg_para = para[i][0] / max(para[i][1], 1)
        rouge = scorer.score(row["answer"], generations[i])
        log["avg_gt_loss"][k] = gt[i][0] / max(gt[i][1], 1)
        log["gt_loss"][k] = gt[i][0]
        log["num_token_gt"][k] = gt[i][1]
        log["generated_text"][k] = [template.generation_prompt(row["question"]), generations[i], row["answer"]]
        log["rouge1_recall"][k] = rouge["rouge1"].recall
        log["rougeL_recall"][k] = rouge["rougeL"].recall
        log["average_perturb_loss"][k] = avg_pert
        log["avg_paraphrased_loss"][k] = avg_para
        # TOFU's per-item truth_ratio: geometric-mean perturbed probability over the paraphrased one.
        # The exponent is capped so a destroyed model's ratio stays a finite JSON number.
        log["truth_ratio"][k] = math.exp(max(min(avg_para - sum(avg_pert) / len(avg_pert), MAX_EXPONENT), -MAX_EXPONENT))
        log["paraphrased_loss"][k] = para[i][0]
        log["perturb_loss"][k] = [s for s, _ in item_pert]
        log["num_token_paraphrased"][k] = para[i][1]
        log["num_token_perturb"][k] = [c for _, c in item_pert]
    return log


def model_fingerprint(model) -> str:
    """A cheap identity of the weights (per-tensor sum and L1 norm, accumulated in fp32 without a
    widened copy of the weights), to tell whether a partial log is ours."""
    import hashlib

    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.named_parameters():
            total = p.sum(dtype=torch.float32).item()
            l1 = torch.linalg.vector_norm(p, 1, dtype=torch.float32).item()
            h.update(f"{name}{tuple(p.shape)}{total:.9e}{l1:.9e}".encode())
    return h.hexdigest()[:16]


def evaluate_tofu(model, tokenizer, template: PromptTemplate, eval_sets: dict, max_items: int | None = 300,
                  batch_size: int = 32, generation_max_length: int = 200, holdout=None,
                  partial_path: Path | None = None, generation_batch_size: int | None = None) -> dict:
    """The full per-item TOFU log of ``model`` (official variant), with a ``meta`` block.

    With ``holdout`` rows, membership-inference and memorization scores of the forget answers and
    of the holdout answers are added (``mia_forget``, ``mia_holdout``; see ``soul.eval.mia``).
    With ``partial_path``, each finished part is written there as it completes, and a rerun on
    the same weights and settings resumes from it instead of recomputing.
    """
    was_training = model.training
    model.eval()
    # The weights' fingerprint is only needed to match a partial log; it is a full read of the weights.
    settings = {"max_items": max_items, "generation_max_length": generation_max_length,
                "template": asdict(template),
                "fingerprint": model_fingerprint(model) if partial_path is not None else None}
    log: dict = {}
    if partial_path is not None and Path(partial_path).is_file():
        previous = json.loads(Path(partial_path).read_text())
        if previous.get("meta", {}).get("settings") == settings:
            log = previous
    log["meta"] = {"format": LOG_FORMAT, "variant": "official", "settings": settings}

    def first(ds) -> list[dict]:
        n = len(ds) if max_items is None else min(max_items, len(ds))
        return [ds[i] for i in range(n)]

    def save() -> None:
        if partial_path is not None:
            tmp = Path(partial_path).with_suffix(".tmp")
            tmp.write_text(json.dumps(log))
            tmp.replace(partial_path)

    parts = [(key, lambda split=split: evaluate_split(model, tokenizer, template, first(eval_sets[split]), split,
                                                      batch_size, generation_max_length, generation_batch_size))
             for split, key in tofu_stats.SPLIT_FILES.items()]
    if holdout is not None:
        parts.append((mia.FORGET_KEY, lambda: mia.score_items(model, tokenizer, template, first(eval_sets["forget"]),
                                                              batch_size)))
        parts.append((mia.HOLDOUT_KEY, lambda: mia.score_items(model, tokenizer, template, first(holdout), batch_size)))
    for key, compute in parts:
        if key not in log:
            log[key] = compute()
            save()
    log["meta"]["items"] = {split: len(next(iter(log[key].values()))) for split, key in tofu_stats.SPLIT_FILES.items()}
    if was_training:
        model.train()
    return log


def summarize(log: dict, reference: dict | None = None) -> dict:
    """TOFU's official summary, plus MIA and memorization when the log has them (soul's logs)."""
    return {**tofu_stats.summarize(log, reference), **mia.summarize_mia(log, reference)}


if __name__ == "__main__":
    raise SystemExit(tofu_stats.cli(summarize_fn=summarize))
