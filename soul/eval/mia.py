"""Membership inference and memorization on the forget set, against never-seen holdout items.

Per item, from the token log-probabilities of the answer given the question (teacher forced):

* ``loss``: mean token NLL;
* ``zlib``: mean NLL / zlib-compressed byte length of the answer text (Carlini et al. 2021);
* ``min_k`` (k = 0.4): -mean of the k-fraction lowest token log-probs (Shi et al. 2024);
* ``min_k_plus_plus`` (k = 0.4): the same over z_t = (log p(x_t) - mu_t) / sigma_t, with mu_t and
  sigma_t the mean and standard deviation of log p under the model's own distribution at t
  (Zhang et al. 2024);
* ``exact_memorization``: share of answer tokens that are the model's argmax (Tirumala et al. 2022);
* ``extraction_strength``: 1 - k*/n, k* the first position from which every remaining argmax
  prediction matches the answer (Carlini et al. 2021); 0 when even the last token misses
  (open-unlearning returns 1/n there).

Every score is oriented so that *higher means less member-like*; the AUC labels forget items 0
and holdout items 1, so AUC 1.0 means the forget set still looks far more "seen" than holdout,
0.5 means indistinguishable (open-unlearning's convention, so numbers compare).
privleak = 100 * ((1 - AUC) - (1 - AUC_retain)) / (1 - AUC_retain), with the retain model's AUC.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from soul.data.qa import IGNORE_INDEX, PromptTemplate, encode_qa_batch, pad_batch

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
MIN_K = 0.4


def _lowest_mean(values: torch.Tensor, k: float) -> float:
    n = max(1, int(k * values.numel()))
    return float(values.sort().values[:n].mean())


def item_scores(logp: torch.Tensor, z: torch.Tensor, correct: torch.Tensor, answer: str) -> dict[str, float]:
    """All per-item scores from one item's answer-token log-probs, z-scores and argmax hits."""
    n = logp.numel()
    loss = float(-logp.mean())
    hits = correct.tolist()
    k_star = n
    while k_star > 0 and hits[k_star - 1]:
        k_star -= 1  # the longest all-correct suffix starts at k_star
    return {
        "loss": loss,
        "zlib": loss / len(zlib.compress(answer.encode("utf-8"))),
        "min_k": -_lowest_mean(logp, MIN_K),
        "min_k_plus_plus": -_lowest_mean(z, MIN_K),
        "exact_memorization": float(np.mean(hits)),
        "extraction_strength": 1.0 - k_star / n,
    }


@torch.no_grad()
def score_items(model, tokenizer, template: PromptTemplate, rows: Sequence[dict], batch_size: int = 32
                ) -> dict[str, dict[str, float]]:
    """Per-item MIA and memorization scores, as ``{field: {index: value}}`` (TOFU's log layout)."""
    encoded = encode_qa_batch(tokenizer, template, [(r["question"], r["answer"]) for r in rows])
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    device = next(model.parameters()).device
    out: dict[str, dict[str, float]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        logp_all = F.log_softmax(logits, -1)
        probs = logp_all.exp()
        mu = (probs * logp_all).sum(-1)
        sigma = ((probs * logp_all.pow(2)).sum(-1) - mu.pow(2)).clamp_min(1e-6).sqrt()
        safe = labels.clamp_min(0)
        token_logp = logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        z = (token_logp - mu) / sigma
        correct = logits.argmax(-1) == safe
        for row, i in enumerate(idx):
            mask = labels[row] != IGNORE_INDEX
            scores = item_scores(token_logp[row][mask].cpu(), z[row][mask].cpu(), correct[row][mask].cpu(),
                                 rows[i]["answer"])
            for key, value in scores.items():
                out.setdefault(key, {})[str(i)] = value
    return {key: dict(sorted(values.items(), key=lambda kv: int(kv[0]))) for key, values in out.items()}


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Exact ROC-AUC, higher scores ranking label 1 first (Mann-Whitney U from ranks, ties count
    half; equals sklearn's ``roc_auc_score``); None when a class is empty."""
    y, s = np.asarray(labels, int), np.asarray(scores, float)
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC-AUC with forget labelled 0 and holdout 1."""
    if len(forget_scores) == 0 or len(holdout_scores) == 0:
        raise ValueError("MIA needs at least one forget and one holdout item")
    return roc_auc([0] * len(forget_scores) + [1] * len(holdout_scores), [*forget_scores, *holdout_scores])


def privleak(auc_model: float, auc_retain: float) -> float:
    """Relative privacy leakage against the retain model (MUSE's and open-unlearning's definition)."""
    return 100.0 * ((1 - auc_model) - (1 - auc_retain)) / ((1 - auc_retain) + 1e-10)


def summarize_mia(log: dict, reference: dict | None = None) -> dict[str, float | None]:
    """AUCs of each attack, privleak (min-k) and mean memorization from a log with MIA fields."""
    forget, holdout = log.get(FORGET_KEY), log.get(HOLDOUT_KEY)
    if not forget or not holdout:
        return {}
    out: dict[str, float | None] = {}
    for attack in ATTACKS:
        out[f"mia_{attack}_auc"] = auc(list(forget[attack].values()), list(holdout[attack].values()))
    ref_auc = None
    if reference and reference.get(FORGET_KEY) and reference.get(HOLDOUT_KEY):
        ref_auc = auc(list(reference[FORGET_KEY]["min_k"].values()), list(reference[HOLDOUT_KEY]["min_k"].values()))
    out["privleak"] = privleak(out["mia_min_k_auc"], ref_auc) if ref_auc is not None else None
    for key in ("exact_memorization", "extraction_strength"):
        values = list(forget[key].values())
        out[f"forget_{key}"] = float(np.mean(values)) if values else math.nan
    return out


FORGET_KEY = "mia_forget"
HOLDOUT_KEY = "mia_holdout"
